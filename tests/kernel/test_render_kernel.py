"""What `pyipset compile` prints loads into a real kernel as it is."""

from __future__ import annotations

from pathlib import Path

from clusterspec import cluster, namespace, pod, policy
from pyipset.compile.compiler import compile_cluster
from pyipset.kernel.render import render_ipset, render_iptables
from pyipset.model import load

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "three-tier"


def every_feature():
    return cluster(
        namespace("a", team="x"), namespace("b", team="y"),
        pod("a/web", ["192.0.2.1", "2001:db8::1"], {"app": "web"}, [("http", 80, "TCP")]),
        pod("b/db", ["192.0.2.2", "2001:db8::2"], {"app": "db"}, [("sql", 5432, "TCP"), ("dns", 53, "UDP")]),
        policy("a/p", {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]},
                       "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}},
                                              "podSelector": {}}], "ports": [{"port": "http"}]},
                                   {"from": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["192.0.2.0/24"]}},
                                             {"ipBlock": {"cidr": "2001:db8::/32"}}],
                                    "ports": [{"protocol": "SCTP", "port": 9, "endPort": 19}, {"protocol": "UDP"}]}],
                       "egress": [{"to": [{"podSelector": {}}], "ports": [{"port": 53, "protocol": "UDP"}]}]}),
        policy("b/q", {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}],
                                                       "ports": [{"port": 5432}]}]}))


def load_into(netns, program):
    netns.run("ipset", "restore", input=render_ipset(program))
    tool = "iptables-restore" if program.family == "inet" else "ip6tables-restore"
    netns.run(tool, "--noflush", input=render_iptables(program))
    save = "iptables-save" if program.family == "inet" else "ip6tables-save"
    return netns.run(save, "-t", "filter").stdout


def test_compiled_programs_load_into_the_kernel(netns):
    for c in (load([str(EXAMPLE)]), every_feature()):
        for family in ("inet", "inet6"):
            program = compile_cluster(c, family)
            saved = load_into(netns, program)
            for chain, rules in program.chains.items():
                assert f":{chain} " in saved
                assert saved.count(f"-A {chain} ") == len(rules), chain
            # empty the namespace for the next program: rules first, then the sets they use
            tool = "iptables-restore" if family == "inet" else "ip6tables-restore"
            netns.run(tool, input="*filter\nCOMMIT\n")
            netns.run("ipset", "destroy")


def test_zero_prefix_is_split_for_the_kernel(netns):
    program = compile_cluster(every_feature(), "inet")
    text = render_ipset(program)
    assert "0.0.0.0/0" not in text and "0.0.0.0/1" in text and "128.0.0.0/1" in text
    netns.run("ipset", "restore", input=text)


def test_thousands_of_policy_groups_load_under_the_kernels_nesting_limit(netns):
    """4,100 policy groups per direction: a binary group tree would nest 17
    chains deep from the hook, and nf_tables refuses that (EMLINK, "Too many
    links"; measured by hand). The compiler widens the tree instead; the
    kernel takes the program with its hooks."""
    from test_compile import chain_nesting, groups_cluster
    from pyipset.kernel.render import render_hooks
    program = compile_cluster(groups_cluster(4100), "inet")
    assert chain_nesting(program) <= 13
    netns.run("ipset", "restore", input=render_ipset(program))
    hooks = [line.replace("-A ", "-I ", 1) for line in render_hooks(program)]
    netns.run("iptables-restore", "--noflush", input=render_iptables(program).replace("COMMIT\n", "\n".join(
        hooks) + "\nCOMMIT\n"))
    saved = netns.run("iptables-save", "-t", "filter").stdout
    assert saved.count("-j PYIPSET\n") == 2 and saved.count("\n-A ") >= program.rule_count()
