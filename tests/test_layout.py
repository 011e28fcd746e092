"""The package's shape: no import circles, settings in one place, a CLI that starts without torch."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Where each installed package lives in the source tree (pyproject.toml's package-dir).
PACKAGE_DIRS = {"sglang_domino": REPO / "sglang_domino", "sglang_domino.kernels": REPO / "kernels",
                "sglang_domino.server": REPO / "server"}


def _modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package, root in PACKAGE_DIRS.items():
        for path in root.rglob("*.py"):
            if "cpu_shim" in path.parts:  # a stand-in for another distribution's module (sgl_kernel)
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            modules.setdefault(name, path)
    return modules


def import_graph() -> dict[str, set[str]]:
    """module -> modules of ours it imports, at module level or inside functions (both can close a circle).

    ``from pkg import name`` counts as an import of ``pkg.name`` when that is a module, else of ``pkg``."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                # A submodule importing its own package's __init__ (or the package itself) is no edge that matters
                # unless __init__ imports back; it is kept: such a circle is reported like any other.
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles() -> None:
    graph = import_graph()
    assert len(graph) > 30  # the walk found the package
    assert "sglang_domino.settings" in graph["sglang_domino.plugin.worker"]  # edges are seen
    assert cycles(graph) == []


def test_cycle_finder_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_the_settings_module_reads_our_variables() -> None:
    """Every SGLANG_DOMINO_* variable named in the package is declared in settings.VARIABLES, and no other module
    reads the environment."""
    from sglang_domino.settings import VARIABLES

    declared = {v.name for v in VARIABLES}
    named: set[str] = set()
    readers = []
    for name, path in _modules().items():
        text = path.read_text()
        named |= set(re.findall(r"SGLANG_DOMINO_[A-Z0-9_]*[A-Z0-9]", text))
        if name != "sglang_domino.settings" and re.search(r"os\.environ\.get|os\.getenv|environ\[", text):
            readers.append(name)
    assert named <= declared, f"undeclared: {sorted(named - declared)}"
    # Only SGLang's own variables, read where SGLang reads them: SGLANG_USE_CPU_ENGINE (the CPU shim decides before
    # SGLang imports its kernels) and SGLANG_CPU_OMP_THREADS_BIND (the CPU tensor-parallel thread binding); and the
    # launcher, which builds the SGLang process's environment from its own.
    assert sorted(readers) == ["sglang_domino.plugin.cpu_sgl_kernel", "sglang_domino.plugin.cpu_tp",
                               "sglang_domino.server.launch"], readers


def test_help_does_not_import_torch() -> None:
    code = ("import sys\nfrom sglang_domino.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'sglang', 'transformers', 'numpy') if m in sys.modules)\n"
            "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "usage: sglang-domino" in out.stdout
    assert "HEAVY []" in out.stdout, out.stdout.splitlines()[-1]


@pytest.mark.parametrize("name", ["sglang_domino.settings", "sglang_domino.cli"])
def test_light_modules_import_without_torch(name: str) -> None:
    code = f"import sys, {name}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
