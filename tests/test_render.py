"""The renderer without a kernel: what it prints is one line per object, with
names the kernel accepts and free text quoted; programs it must not print are
refused."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings

from clusterspec import cluster, namespace, pod, policy
from strategies import cluster_objects
from pyipset.compile.compiler import compile_cluster, program_families
from pyipset.compile.naming import InvalidName
from pyipset.compile.program import Rule
from pyipset.kernel.render import kernel_members, render_ipset, render_iptables, render_rule
from pyipset.model import load_objects


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objs=cluster_objects())
def test_one_line_per_set_member_and_rule(objs):
    c = load_objects(objs)
    for family in program_families(c):
        program = compile_cluster(c, family)
        ipset_lines = render_ipset(program).splitlines()
        assert len(ipset_lines) == sum(1 + len(kernel_members(d)) for d in program.sets.values())
        assert all(line.isprintable() for line in ipset_lines)
        lines = render_iptables(program).splitlines()
        assert lines[0] == "*filter" and lines[-1] == "COMMIT"
        assert len(lines) == 2 + len(program.chains) + program.rule_count()
        assert all(line.isprintable() and line.count('"') % 2 == 0 for line in lines)


def test_a_slash_zero_becomes_two_halves():
    c = cluster(namespace("a"), pod("a/p", ["192.0.2.1", "2001:db8::1"]),
                policy("a/p", {"podSelector": {}, "policyTypes": ["Egress"],
                               "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["192.0.2.0/24"]}},
                                                  {"ipBlock": {"cidr": "::/0"}}]}]}))
    text = render_ipset(compile_cluster(c, "inet")) + render_ipset(compile_cluster(c, "inet6"))
    for half in ("0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1"):
        assert f" {half}\n" in text
    assert "/0" not in text and "192.0.2.0/24 nomatch" in text


@pytest.mark.parametrize("text", ["a\n-F INPUT", 'x" -j ACCEPT "', "a" * 300, "\x00\t\r"])
def test_free_text_is_quoted_into_one_line(text):
    rule = Rule((), "NFLOG", log_prefix=text, log_group=5, origin=text)
    line = render_rule("PYIPSET-DENY-INGRESS", rule)
    assert line.isprintable() and line.count('"') == 4 and "\n" not in line
    assert len(line) < 255 + 63 + 120  # the comment and prefix limits of xt_comment and NFLOG


def test_programs_with_names_the_kernel_would_refuse_are_not_printed():
    program = compile_cluster(cluster(namespace("a"), pod("a/p", "192.0.2.1"),
                                      policy("a/p", {"podSelector": {}})), "inet")
    bad_chain = dataclasses.replace(program, chains={**program.chains, "PYIPSET X\n-F INPUT": []})
    with pytest.raises(InvalidName):
        render_iptables(bad_chain)
    setdef = next(iter(program.sets.values()))
    bad_set = dataclasses.replace(program, sets={"x y": dataclasses.replace(setdef, name="x y")})
    with pytest.raises(InvalidName):
        render_ipset(bad_set)
    with pytest.raises(ValueError, match="NFLOG group"):
        render_rule("PYIPSET-DENY-EGRESS", Rule((), "NFLOG", log_group=70000))
    with pytest.raises(ValueError, match="target"):
        render_rule("PYIPSET", Rule((), "SNAT"))


def test_address_matches_render_as_iptables_save_prints_them():
    from pyipset.compile.program import Match
    rule = Rule((Match("addr", name="192.0.2.1/32", dims="src"), Match("addr", name="198.51.100.0/24", dims="dst",
                                                                      negate=True)), "ACCEPT")
    assert render_rule("C", rule) == "-A C -s 192.0.2.1/32 ! -d 198.51.100.0/24 -j ACCEPT"
    six = Rule((Match("addr", name="2001:db8::1/128", dims="dst"),), "DROP")
    assert render_rule("C", six) == "-A C -d 2001:db8::1/128 -j DROP"
    for bad in (Match("addr", name="192.0.2.1/24", dims="src"), Match("addr", name="192.0.2.1/32", dims="src,dst")):
        with pytest.raises(ValueError):
            render_rule("C", Rule((bad,), "ACCEPT"))
