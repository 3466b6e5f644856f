"""The pyipset command: contracts of matrix and explain, exit codes, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

EXAMPLE = str(Path(__file__).resolve().parent.parent / "examples" / "three-tier")


def run(*args):
    # From tests/, so that the installed package is run, not the source tree.
    return subprocess.run([sys.executable, "-m", "pyipset", *args], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent)


def tier_matrix(port: int) -> dict:
    r = run("matrix", "-f", EXAMPLE, "--port", str(port), "-o", "json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_three_tier_matrices():
    m = tier_matrix(80)
    assert m["protocol"] == "TCP" and m["port"] == 80
    pods = m["pods"]
    assert pods == sorted(pods) and len(pods) == 9
    tier = {p: p.split("/")[1].rsplit("-", 1)[0] for p in pods}
    for i, src in enumerate(pods):
        for j, dst in enumerate(pods):
            if src == dst:
                want = True
            elif tier[dst] == "presentation":
                want = True  # presentation-policy: anyone, TCP 80
            elif tier[dst] == "middle":
                want = tier[src] == "presentation"  # middle-tier-policy: from presentation, any port
            else:
                want = True  # the data tier has no policy
            assert m["allowed"][i][j] is want, (src, dst)
    m8080 = tier_matrix(8080)
    for i, src in enumerate(pods):
        for j, dst in enumerate(pods):
            if src != dst and tier[dst] == "presentation":
                assert m8080["allowed"][i][j] is False, (src, dst)


def test_explain_json_and_text():
    r = run("explain", "-f", EXAMPLE, "--from", "shop/data-0", "--to", "shop/middle-1", "--port", "8080", "-o", "json")
    assert r.returncode == 0
    v = json.loads(r.stdout)
    assert v["allowed"] is False
    assert v["ingress"]["isolating_policies"] == ["shop/middle-tier-policy"] and v["ingress"]["admitted_by"] is None
    assert v["egress"]["isolated"] is False
    assert v["program"]["allowed"] is False and v["program"]["deciding_rule"]["origin"] == "no ingress rule allows it (tcp)"
    r = run("explain", "-f", EXAMPLE, "--from", "shop/presentation-0", "--to", "shop/middle-1", "--port", "9",
            "-o", "json")
    v = json.loads(r.stdout)
    assert v["allowed"] is True and v["program"]["allowed"] is True
    assert v["program"]["admitting_rule"]["origin"] == "shop/middle-tier-policy ingress[0]"
    r = run("explain", "-f", EXAMPLE, "--from", "shop/presentation-2", "--to", "192.0.2.21", "--port", "5432")
    assert r.returncode == 0
    assert "ALLOWED" in r.stdout and "allowed by shop/middle-tier-policy ingress[0]" in r.stdout
    for backend in ("iptables", "nftables"):  # the tree or the verdict map: the same answer and rules
        r = run("explain", "-f", EXAMPLE, "--from", "shop/data-0", "--to", "shop/middle-1", "--port", "8080",
                "-o", "json", "--backend", backend)
        assert r.returncode == 0 and json.loads(r.stdout)["program"]["deciding_rule"]["origin"] == \
            "no ingress rule allows it (tcp)"


def test_exit_codes_and_errors(tmp_path):
    assert run("matrix", "-f", EXAMPLE).returncode == 2  # --port missing
    r = run("matrix", "-f", EXAMPLE, "--port", "99999")
    assert r.returncode == 2 and "invalid port '99999'" in r.stderr
    r = run("explain", "-f", EXAMPLE, "--from", "shop/nobody", "--to", "shop/data-0", "--port", "1")
    assert r.returncode == 2 and "no such pod" in r.stderr
    r = run("matrix", "-f", str(tmp_path / "missing"), "--port", "1")
    assert r.returncode == 1 and "no such file or directory" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x, namespace: shop}\n"
                   "spec: {podSelector: {}, ingress: [{ports: [{port: 0}]}]}\n")
    r = run("matrix", "-f", EXAMPLE, "-f", str(bad), "--port", "80", "-o", "json")
    assert r.returncode == 1
    assert "rejected: " in r.stderr and "NetworkPolicy shop/x: spec.ingress[0].ports[0].port" in r.stderr
    assert len(json.loads(r.stdout)["pods"]) == 9  # the rest still loaded and answered


def test_compile_prints_both_scripts():
    r = run("compile", "-f", EXAMPLE)
    assert r.returncode == 0, r.stderr
    assert "# ipset restore input (inet)" in r.stdout and "*filter" in r.stdout and "COMMIT" in r.stdout
    assert '--comment "shop/presentation-policy ingress[0]"' in r.stdout
    assert "--nflog-group 86" in r.stdout and "#   iptables -I FORWARD 1 -m set --match-set pyi-L-" in r.stdout
    assert "-I INPUT" not in r.stdout and " -o weave" not in r.stdout  # a node and its pods: always allowed
    r = run("compile", "-f", EXAMPLE, "--nflog-group", "5", "--bridge", "cni0")
    assert "--nflog-group 5" in r.stdout and "--nflog-group 86" not in r.stdout and "-I FORWARD 1 -o cni0" in r.stdout
    r = run("compile", "-f", EXAMPLE, "--attach", "bridge:br0")
    assert "#   iptables -I INPUT 1 -i br0 -j PYIPSET" in r.stdout and "pyi-L-" not in r.stdout
    r = run("compile", "-f", EXAMPLE, "--attach", "bridge:a b")
    assert r.returncode == 2 and "invalid bridge name" in r.stderr


# ---- hostile arguments and empty input ----

import pytest  # noqa: E402


@pytest.mark.parametrize("args,message", [
    (["matrix", "-f", EXAMPLE, "--port", "٨٠"], "invalid port"),
    (["matrix", "-f", EXAMPLE, "--port", "8_0"], "invalid port"),
    (["matrix", "-f", EXAMPLE, "--port", "+80"], "invalid port"),
    (["matrix", "-f", EXAMPLE, "--port", " 80"], "invalid port"),
    (["matrix", "-f", EXAMPLE, "--port", "0"], "invalid port"),
    (["matrix", "-f", "", "--port", "80"], "an empty path"),
    (["compile", "-f", EXAMPLE, "--nflog-group", "65536"], "invalid NFLOG group"),
    (["compile", "-f", EXAMPLE, "--nflog-group", "-1"], "invalid NFLOG group"),
    (["compile", "-f", EXAMPLE, "--bridge", "br0 -j PYIPSET\n-F INPUT"], "invalid bridge name"),
    (["compile", "-f", EXAMPLE, "--bridge", "a" * 16], "invalid bridge name"),
    (["compile", "-f", EXAMPLE, "--bridge", "br/0"], "invalid bridge name"),
    (["apply", "-f", EXAMPLE, "--bridge", 'br"0'], "invalid bridge name"),
    (["lab", "-f", EXAMPLE, "--port", "80", "--timeout", "nan"], "invalid duration"),
    (["lab", "-f", EXAMPLE, "--port", "80", "--timeout", "-1"], "invalid duration"),
    (["lab", "-f", EXAMPLE, "--port", "80", "--timeout", "inf"], "invalid duration"),
    (["demo", "--members", "1e3"], "invalid member count"),
])
def test_bad_arguments_are_usage_errors(args, message):
    r = run(*args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr) < 2000


def test_zero_pods(tmp_path):
    (tmp_path / "ns.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n")
    r = run("matrix", "-f", str(tmp_path), "--port", "80", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"protocol": "TCP", "port": 80, "pods": [], "allowed": []}
    r = run("matrix", "-f", str(tmp_path), "--port", "80")
    assert r.returncode == 0 and "(no pods)" in r.stdout
    r = run("explain", "-f", str(tmp_path), "--from", "192.0.2.1", "--to", "192.0.2.2", "--port", "80")
    assert r.returncode == 0 and "ALLOWED" in r.stdout, r.stderr
    r = run("compile", "-f", str(tmp_path))
    assert r.returncode == 0 and "*filter" in r.stdout


def test_streamed_matrix_equals_the_in_memory_one():
    from pyipset.model import load
    from pyipset.verify import native
    pods, allowed = native.matrix(load([EXAMPLE]), "TCP", 80)
    assert tier_matrix(80)["allowed"] == allowed
    ev = native.ClusterEvaluator(load([EXAMPLE]))
    blocks = [block.tolist() for _, block in ev.rows("TCP", 80, block_cells=20)]  # two rows a block
    assert len(blocks) == 5 and [row for b in blocks for row in b] == allowed


def test_a_bug_is_one_line_with_a_hint(monkeypatch, capsys):
    from pyipset import cli
    monkeypatch.setattr(cli.native, "ClusterEvaluator", lambda *a: (_ for _ in ()).throw(KeyError("boom")))
    assert cli.main(["matrix", "-f", EXAMPLE, "--port", "80"]) == 1
    err = capsys.readouterr().err
    assert "internal error: KeyError" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(KeyError):
        cli.main(["--debug", "matrix", "-f", EXAMPLE, "--port", "80"])




def test_manifests_from_stdin_and_from_a_pipe():
    """`-f -` reads standard input; `-f /dev/fd/N` (what `-f <(kubectl get ...)`
    passes) reads the pipe, as a regular file is read; both give the matrix a
    file gives."""
    text = "\n---\n".join(p.read_text() for p in sorted(Path(EXAMPLE).glob("*.yaml")))
    want = tier_matrix(80)
    r = subprocess.run([sys.executable, "-m", "pyipset", "matrix", "-f", "-", "--port", "80", "-o", "json"],
                       input=text, capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parent)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == want
    import os
    read, write = os.pipe()
    feeder = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=write, text=True)
    os.close(write)
    matrix = subprocess.Popen([sys.executable, "-m", "pyipset", "matrix", "-f", f"/dev/fd/{read}", "--port", "80",
                               "-o", "json"], pass_fds=(read,), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=Path(__file__).resolve().parent)
    os.close(read)
    feeder.communicate(text, timeout=60)
    out, err = matrix.communicate(timeout=120)
    assert matrix.returncode == 0, err
    assert json.loads(out) == want
    r = run("matrix", "-f", "/dev/null", "--port", "80")
    assert r.returncode == 0, r.stderr  # a character device: read, empty
