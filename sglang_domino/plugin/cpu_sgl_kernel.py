"""Pure-PyTorch stand-ins for the ``sgl_kernel`` CPU ops SGLang 0.5.23 imports at module load.

PyPI has no CPU build of ``sgl-kernel``. With ``SGLANG_USE_CPU_ENGINE=1`` SGLang imports, at module load
(``from sgl_kernel import ...`` under ``if _is_cpu:``), eight names, so without them not even plain serving starts:

* called by plain serving, implemented here: ``copy_all_layer_kv_cache_cpu`` (``kernels/ops/kvcache/cache_move.py``),
  ``assign_req_to_token_pool_cpu`` (``srt/mem_cache/allocation.py``) -- the two SGLang's CPU engine calls on every request;
* called by the DFlash/Domino worker (draft block KV slots), implemented here: ``assign_extend_cache_locs_cpu``
  (``kernels/ops/speculative/cache_locs.py``);
* imported but only *called* by EAGLE/NGRAM tree speculation: ``assign_draft_cache_locs_contiguous_cpu``,
  ``fill_bonus_tokens_cpu``, ``fill_accept_out_cache_loc_cpu``, ``build_tree_kernel_efficient_cpu``,
  ``verify_tree_greedy_cpu`` -- import-only placeholders that raise NotImplementedError naming themselves.

Each implementation is a transcription of the Triton kernel of the same name. Any other
``from sgl_kernel import X`` still fails with ImportError, exactly as without the shim, and
``torch.ops.sgl_kernel`` stays empty (so SGLang's AMX detection still says "absent").

:func:`install` registers the module as ``sys.modules["sgl_kernel"]`` only when the real package is absent and
SGLang's CPU engine is selected. It runs from the plugin entry point (``sglang_domino.plugin.register``), which
SGLang's ``load_plugins()`` calls in every process before the modules above are imported.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys

import torch

SHIM_MODULE_NAME = "sgl_kernel"
# Attribute set on the shim module so we (and tests) can tell it from a real sgl_kernel.
SHIM_MARKER = "__sglang_domino_cpu_shim__"

# Implemented in pure PyTorch: the ops the CPU engine and the Domino worker actually call.
PROVIDED = (
    "copy_all_layer_kv_cache_cpu",
    "assign_req_to_token_pool_cpu",
    "assign_extend_cache_locs_cpu",
)


def _rows(ptr: int, stride: int, num_rows: int) -> torch.Tensor:
    """A uint8 [num_rows, stride] view of raw memory at ``ptr`` (a KV buffer owned by a live tensor)."""
    buf = (ctypes.c_uint8 * (num_rows * stride)).from_address(ptr)
    return torch.frombuffer(buf, dtype=torch.uint8).view(num_rows, stride)


def copy_all_layer_kv_cache_cpu(data_ptrs: torch.Tensor, strides: torch.Tensor,
                                tgt_loc: torch.Tensor, src_loc: torch.Tensor) -> None:
    """For every buffer i (one per layer and K/V): rows ``tgt_loc`` := rows ``src_loc``.

    ``data_ptrs[i]`` is the buffer's base address, ``strides[i]`` its bytes per token (Triton
    ``copy_all_layer_kv_cache_tiled``). Sources are read before any write, so overlapping moves are safe.
    """
    if tgt_loc.numel() == 0:
        return
    tgt = tgt_loc.to(torch.int64).cpu()
    src = src_loc.to(torch.int64).cpu()
    num_rows = int(torch.maximum(tgt.max(), src.max()).item()) + 1
    for ptr, stride in zip(data_ptrs.tolist(), strides.tolist()):
        rows = _rows(int(ptr), int(stride), num_rows)
        rows[tgt] = rows[src].clone()


def _segment_offsets(start_offset: torch.Tensor, end_offset: torch.Tensor) -> list[int]:
    lengths = (end_offset.to(torch.int64) - start_offset.to(torch.int64)).tolist()
    offsets, total = [], 0
    for n in lengths:
        offsets.append(total)
        total += n
    return offsets


def assign_req_to_token_pool_cpu(req_pool_indices: torch.Tensor, req_to_token: torch.Tensor,
                                 start_offset: torch.Tensor, end_offset: torch.Tensor,
                                 out_cache_loc: torch.Tensor, pool_len: int) -> None:
    """``req_to_token[req_pool_indices[i], start[i]:end[i]] = out_cache_loc[packed segment i]``."""
    del pool_len
    starts, ends = start_offset.tolist(), end_offset.tolist()
    for i, (row, s, e, off) in enumerate(zip(req_pool_indices.tolist(), starts, ends,
                                              _segment_offsets(start_offset, end_offset))):
        if e > s:
            req_to_token[row, s:e] = out_cache_loc[off : off + (e - s)].to(req_to_token.dtype)


def assign_extend_cache_locs_cpu(req_pool_indices: torch.Tensor, req_to_token: torch.Tensor,
                                 start_offset: torch.Tensor, end_offset: torch.Tensor,
                                 out_cache_loc: torch.Tensor, pool_len: int) -> None:
    """The reverse gather: ``out_cache_loc[packed segment i] = req_to_token[req_pool_indices[i], start[i]:end[i]]``."""
    del pool_len
    starts, ends = start_offset.tolist(), end_offset.tolist()
    for row, s, e, off in zip(req_pool_indices.tolist(), starts, ends, _segment_offsets(start_offset, end_offset)):
        if e > s:
            out_cache_loc[off : off + (e - s)] = req_to_token[row, s:e].to(out_cache_loc.dtype)


def _placeholder(name: str, user: str):
    def op(*args, **kwargs):
        raise NotImplementedError(
            f"sgl_kernel.{name} is not provided by the sglang-domino CPU shim (no CPU sgl-kernel is installed); "
            f"it is imported by {user} but only the EAGLE/NGRAM speculative paths call it."
        )

    op.__name__ = name
    op.__qualname__ = name
    return op


# Imported at module load by SGLang on CPU, called only by EAGLE/NGRAM tree speculation: import-only placeholders.
PLACEHOLDERS = {
    "assign_draft_cache_locs_contiguous_cpu": "sglang/kernels/ops/speculative/cache_locs.py",
    "fill_bonus_tokens_cpu": "sglang/kernels/ops/speculative/eagle.py",
    "fill_accept_out_cache_loc_cpu": "sglang/kernels/ops/speculative/eagle.py",
    "build_tree_kernel_efficient_cpu": "sglang/kernels/ops/speculative/spec_tree.py",
    "verify_tree_greedy_cpu": "sglang/kernels/ops/speculative/spec_tree.py",
}


SHIM_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_shim")


def cpu_engine_selected() -> bool:
    return os.environ.get("SGLANG_USE_CPU_ENGINE", "0") == "1"


def _is_shim(module) -> bool:
    return bool(getattr(module, SHIM_MARKER, False))


def real_sgl_kernel_present() -> bool:
    """True when an ``sgl_kernel`` other than this shim is importable."""
    module = sys.modules.get(SHIM_MODULE_NAME)
    if module is not None:
        return not _is_shim(module)
    try:
        spec = importlib.util.find_spec(SHIM_MODULE_NAME)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    origin = os.path.abspath(spec.origin or "")
    return os.path.dirname(origin) != SHIM_DIR


def is_installed() -> bool:
    return _is_shim(sys.modules.get(SHIM_MODULE_NAME))


def populate_shim_module(namespace: dict) -> None:
    """Fill the namespace of ``cpu_shim/sgl_kernel.py``: the implemented ops and the named placeholders."""
    if not cpu_engine_selected():
        raise ImportError("the sglang-domino sgl_kernel shim only serves SGLANG_USE_CPU_ENGINE=1")
    namespace[SHIM_MARKER] = True
    for name in PROVIDED:
        namespace[name] = globals()[name]
    for name, user in PLACEHOLDERS.items():
        namespace[name] = _placeholder(name, user)
    namespace["__all__"] = [*PROVIDED, *PLACEHOLDERS]


def install() -> bool:
    """Make the shim this process's ``sgl_kernel`` (and its children's) when the real one is absent on CPU.

    Appends :data:`SHIM_DIR` to ``sys.path`` -- spawned SGLang subprocesses inherit the parent's ``sys.path``
    before they unpickle their entry function, i.e. before they import anything of SGLang -- and imports it.
    Returns True when the shim is (now) ``sgl_kernel``. Idempotent; a no-op off CPU or with a real sgl_kernel.
    """
    if is_installed():
        return True
    if not cpu_engine_selected() or real_sgl_kernel_present():
        return False
    if SHIM_DIR not in sys.path:
        sys.path.append(SHIM_DIR)
    importlib.import_module(SHIM_MODULE_NAME)
    return is_installed()


__all__ = ["PLACEHOLDERS", "PROVIDED", "SHIM_DIR", "install", "is_installed", *PROVIDED]
