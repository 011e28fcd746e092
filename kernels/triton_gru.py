"""Bias-free GRU cell as one Triton kernel (the Domino head's ``prefix_gru`` step).

    r  = sigmoid(x W_ir^T + h W_hr^T)
    zg = sigmoid(x W_iz^T + h W_hz^T)
    n  = tanh(x W_in^T + r * (h W_hn^T))
    h' = (1 - zg) * n + zg * h

PyTorch gate order (r, z, n) inside ``w_ih`` [3G, H] / ``w_hh`` [3G, G]; no biases (the Domino
checkpoints have none). Both mat-vecs, the gates and the blend run in one kernel with fp32
accumulation and fp32 gate math; only the result is rounded, to ``h``'s dtype. That is at least as
precise as ``aten::gru_cell`` in bf16, which rounds each intermediate to bf16.

A variant reads ``x`` straight from the target's embedding table by token id
(:func:`gru_cell_tokens`), which is what the correction loop feeds the GRU; it saves the [N, H]
gather round-trip and one launch per slot.

Runs on CUDA, or on CPU under the Triton interpreter (``TRITON_INTERPRET=1`` set before ``triton``
is first imported). It compiles for sm_90 (``tests/kernels/compile_sm90.py``) but has not run on a
GPU here (no GPU on the build machine): GPU results and speed are unverified; block sizes are
reasoned, not tuned.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

__all__ = ["gru_cell", "gru_cell_tokens", "interpreter_active", "check_launchable"]


def interpreter_active() -> bool:
    """True when Triton kernels in this process run under the CPU interpreter.

    Triton decides interpreter vs compiler when a function is decorated (its own standard library at
    ``import triton``), so the environment at launch time does not matter; the kernels themselves say.
    """
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_gru_cell_kernel, InterpretedFunction)


def check_launchable(*tensors: torch.Tensor) -> None:
    """Raise a clear error instead of Triton's driver error for CPU tensors without the interpreter."""
    if all(t.is_cuda for t in tensors):
        return
    if not interpreter_active():
        raise RuntimeError(
            "Triton kernels need CUDA tensors; for CPU tensors set TRITON_INTERPRET=1 before the first "
            "`import triton` in this process (the eager path in sglang_domino.kernels.reference runs anywhere)."
        )


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _block_n(n: int) -> int:
    """Rows per program. tl.dot needs >= 16. On GPU at most 32 (registers; N <= 32 then streams each
    weight once); the interpreter runs numpy on whole blocks, so fewer, larger blocks are faster."""
    return min(max(16, _next_pow2(n)), 256 if interpreter_active() else 32)


def _upcast(*tensors: torch.Tensor) -> bool:
    """Whether the kernel must widen operands to fp32 before ``tl.dot``.

    On GPU, same-dtype bf16/fp16 operands go to the tensor cores with fp32 accumulation: products of
    16-bit floats are exact in fp32, so this equals widening first. fp32 inputs use an IEEE fp32 dot
    (not TF32). The interpreter cannot do bf16 arithmetic correctly, so it always widens.
    """
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) != 1 or next(iter(dtypes)) not in (torch.bfloat16, torch.float16):
        return True
    return interpreter_active() or not tensors[0].is_cuda


@triton.jit
def _round_to(x, DST: tl.constexpr):
    """Cast ``x`` to ``DST`` rounding to nearest-even, identically on GPU and in the interpreter.

    The interpreter's fp32 -> bf16 cast truncates, so bf16 rounding is done on the bits: add half an
    ulp (plus the tie-to-even bit) and clear the low 16 bits; the bf16 cast is then exact.
    """
    if DST == tl.bfloat16:
        if x.dtype == tl.float32:
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            return bits.to(tl.float32, bitcast=True).to(tl.bfloat16)
        else:
            return x.to(tl.float32).to(tl.bfloat16)
    else:
        return x.to(DST)


@triton.jit
def _gru_cell_kernel(
    x_ptr,  # [N, H] rows of x, or the [V, H] embedding table when GATHER
    tok_ptr,  # [N] int64 token ids, any stride (GATHER only)
    h_ptr,  # [N, G]
    wih_ptr,  # [3G, H]
    whh_ptr,  # [3G, G]
    out_ptr,  # [N, G]
    N,
    H,
    G,
    stride_tok,
    stride_xn,
    stride_hn,
    stride_wih,
    stride_whh,
    stride_on,
    GATHER: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # One program owns BLOCK_N rows x BLOCK_G hidden units and all three gates of those units, so the
    # non-linear epilogue needs no cross-program reduction (hence no split-K).
    pid_n = tl.program_id(0)
    pid_g = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_g * BLOCK_G + tl.arange(0, BLOCK_G)
    rmask = rows < N
    cmask = cols < G
    if GATHER:
        # Upstream hands over column views (``block_ids[:, 0]``, stride = block size): read through the stride.
        src_rows = tl.load(tok_ptr + rows.to(tl.int64) * stride_tok, mask=rmask, other=0).to(tl.int64)
    else:
        src_rows = rows.to(tl.int64)
    h_ty = h_ptr.dtype.element_ty
    w_ty = wih_ptr.dtype.element_ty

    acc_ir = tl.zeros((BLOCK_N, BLOCK_G), dtype=tl.float32)
    acc_iz = tl.zeros((BLOCK_N, BLOCK_G), dtype=tl.float32)
    acc_in = tl.zeros((BLOCK_N, BLOCK_G), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < H
        x = tl.load(x_ptr + src_rows[:, None] * stride_xn + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        # The eager reference feeds the GRU ``embedding(tok).to(h.dtype)``: round x the same way.
        x = _round_to(x, h_ty)
        wmask = cmask[:, None] & kmask[None, :]
        w_r = tl.load(wih_ptr + cols[:, None] * stride_wih + ks[None, :], mask=wmask, other=0.0)
        w_z = tl.load(wih_ptr + (cols[:, None] + G) * stride_wih + ks[None, :], mask=wmask, other=0.0)
        w_n = tl.load(wih_ptr + (cols[:, None] + 2 * G) * stride_wih + ks[None, :], mask=wmask, other=0.0)
        if UPCAST:
            xf = x.to(tl.float32)
            acc_ir = tl.dot(xf, tl.trans(w_r.to(tl.float32)), acc_ir, input_precision="ieee")
            acc_iz = tl.dot(xf, tl.trans(w_z.to(tl.float32)), acc_iz, input_precision="ieee")
            acc_in = tl.dot(xf, tl.trans(w_n.to(tl.float32)), acc_in, input_precision="ieee")
        else:
            xw = x.to(w_ty)
            acc_ir = tl.dot(xw, tl.trans(w_r), acc_ir)
            acc_iz = tl.dot(xw, tl.trans(w_z), acc_iz)
            acc_in = tl.dot(xw, tl.trans(w_n), acc_in)

    acc_hr = tl.zeros((BLOCK_N, BLOCK_G), dtype=tl.float32)
    acc_hz = tl.zeros((BLOCK_N, BLOCK_G), dtype=tl.float32)
    acc_hn = tl.zeros((BLOCK_N, BLOCK_G), dtype=tl.float32)
    for k0 in range(0, G, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < G
        hk = tl.load(h_ptr + rows[:, None] * stride_hn + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        wmask = cmask[:, None] & kmask[None, :]
        w_r = tl.load(whh_ptr + cols[:, None] * stride_whh + ks[None, :], mask=wmask, other=0.0)
        w_z = tl.load(whh_ptr + (cols[:, None] + G) * stride_whh + ks[None, :], mask=wmask, other=0.0)
        w_n = tl.load(whh_ptr + (cols[:, None] + 2 * G) * stride_whh + ks[None, :], mask=wmask, other=0.0)
        if UPCAST:
            hf = hk.to(tl.float32)
            acc_hr = tl.dot(hf, tl.trans(w_r.to(tl.float32)), acc_hr, input_precision="ieee")
            acc_hz = tl.dot(hf, tl.trans(w_z.to(tl.float32)), acc_hz, input_precision="ieee")
            acc_hn = tl.dot(hf, tl.trans(w_n.to(tl.float32)), acc_hn, input_precision="ieee")
        else:
            hw = hk.to(w_ty)
            acc_hr = tl.dot(hw, tl.trans(w_r), acc_hr)
            acc_hz = tl.dot(hw, tl.trans(w_z), acc_hz)
            acc_hn = tl.dot(hw, tl.trans(w_n), acc_hn)

    # Gate math in fp32. sigmoid(a) = 1 / (1 + e^-a) saturates cleanly (e^-a = inf -> 0).
    r = 1.0 / (1.0 + tl.exp(-(acc_ir + acc_hr)))
    zg = 1.0 / (1.0 + tl.exp(-(acc_iz + acc_hz)))
    a = acc_in + r * acc_hn
    # tanh via e^{-2|a|}: no overflow, and keeps relative precision near 0 (unlike 2*sigmoid(2a) - 1).
    e = tl.exp(-2.0 * tl.abs(a))
    t = (1.0 - e) / (1.0 + e)
    n = tl.where(a >= 0, t, -t)
    omask = rmask[:, None] & cmask[None, :]
    h_prev = tl.load(h_ptr + rows[:, None] * stride_hn + cols[None, :], mask=omask, other=0.0).to(tl.float32)
    h_new = (1.0 - zg) * n + zg * h_prev
    tl.store(out_ptr + rows[:, None] * stride_on + cols[None, :], _round_to(h_new, out_ptr.dtype.element_ty), mask=omask)


def _block_sizes(n: int, h: int, g: int) -> tuple[int, int, int]:
    # tl.dot needs every block dim >= 16. Up to 32 rows share one program so the 3G x (H+G) weights
    # (~31 MB bf16 at Qwen3-8B dims) are streamed once per step; larger batches re-read them per
    # 32-row block. Under the interpreter bigger blocks mean fewer Python-level iterations.
    # (Row blocks: _block_n.)
    block_n = _block_n(n)
    if interpreter_active():
        return block_n, min(max(16, _next_pow2(g)), 64), min(max(16, _next_pow2(max(h, g))), 128)
    # GPU: narrow G blocks give 64 programs at G = 1024 so more SMs stream weights (untuned).
    return block_n, 16, 128


def _launch(
    x: torch.Tensor, tokens: Optional[torch.Tensor], h: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor,
    out: Optional[torch.Tensor],
) -> torch.Tensor:
    n, g = h.shape
    hdim = x.shape[1]
    if w_ih.shape != (3 * g, hdim) or w_hh.shape != (3 * g, g):
        raise ValueError(f"GRU weight shapes {tuple(w_ih.shape)}, {tuple(w_hh.shape)} do not fit H={hdim}, G={g}")
    if tokens is None and x.shape[0] != n:
        raise ValueError(f"x has {x.shape[0]} rows, h has {n}")
    check_launchable(x, h, w_ih, w_hh)
    # Any strides in: the kernel takes row strides (and the token stride) as arguments and assumes unit
    # stride along the last dim; a tensor without it is copied (and ``out`` written through a copy).
    x = x if x.stride(-1) == 1 else x.contiguous()
    h = h if h.stride(-1) == 1 else h.contiguous()
    w_ih = w_ih.contiguous()
    w_hh = w_hh.contiguous()
    if out is None:
        target = out = torch.empty_like(h, memory_format=torch.contiguous_format)
    else:
        if out.shape != (n, g) or out.device != h.device:
            raise ValueError(f"out must be [{n}, {g}] on {h.device}, got {tuple(out.shape)} on {out.device}")
        if _overlaps(out, h):
            raise ValueError("out must not alias h (other programs still read h while the kernel writes out)")
        target = out if out.stride(-1) == 1 or g <= 1 else torch.empty_like(out, memory_format=torch.contiguous_format)
    if n == 0:
        return out
    block_n, block_g, block_k = _block_sizes(n, hdim, g)
    grid = (triton.cdiv(n, block_n), triton.cdiv(g, block_g))
    _gru_cell_kernel[grid](
        x, tokens if tokens is not None else x, h, w_ih, w_hh, target,
        n, hdim, g,
        tokens.stride(0) if tokens is not None else 0,
        x.stride(0), h.stride(0), w_ih.stride(0), w_hh.stride(0), target.stride(0),
        GATHER=tokens is not None,
        UPCAST=_upcast(x, h, w_ih, w_hh),
        BLOCK_N=block_n, BLOCK_G=block_g, BLOCK_K=block_k,
    )
    if target is not out:
        out.copy_(target)
    return out


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors' memory spans intersect (host-side; conservative for interleaved views)."""
    if a.numel() == 0 or b.numel() == 0 or a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False

    def span(t: torch.Tensor) -> tuple[int, int]:
        start = t.data_ptr()
        extent = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
        return start, start + (extent + 1) * t.element_size()

    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


def gru_cell(
    x: torch.Tensor, h: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, out: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """One bias-free GRU step in one Triton kernel.

    Every tensor may be a strided view: rows are read through their strides (a tensor whose last
    dimension is not unit-stride is copied first, and such an ``out`` is written through a copy).

    Args:
        x: [N, H] input (any float dtype; rounded to ``h.dtype`` first, as the eager loop does).
        h: [N, G] previous hidden state.
        w_ih: [3G, H] ``weight_ih_l0`` (gates r, z, n).
        w_hh: [3G, G] ``weight_hh_l0``.
        out: optional [N, G] output buffer, any strides (must not overlap ``h``: other programs still
            read it; refused with ValueError).

    Returns:
        h_new [N, G] in ``h.dtype``; fp32 accumulation and gate math.
    """
    return _launch(x, None, h, w_ih, w_hh, out)


def gru_cell_tokens(
    tokens: torch.Tensor,
    embed_weight: torch.Tensor,
    h: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``gru_cell(embed_weight[tokens], h, w_ih, w_hh)`` with the embedding gather fused into the kernel.

    Args:
        tokens: [N] token ids (any integer dtype, any stride, e.g. the column view ``block_ids[:, 0]``;
            not bounds-checked, as in a CUDA embedding kernel).
        embed_weight: [V, H] the target's input embedding table.
        h, w_ih, w_hh, out: as in :func:`gru_cell`.
    """
    if tokens.ndim != 1 or tokens.shape[0] != h.shape[0]:
        raise ValueError(f"tokens must be [N={h.shape[0]}], got {tuple(tokens.shape)}")
    return _launch(embed_weight, tokens.to(torch.int64), h, w_ih, w_hh, out)
