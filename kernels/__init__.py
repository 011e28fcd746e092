"""Domino correction kernels behind one small interface (eager reference in ``reference.py``).

* :func:`correction_loop` - the per-block correction. CUDA + greedy + a Domino head: fused Triton
  kernels replayed from a CUDA graph per batch-size bucket (:mod:`.cuda_graph`; a server captures
  them at start: ``prepare_graph_runner`` on ``sglang_decode_batch_sizes(server_args)``); everything
  else (CPU, sampling selectors, no head): :func:`correction_loop_eager`. Same tokens either way (in fp32;
  with bf16 inputs the fused path is the fp32-accurate one, see :mod:`.triton_correction`).
* :func:`gru_cell` - one GRU step: the Triton kernel for CUDA tensors outside autograd, the eager
  reference otherwise.
* :mod:`.cpu_linear` - float32 products of a few rows on CPU (the target's linears through the plugin's
  hooks, and drafting's base logits): packed-weight oneDNN or ``(W @ xᵀ)ᵀ``, same results as ``F.linear``.
* Triton entry points (``triton_gru_cell``, ``gru_cell_tokens``, ``fused_correction_argmax``,
  ``fused_correction_sample_stats``, ``correction_loop_fused``, ...) are loaded lazily: importing this
  package never imports ``triton``, so a process can still choose the Triton interpreter
  (``TRITON_INTERPRET=1``) before its first ``import triton``.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Optional

import torch

from sglang_domino.kernels.reference import (
    DominoHeadWeights,
    SlotSelector,
    correction_logits,
    correction_loop_eager,
    greedy_select,
)
from sglang_domino.kernels.reference import gru_cell as gru_cell_eager

__all__ = [
    "DominoHeadWeights",
    "correction_logits",
    "correction_loop",
    "correction_loop_eager",
    "greedy_select",
    "gru_cell",
    "gru_cell_eager",
    # lazily imported (Triton)
    "triton_gru_cell",
    "gru_cell_tokens",
    "fused_correction_argmax",
    "fused_correction_sample_stats",
    "SampleStats",
    "w2_tile_row_norm_max",
    "correction_loop_fused",
    "CorrectionLoopGraphRunner",
    "graph_runner_for",
    "DEFAULT_BUCKETS",
    "CaptureReport",
    "CudaGraphBackend",
    "GraphBackend",
    "prepare_graph_runner",
    "sglang_decode_batch_sizes",
    "triton_available",
]

_LAZY = {
    "triton_gru_cell": ("triton_gru", "gru_cell"),
    "gru_cell_tokens": ("triton_gru", "gru_cell_tokens"),
    "fused_correction_argmax": ("triton_correction", "fused_correction_argmax"),
    "fused_correction_sample_stats": ("triton_correction", "fused_correction_sample_stats"),
    "SampleStats": ("triton_correction", "SampleStats"),
    "w2_tile_row_norm_max": ("triton_correction", "w2_tile_row_norm_max"),
    "correction_loop_fused": ("cuda_graph", "correction_loop_fused"),
    "CorrectionLoopGraphRunner": ("cuda_graph", "CorrectionLoopGraphRunner"),
    "graph_runner_for": ("cuda_graph", "graph_runner_for"),
    "DEFAULT_BUCKETS": ("cuda_graph", "DEFAULT_BUCKETS"),
    "CaptureReport": ("cuda_graph", "CaptureReport"),
    "CudaGraphBackend": ("cuda_graph", "CudaGraphBackend"),
    "GraphBackend": ("cuda_graph", "GraphBackend"),
    "prepare_graph_runner": ("cuda_graph", "prepare_graph_runner"),
    "sglang_decode_batch_sizes": ("cuda_graph", "sglang_decode_batch_sizes"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_TRITON_OK: Optional[bool] = None


def triton_available() -> bool:
    """Whether the Triton kernels import (checked once; imports ``triton``)."""
    global _TRITON_OK
    if _TRITON_OK is None:
        try:
            importlib.import_module(f"{__name__}.cuda_graph")
            _TRITON_OK = True
        except Exception:  # noqa: BLE001 - no/broken triton: everything stays on the eager path
            _TRITON_OK = False
    return _TRITON_OK


def _use_cuda_kernels(*tensors: torch.Tensor) -> bool:
    if not all(t.is_cuda for t in tensors) or not triton_available():
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False  # the kernels have no backward
    from sglang_domino.kernels.triton_gru import interpreter_active

    return not interpreter_active()  # the interpreter on CUDA tensors works but is far slower than eager


def gru_cell(x: torch.Tensor, h: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor) -> torch.Tensor:
    """One bias-free GRU step. x [N, H], h [N, G] -> h_new [N, G] (``nn.GRUCell(bias=False)`` math).

    CUDA tensors outside autograd: one Triton kernel (fp32 accumulation, output in ``h.dtype``);
    otherwise ``aten::gru_cell``.
    """
    if _use_cuda_kernels(x, h, w_ih, w_hh):
        from sglang_domino.kernels.triton_gru import gru_cell as _triton

        return _triton(x, h, w_ih, w_hh)
    return gru_cell_eager(x, h, w_ih, w_hh)


def correction_loop(
    base_logits: torch.Tensor,
    z: torch.Tensor,
    bonus_tokens: torch.Tensor,
    embed_weight: torch.Tensor,
    head: Optional[DominoHeadWeights],
    pure_draft_prefix_len: int,
    select: SlotSelector = greedy_select,
    embed: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The per-block correction; arguments and result exactly as :func:`correction_loop_eager`.

    Greedy selection with a Domino head on CUDA takes the fused Triton kernels, replayed from a CUDA
    graph per batch-size bucket (larger batches run the same kernels uncaptured). Anything else runs
    the eager reference, vocabulary-parallel drafting (``embed`` given) included: the fused kernels take the argmax
    over a whole vocabulary on one device.

    Returns:
        tokens [N, P] int64, and draft probabilities [N, P, V] when ``select`` produces them (eager only).
    """
    if (
        select is greedy_select
        and embed is None
        and head is not None
        and _use_cuda_kernels(base_logits, z, embed_weight, head.w_ih, head.w_hh, head.w1, head.w2)
    ):
        from sglang_domino.kernels.cuda_graph import graph_runner_for

        runner = graph_runner_for(head, embed_weight, pure_draft_prefix_len, base_logits, z)
        return runner.run(base_logits, z, bonus_tokens), None
    return correction_loop_eager(base_logits, z, bonus_tokens, embed_weight, head, pure_draft_prefix_len, select,
                                 embed)
