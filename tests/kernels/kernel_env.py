"""Kernel tests: Triton kernels on CUDA when present, else on CPU through the Triton interpreter.

Imported first by every kernel test module (``from kernel_env import triton_ready``). Not a
``conftest.py``: pytest imports every conftest under the module name ``conftest``, and the suite's
other tests do ``from conftest import ...`` expecting ``tests/conftest.py``.

Triton picks interpreter or compiler when a function is decorated - its own standard library at
``import triton`` - so ``TRITON_INTERPRET=1`` must be set before the first ``import triton`` of the
test process. This module does that on CPU-only machines (and imports the kernels then), then puts
the variable back so subprocesses started by other tests (servers) do not inherit it; the
``triton_ready`` fixture sets it again around each kernel test (launches consult it too).

If something imported triton in compiler mode before this module was imported, the interpreter cannot be
switched on any more: the tests that launch kernels are skipped with that reason (run
``pytest tests/kernels`` alone, or set TRITON_INTERPRET=1 in the environment).
"""

from __future__ import annotations

import os
import sys
from typing import Iterator, Optional

import pytest
import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

_SKIP_REASON: Optional[str] = None


def _prepare_interpreter() -> Optional[str]:
    if DEVICE.type == "cuda":
        return None
    already = "triton" in sys.modules
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton  # noqa: F401
        import triton.language as tl
        from triton.runtime.interpreter import InterpretedFunction

        # Imported now, in interpreter mode: gluon asserts on import that the standard library it
        # re-exports matches the current mode, which would fail if it were first imported later.
        import triton.experimental.gluon  # noqa: F401

        if not isinstance(tl.standard.argmax, InterpretedFunction):
            return ("triton was imported in compiler mode before tests/kernels/kernel_env.py"
                    f"{' (already imported)' if already else ''}; kernels cannot launch on CPU")
        import sglang_domino.kernels.cuda_graph  # noqa: F401  (decorates our kernels in interpreter mode)
    except ImportError as exc:
        return f"triton unavailable: {exc!r}"
    finally:
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous
    return None


_SKIP_REASON = _prepare_interpreter()


@pytest.fixture
def triton_ready(monkeypatch: pytest.MonkeyPatch) -> Iterator[torch.device]:
    """The device to run kernels on; on CPU, TRITON_INTERPRET=1 for the test's duration."""
    if _SKIP_REASON is not None:
        pytest.skip(_SKIP_REASON)
    if DEVICE.type == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield DEVICE
