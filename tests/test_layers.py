"""The package's layers, read from its imports (the installed copy's source):
model -> compile -> verify | kernel -> lab | observe -> agent -> cli. Each
package imports only from the layers below it (and the foundation:
errors, sets, protocols, collector, the package root with its native core), and no
module imports itself back through others (no cycles, local imports
included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pyipset

FOUNDATION = {"errors", "sets", "protocols", "collector", "_core", ""}
# package -> the packages it may import (besides the foundation)
MAY_IMPORT = {
    "model": set(),
    "compile": {"model"},
    "verify": {"model", "compile"},
    "kernel": {"compile"},  # the kernel renders RulePrograms; it knows no Kubernetes object
    "lab": {"model", "compile", "verify", "kernel"},
    "observe": {"compile", "verify", "kernel"},  # NFLOG and conntrack sockets in a namespace (kernel.netns)
    "agent": {"model", "compile", "verify", "kernel", "observe"},
    "cli": {"model", "compile", "verify", "kernel", "lab", "observe", "agent", "demo"},
    "__main__": {"cli"},
    "demo": set(),
}
for name in FOUNDATION:
    MAY_IMPORT[name] = set()  # the foundation imports only itself


def _modules() -> dict:
    """module name -> its source file, for every module of the installed package."""
    root = Path(pyipset.__file__).parent
    out = {}
    for f in root.rglob("*.py"):
        parts = ("pyipset",) + f.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def imports() -> dict:
    """module -> the pyipset modules it imports (at any depth of its code)."""
    modules = _modules()
    out = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in modules else target)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        out[name] = {m for m in found if m in modules and m != name}
    return out


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def violations(graph: dict) -> list:
    """Imports against the layers: 'a imports b'."""
    return sorted(f"{m} imports {t}" for m, targets in graph.items() for t in targets
                  if layer(t) != layer(m) and layer(t) not in FOUNDATION and layer(t) not in MAY_IMPORT[layer(m)])


def cycles(graph: dict) -> list:
    """Import cycles between modules (a package importing its own modules is not one)."""
    found, state = [], {}

    def visit(m, path):
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if t.startswith(m + ".") or m.startswith(t + "."):
                continue
            if state.get(t) == 1:
                found.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return found


def test_no_import_runs_against_the_layers():
    assert not violations(imports())


def test_no_import_cycles():
    assert not cycles(imports())


def test_the_checks_catch_what_they_are_for():
    """What was found in review: settings importing the cli, the kernel the
    model, and four agent files in a circle."""
    graph = {"pyipset.agent.settings": {"pyipset.cli"}, "pyipset.kernel.render": {"pyipset.model.objects"},
             "pyipset.cli": {"pyipset.agent.main"}, "pyipset.agent.main": {"pyipset.agent.loop"},
             "pyipset.agent.loop": {"pyipset.agent.main", "pyipset.errors"}, "pyipset.model.objects": set()}
    assert violations(graph) == ["pyipset.agent.settings imports pyipset.cli",
                                 "pyipset.kernel.render imports pyipset.model.objects"]
    assert cycles(graph) == [["pyipset.agent.loop", "pyipset.agent.main", "pyipset.agent.loop"]]
