"""Import the package from a bare copy of the repository: no pip install, no SGLang (``scripts/gpu_check.py``).

The device machines get the working tree as files, with torch, triton, transformers, safetensors, numpy and pytest,
but not this package installed and not SGLang. :func:`install` makes the layout that ``pyproject.toml``'s
``package-dir`` declares importable from the tree itself:

    sglang_domino             -> sglang_domino/
    sglang_domino.kernels     -> kernels/
    sglang_domino.server      -> server/
    sglang_domino.benchmarks  -> benchmarks/

and makes ``import sglang`` fail (even where SGLang is installed, so a CPU run proves the same thing a device run
needs). Importing this module installs both; that is how pytest loads it as a plugin
(``python -m pytest -p gpu_check_imports`` with ``scripts/`` on ``PYTHONPATH``), before any conftest runs.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
# pyproject.toml [tool.setuptools] package-dir
PACKAGE_DIRS = {
    "sglang_domino.kernels": REPO / "kernels",
    "sglang_domino.server": REPO / "server",
    "sglang_domino.benchmarks": REPO / "benchmarks",
    "sglang_domino": REPO / "sglang_domino",
}
BLOCKED = "sglang"
BLOCKED_MESSAGE = "SGLang is not available to scripts/gpu_check.py"


class _RepoPackages(importlib.abc.MetaPathFinder):
    """Finds the mapped packages in the tree (their submodules then resolve through the package's ``__path__``),
    and refuses ``sglang``."""

    def find_spec(self, fullname: str, path=None, target=None) -> Optional[importlib.machinery.ModuleSpec]:  # noqa: ANN001
        if fullname == BLOCKED or fullname.startswith(BLOCKED + "."):
            raise ImportError(f"{fullname}: {BLOCKED_MESSAGE} (blocked on purpose)")
        folder = PACKAGE_DIRS.get(fullname)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once) and the repository on ``sys.path``."""
    if not any(isinstance(f, _RepoPackages) for f in sys.meta_path):
        sys.meta_path.insert(0, _RepoPackages())
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    for name in list(sys.modules):
        if name == BLOCKED or name.startswith(BLOCKED + "."):
            raise RuntimeError(f"{name} was imported before scripts/gpu_check_imports.py could block it")


def check_layout() -> dict[str, str]:
    """Where each mapped package was imported from; raises if any came from outside the tree."""
    where = {}
    for name, folder in PACKAGE_DIRS.items():
        module = importlib.import_module(name)
        origin = Path(module.__file__).resolve()
        if origin.parent != folder.resolve():
            raise RuntimeError(f"{name} imported from {origin}, expected {folder}")
        where[name] = str(origin.relative_to(REPO))
    return where


install()
