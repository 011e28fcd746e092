"""The training package's modules import each other without a circle (module-level and function-level imports)."""

from __future__ import annotations

import ast
from pathlib import Path

import sglang_domino.training as package

ROOT = Path(package.__file__).parent
PACKAGE = package.__name__


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The sibling modules ``path`` imports anywhere in its body (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if not node.level:
                base = node.module
            elif node.level == 1:  # from .x import y, from . import x
                base = f"{PACKAGE}.{node.module}" if node.module else PACKAGE
            else:  # above the package: not a sibling
                base = None
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in filter(None, names):
            if name.startswith(PACKAGE + "."):
                stem = name[len(PACKAGE) + 1 :].split(".")[0]
                if stem in modules and stem != path.stem:
                    found.add(stem)
    return found


def test_no_import_cycles():
    modules = {p.stem for p in ROOT.glob("*.py")}
    graph = {m: _imports(ROOT / f"{m}.py", modules) for m in modules}
    cycles, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        stack.append(m)
        for dep in sorted(graph[m]):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)
