"""Fused Domino correction: selection over the full vocabulary without an [N, V] correction tensor.

For one slot the corrected logits are ``l = base + W2 · SiLU(W1 · [z | h])``. Eager PyTorch writes
the [N, V] correction, reads it back for the add, writes the sum, reads it again for the argmax.
Here:

1. ``u = SiLU(W1 · [z | h])`` once, into a tiny [N, r] fp32 buffer (no concatenation: the kernel
   reads ``z`` and ``h`` separately). ``u`` is rounded to W2's dtype when W2 is 16-bit: eager bf16 does
   the same rounding, and it lets the W2 product run on tensor cores with exact fp32 products.
2. W2 is streamed once, one vocabulary tile (``block_v`` rows) per program; each program adds the
   base logits of its tile (in fp32) and writes only the tile's (max, argmax) per row into
   [N, num_tiles] buffers.
3. A tiny second pass reduces the tiles per row. Ties go to the lowest token id, torch.argmax's rule:
   inside a tile ``tl.argmax`` breaks ties to the left, and across tiles a later tile must be strictly
   larger to win.

Exact pruning (``prune=True``): by Cauchy-Schwarz, no token of tile t can score above
``max(base over t) + max_{v in t} ||W2_v|| * ||u||``. A per-row lower bound ``L`` comes from fully
evaluating the tile holding the row's largest base logit; a tile is skipped (W2 tile never read) when
its bound, widened by a floating-point safety margin, is still strictly below ``L`` for every row it
serves. Skipped tiles can neither win nor tie, so the result equals the unpruned one. The per-tile
row-norm maxima depend only on W2 and are computed once per weight (:func:`w2_tile_row_norm_max`,
cached). Pruning reads the base logits twice (bound pass + tile pass) and pays off only when the
correction is small next to the spread of the base logits; whether it does for real checkpoints is
not measured here (:func:`prune_keep_fraction` measures it for given inputs).

Sampling (:func:`fused_correction_sample_stats`) uses the Gumbel-max trick tile-wise: token =
argmax_v(l_v / T + g_v) with g = -log(-log U), U uniform; the same pass keeps a tile-wise online
logsumexp of l / T, so the chosen token's log-probability ``l_tok / T - logsumexp`` is exact (up to
fp32 rounding). U comes from Philox in the kernel (``seeds``: one int64 per row, graph-capturable)
or from a caller-supplied [N, V] tensor (for tests and reproducibility; costs an [N, V] read). Only
temperature is applied: no top-k/top-p/min-p filtering, so a request with such filters must use the
eager path. A verifier that rejects at slot k needs the whole draft distribution of that one slot;
it can recompute it from (z_k, h_k) with :func:`sglang_domino.kernels.reference.correction_logits`,
which is one [N, V] row per request instead of one per slot.

Everything accumulates in fp32. For fp32 inputs the tokens equal ``torch.argmax(base +
correction_logits(...))`` computed in fp32 (exactly, barring fp32 near-ties). For bf16 inputs they are
the fp32-accurate argmax, which can differ from eager bf16 (which rounds the correction and the sum to
bf16) at bf16 near-ties.

CPU tensors work under the Triton interpreter (``TRITON_INTERPRET=1`` before ``import triton``);
that is how results are tested here. The kernel variants bf16 and fp32 launches pick compile to sm_90
(``tests/kernels/compile_sm90.py``), but nothing has run on a GPU: GPU results and speed are
unverified, block sizes are reasoned, not tuned. The sampling kernels are not yet wired into
:func:`sglang_domino.kernels.correction_loop` (sampling selectors take the eager path).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Optional, Union

import torch
import triton
import triton.language as tl

from sglang_domino.kernels.triton_gru import _block_n, _next_pow2, _round_to, check_launchable, interpreter_active

__all__ = [
    "SampleStats",
    "correction_hidden",
    "fused_correction_argmax",
    "fused_correction_sample_stats",
    "gumbel_from_uniform",
    "prune_keep_fraction",
    "w2_tile_row_norm_max",
]

# Relative safety margin of the pruning bound. An fp32 dot product of length r is off by at most
# ~r * 2^-24 * ||w|| * ||u|| (Higham's gamma_r); 2^-10 covers r up to ~16k with room, and is still
# tiny next to the logit gaps pruning relies on.
_PRUNE_REL_EPS = 2.0**-10
_PRUNE_ABS_EPS = 1e-30


def _is_16bit(t: torch.Tensor) -> bool:
    return t.dtype in (torch.bfloat16, torch.float16)


def _native(*tensors: torch.Tensor) -> bool:
    """Same-dtype 16-bit operands on a real GPU go to tensor cores; everything else widens to fp32."""
    dtypes = {t.dtype for t in tensors}
    return len(dtypes) == 1 and _is_16bit(tensors[0]) and tensors[0].is_cuda and not interpreter_active()


def default_block_v() -> int:
    """Vocabulary rows per program. Untuned GPU choice: 64 rows x r=256 bf16 = 32 KB of W2 per tile,
    2374 programs at V = 151936. The interpreter prefers fewer, larger programs."""
    return 128 if interpreter_active() else 64


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _w2_tile_product(
    u_ptr, w2_ptr, rows, rmask, vs, vmask, R, stride_un, stride_w2,
    UPCAST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """u[rows] · W2[vs]^T over the rank dimension -> fp32 [BLOCK_N, BLOCK_V] (shared by argmax and sampling)."""
    w_ty = w2_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for k0 in range(0, R, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < R
        u = tl.load(u_ptr + rows[:, None] * stride_un + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        w = tl.load(w2_ptr + vs[:, None].to(tl.int64) * stride_w2 + ks[None, :],
                    mask=vmask[:, None] & kmask[None, :], other=0.0)
        if UPCAST:
            acc = tl.dot(u, tl.trans(w.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(u.to(w_ty), tl.trans(w), acc)
    return acc


@triton.jit
def _w1_silu_kernel(
    z_ptr, h_ptr, w1_ptr, u_ptr,
    N, H, G, R,
    stride_zn, stride_hn, stride_w1, stride_un,
    UPCAST: tl.constexpr, ROUND_U: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # u[rows, cols] = SiLU(z @ W1[:, :H]^T + h @ W1[:, H:]^T), optionally rounded to W2's dtype.
    pid_r = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < N
    cmask = cols < R
    w_ty = w1_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_N, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < H
        # The eager loop feeds ``z.to(w1.dtype)``: same rounding here.
        a = tl.load(z_ptr + rows[:, None] * stride_zn + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        a = _round_to(a, w_ty)
        w = tl.load(w1_ptr + cols[:, None] * stride_w1 + ks[None, :], mask=cmask[:, None] & kmask[None, :], other=0.0)
        if UPCAST:
            acc = tl.dot(a.to(tl.float32), tl.trans(w.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, tl.trans(w), acc)
    for k0 in range(0, G, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < G
        a = tl.load(h_ptr + rows[:, None] * stride_hn + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        w = tl.load(w1_ptr + cols[:, None] * stride_w1 + (H + ks[None, :]), mask=cmask[:, None] & kmask[None, :], other=0.0)
        if UPCAST:
            acc = tl.dot(a.to(tl.float32), tl.trans(w.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(_round_to(a, w_ty), tl.trans(w), acc)
    u = acc / (1.0 + tl.exp(-acc))
    # ROUND_U: 0 keep fp32, 1 round to bf16, 2 round to fp16 (W2's dtype).
    if ROUND_U == 1:
        u = _round_to(u, tl.bfloat16).to(tl.float32)
    elif ROUND_U == 2:
        u = _round_to(u, tl.float16).to(tl.float32)
    tl.store(u_ptr + rows[:, None] * stride_un + cols[None, :], u, mask=rmask[:, None] & cmask[None, :])


@triton.jit
def _base_tile_max_kernel(
    base_ptr, out_ptr,
    N, V, stride_bn, stride_on,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
):
    # out[n, t] = max over tile t of base[n, :] (fp32). Feeds the pruning bound.
    t = tl.program_id(0)
    vs = t * BLOCK_V + tl.arange(0, BLOCK_V)
    vmask = vs < V
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        rmask = rows < N
        b = tl.load(base_ptr + rows[:, None].to(tl.int64) * stride_bn + vs[None, :],
                    mask=rmask[:, None] & vmask[None, :], other=float("-inf")).to(tl.float32)
        tl.store(out_ptr + rows * stride_on + t, tl.max(b, axis=1), mask=rmask)


@triton.jit
def _lower_bound_kernel(
    base_ptr, u_ptr, w2_ptr, btm_ptr, tnorm_ptr, lower_ptr, unorm_ptr,
    V, R, T,
    stride_bn, stride_un, stride_w2, stride_btm,
    REL_EPS: tl.constexpr, ABS_EPS: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Per row: evaluate the tile holding the largest base logit; its max (minus a rounding margin, so
    # it stays below what the tile kernel computes for the same tokens) is a lower bound on the answer.
    n = tl.program_id(0)
    best = tl.full((), float("-inf"), tl.float32)
    best_t = tl.full((), 0, tl.int32)
    for t0 in range(0, T, BLOCK_T):
        ts = t0 + tl.arange(0, BLOCK_T)
        m = tl.load(btm_ptr + n * stride_btm + ts, mask=ts < T, other=float("-inf"))
        cm = tl.max(m, axis=0)
        ca = tl.argmax(m, axis=0, tie_break_left=True).to(tl.int32) + t0
        take = cm > best
        best_t = tl.where(take, ca, best_t)
        best = tl.where(take, cm, best)
    vs = best_t * BLOCK_V + tl.arange(0, BLOCK_V)
    vmask = vs < V
    acc = tl.zeros((BLOCK_V,), dtype=tl.float32)
    usq = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(0, R, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < R
        u = tl.load(u_ptr + n * stride_un + ks, mask=kmask, other=0.0)
        w = tl.load(w2_ptr + vs[:, None].to(tl.int64) * stride_w2 + ks[None, :],
                    mask=vmask[:, None] & kmask[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(w * u[None, :], axis=1)
        usq += u * u
    b = tl.load(base_ptr + n.to(tl.int64) * stride_bn + vs, mask=vmask, other=float("-inf")).to(tl.float32)
    unorm = tl.sqrt(tl.sum(usq, axis=0))
    lval = tl.max(b + acc, axis=0)
    tn = tl.load(tnorm_ptr + best_t)
    margin = REL_EPS * (tl.abs(lval) + tn * unorm) + ABS_EPS
    tl.store(lower_ptr + n, lval - margin)
    tl.store(unorm_ptr + n, unorm)


@triton.jit
def _w2_tile_argmax_kernel(
    base_ptr, u_ptr, w2_ptr, tmax_ptr, targ_ptr,
    btm_ptr, tnorm_ptr, lower_ptr, unorm_ptr,  # PRUNE only
    N, V, R,
    stride_bn, stride_un, stride_w2, stride_tn,
    PRUNE: tl.constexpr, UPCAST: tl.constexpr, REL_EPS: tl.constexpr, ABS_EPS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
):
    t = tl.program_id(0)
    vs = t * BLOCK_V + tl.arange(0, BLOCK_V)
    vmask = vs < V
    need = tl.full((), 1.0, tl.float32)
    if PRUNE:
        # Largest (bound + margin - lower bound) over the rows: >= 0 means some row may still need it.
        tn = tl.load(tnorm_ptr + t)
        need = tl.full((), float("-inf"), tl.float32)
        for n0 in range(0, N, BLOCK_N):
            rows = n0 + tl.arange(0, BLOCK_N)
            rmask = rows < N
            bm = tl.load(btm_ptr + rows * stride_tn + t, mask=rmask, other=float("-inf"))
            un = tl.load(unorm_ptr + rows, mask=rmask, other=0.0)
            lo = tl.load(lower_ptr + rows, mask=rmask, other=float("inf"))
            # A tile whose base is all -inf (masked vocabulary) can only score -inf: bound -inf, and the
            # margin must not turn that into inf - inf = NaN.
            abs_bm = tl.where(bm == float("-inf"), 0.0, tl.abs(bm))
            d = bm + tn * un + (REL_EPS * (abs_bm + tn * un) + ABS_EPS) - lo
            d = tl.where(rmask, d, float("-inf"))
            need = tl.maximum(need, tl.max(d, axis=0))
    if need >= 0:
        for n0 in range(0, N, BLOCK_N):
            rows = n0 + tl.arange(0, BLOCK_N)
            rmask = rows < N
            # For N <= BLOCK_N (the serving case) each W2 byte is read from DRAM once; further row
            # blocks re-read the tile, which by then sits in L2.
            acc = _w2_tile_product(u_ptr, w2_ptr, rows, rmask, vs, vmask, R, stride_un, stride_w2,
                                   UPCAST, BLOCK_N, BLOCK_V, BLOCK_K)
            b = tl.load(base_ptr + rows[:, None].to(tl.int64) * stride_bn + vs[None, :],
                        mask=rmask[:, None] & vmask[None, :], other=0.0).to(tl.float32)
            logits = tl.where(vmask[None, :], b + acc, float("-inf"))
            m = tl.max(logits, axis=1)
            a = tl.argmax(logits, axis=1, tie_break_left=True).to(tl.int64) + t * BLOCK_V
            tl.store(tmax_ptr + rows * stride_tn + t, m, mask=rmask)
            tl.store(targ_ptr + rows * stride_tn + t, a, mask=rmask)
    else:
        for n0 in range(0, N, BLOCK_N):
            rows = n0 + tl.arange(0, BLOCK_N)
            rmask = rows < N
            tl.store(tmax_ptr + rows * stride_tn + t, tl.full((BLOCK_N,), float("-inf"), tl.float32), mask=rmask)
            tl.store(targ_ptr + rows * stride_tn + t, tl.full((BLOCK_N,), 0, tl.int64) + t * BLOCK_V, mask=rmask)


@triton.jit
def _reduce_argmax_kernel(
    tmax_ptr, targ_ptr, tok_ptr, val_ptr,
    N, T, stride_tn,
    BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr,
):
    # BLOCK_R rows per program, tiles scanned in chunks of BLOCK_T.
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < N
    best = tl.full((BLOCK_R,), float("-inf"), tl.float32)
    best_t = tl.full((BLOCK_R,), 0, tl.int32)
    for t0 in range(0, T, BLOCK_T):
        ts = t0 + tl.arange(0, BLOCK_T)
        m = tl.load(tmax_ptr + rows[:, None] * stride_tn + ts[None, :],
                    mask=rmask[:, None] & (ts < T)[None, :], other=float("-inf"))
        cm = tl.max(m, axis=1)
        ca = tl.argmax(m, axis=1, tie_break_left=True).to(tl.int32) + t0
        # Strictly greater: on equal maxima the earlier tile (lower token ids) keeps the win.
        take = cm > best
        best_t = tl.where(take, ca, best_t)
        best = tl.where(take, cm, best)
    tl.store(tok_ptr + rows, tl.load(targ_ptr + rows * stride_tn + best_t, mask=rmask), mask=rmask)
    tl.store(val_ptr + rows, best, mask=rmask)


@triton.jit
def _w2_tile_sample_kernel(
    base_ptr, u_ptr, w2_ptr, inv_t_ptr, seed_ptr, noise_ptr,
    tm_ptr, ts_ptr, tkey_ptr, targ_ptr, tlog_ptr,
    N, V, R,
    stride_bn, stride_un, stride_w2, stride_noise, stride_tn,
    NOISE: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
):
    t = tl.program_id(0)
    vs = t * BLOCK_V + tl.arange(0, BLOCK_V)
    vmask = vs < V
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        rmask = rows < N
        acc = _w2_tile_product(u_ptr, w2_ptr, rows, rmask, vs, vmask, R, stride_un, stride_w2,
                               UPCAST, BLOCK_N, BLOCK_V, BLOCK_K)
        mask2 = rmask[:, None] & vmask[None, :]
        b = tl.load(base_ptr + rows[:, None].to(tl.int64) * stride_bn + vs[None, :], mask=mask2, other=0.0).to(tl.float32)
        inv_t = tl.load(inv_t_ptr + rows, mask=rmask, other=1.0)
        logits = tl.where(vmask[None, :], (b + acc) * inv_t[:, None], float("-inf"))
        # Tile-local logsumexp pieces: max and sum of exp relative to it (all -inf rows: m -> 0 shift).
        m = tl.max(logits, axis=1)
        m_safe = tl.where(m == float("-inf"), 0.0, m)
        s = tl.sum(tl.exp(logits - m_safe[:, None]), axis=1)
        if NOISE:
            unif = tl.load(noise_ptr + rows[:, None].to(tl.int64) * stride_noise + vs[None, :], mask=mask2, other=0.5)
        else:
            seed = tl.load(seed_ptr + rows, mask=rmask, other=0)
            # Offset = token id: the noise for (seed, token) does not depend on the tiling.
            # tl.rand is in [0, 1); U = 0 would give a -inf key (and a numpy warning in the interpreter).
            unif = tl.maximum(tl.rand(seed[:, None], vs[None, :]), 1.0e-30)
        gumbel = -tl.log(-tl.log(unif.to(tl.float32)))
        key = tl.where(vmask[None, :], logits + gumbel, float("-inf"))
        km = tl.max(key, axis=1)
        ka = tl.argmax(key, axis=1, tie_break_left=True)
        picked = tl.arange(0, BLOCK_V)[None, :] == ka[:, None]
        lsel = tl.max(tl.where(picked, logits, float("-inf")), axis=1)
        off = rows * stride_tn + t
        tl.store(tm_ptr + off, m, mask=rmask)
        tl.store(ts_ptr + off, s, mask=rmask)
        tl.store(tkey_ptr + off, km, mask=rmask)
        tl.store(targ_ptr + off, ka.to(tl.int64) + t * BLOCK_V, mask=rmask)
        tl.store(tlog_ptr + off, lsel, mask=rmask)


@triton.jit
def _reduce_sample_kernel(
    tm_ptr, ts_ptr, tkey_ptr, targ_ptr, tlog_ptr,
    tok_ptr, logp_ptr, lse_ptr,
    N, T, stride_tn,
    BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < N
    base = rows[:, None] * stride_tn
    # Pass 1: global max of the scaled logits and the Gumbel winner (earliest tile on equal keys).
    # The max and the sum below accumulate element-wise and reduce after the loop: a reduction feeding
    # a loop-carried accumulator crashes Triton 3.8's TritonGPUOptimizeThreadLocality pass (sm_90).
    gmax2 = tl.full((BLOCK_R, BLOCK_T), float("-inf"), tl.float32)
    best = tl.full((BLOCK_R,), float("-inf"), tl.float32)
    best_t = tl.full((BLOCK_R,), 0, tl.int32)
    for t0 in range(0, T, BLOCK_T):
        ts = t0 + tl.arange(0, BLOCK_T)
        mask = rmask[:, None] & (ts < T)[None, :]
        gmax2 = tl.maximum(gmax2, tl.load(tm_ptr + base + ts[None, :], mask=mask, other=float("-inf")))
        k = tl.load(tkey_ptr + base + ts[None, :], mask=mask, other=float("-inf"))
        ck = tl.max(k, axis=1)
        ca = tl.argmax(k, axis=1, tie_break_left=True).to(tl.int32) + t0
        take = ck > best
        best_t = tl.where(take, ca, best_t)
        best = tl.where(take, ck, best)
    # Pass 2: sum_t s_t * exp(m_t - M); the tile sums were taken relative to their own maxima.
    gmax = tl.max(gmax2, axis=1)
    g_safe = tl.where(gmax == float("-inf"), 0.0, gmax)
    total2 = tl.zeros((BLOCK_R, BLOCK_T), dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        ts = t0 + tl.arange(0, BLOCK_T)
        mask = rmask[:, None] & (ts < T)[None, :]
        m = tl.load(tm_ptr + base + ts[None, :], mask=mask, other=float("-inf"))
        s = tl.load(ts_ptr + base + ts[None, :], mask=mask, other=0.0)
        m_safe = tl.where(m == float("-inf"), 0.0, m)
        total2 += tl.where(m == float("-inf"), 0.0, s * tl.exp(m_safe - g_safe[:, None]))
    total = tl.sum(total2, axis=1)
    lse = g_safe + tl.log(tl.where(rmask, total, 1.0))  # padding rows: no log(0)
    off = rows * stride_tn + best_t
    tl.store(tok_ptr + rows, tl.load(targ_ptr + off, mask=rmask), mask=rmask)
    tl.store(logp_ptr + rows, tl.load(tlog_ptr + off, mask=rmask) - lse, mask=rmask)
    tl.store(lse_ptr + rows, lse, mask=rmask)


# --------------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------------


def _check_shapes(base_logits: torch.Tensor, z: torch.Tensor, h: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> None:
    n, v = base_logits.shape
    r = w1.shape[0]
    if z.ndim != 2 or h.ndim != 2 or z.shape[0] != n or h.shape[0] != n:
        raise ValueError(f"z {tuple(z.shape)} / h {tuple(h.shape)} must be [N={n}, *]")
    if w1.shape[1] != z.shape[1] + h.shape[1]:
        raise ValueError(f"w1 {tuple(w1.shape)} must be [r, H+G={z.shape[1] + h.shape[1]}]")
    if w2.shape != (v, r):
        raise ValueError(f"w2 {tuple(w2.shape)} must be [V={v}, r={r}]")


def _row_major(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _block_v(block_v: Optional[int]) -> int:
    bv = default_block_v() if block_v is None else int(block_v)
    if bv < 16 or bv & (bv - 1):
        raise ValueError(f"block_v must be a power of two >= 16, got {bv}")
    return bv


def _reduce_rows(n: int, block_t: int) -> int:
    """Rows per reduce program: a [rows, block_t] chunk of at most ~4K elements (registers on GPU);
    the interpreter wants few programs."""
    if interpreter_active():
        return min(_next_pow2(n), 256)
    return max(1, min(_next_pow2(n), 4096 // block_t))


def correction_hidden(z: torch.Tensor, h: torch.Tensor, w1: torch.Tensor, w2_dtype: torch.dtype) -> torch.Tensor:
    """``u = SiLU(W1 · [z | h])`` as fp32 [N, r] (one kernel, no concatenation).

    Values are rounded to ``w2_dtype`` when that is 16-bit (see the module docstring). Inputs may be
    strided views (rows are read through their strides; a non-unit last stride is copied first).
    """
    if z.ndim != 2 or h.ndim != 2 or z.shape[0] != h.shape[0] or w1.ndim != 2 or w1.shape[1] != z.shape[1] + h.shape[1]:
        raise ValueError(f"z {tuple(z.shape)}, h {tuple(h.shape)} must be [N, H], [N, G] and w1 "
                         f"{tuple(w1.shape)} [r, H+G]")
    check_launchable(z, h, w1)
    z, h, w1 = _row_major(z), _row_major(h), _row_major(w1)
    n, hdim = z.shape
    g = h.shape[1]
    r = w1.shape[0]
    u = torch.empty((n, r), dtype=torch.float32, device=z.device)
    if n == 0:
        return u
    block_n = _block_n(n)
    block_r = min(max(16, _next_pow2(r)), 64 if interpreter_active() else 32)
    block_k = min(max(16, _next_pow2(max(hdim, g))), 128)
    grid = (triton.cdiv(r, block_r), triton.cdiv(n, block_n))
    _w1_silu_kernel[grid](
        z, h, w1, u, n, hdim, g, r,
        z.stride(0), h.stride(0), w1.stride(0), u.stride(0),
        UPCAST=not _native(h, w1), ROUND_U={torch.bfloat16: 1, torch.float16: 2}.get(w2_dtype, 0),
        BLOCK_N=block_n, BLOCK_R=block_r, BLOCK_K=block_k,
    )
    return u


_NORM_CACHE: dict[tuple, tuple["weakref.ref[torch.Tensor]", torch.Tensor]] = {}
_NORM_CACHE_MAX = 8


def w2_tile_row_norm_max(w2: torch.Tensor, block_v: Optional[int] = None) -> torch.Tensor:
    """Per vocabulary tile, the largest fp32 row norm of W2: [num_tiles] fp32 on W2's device.

    Depends only on the weight, so it is computed once per weight tensor and cached. The cache entry
    is tied to the tensor object (weak reference) and its in-place version counter: a stale norm would
    make pruning inexact, so a different tensor at a recycled address, or an in-place update,
    recomputes. Reads all of W2; call it before CUDA graph capture, not inside the hot loop, and keep
    passing the same tensor object (or pass the result as ``w2_tile_norms``).
    """
    bv = _block_v(block_v)
    key = (w2.data_ptr(), tuple(w2.shape), tuple(w2.stride()), w2.dtype, str(w2.device), w2._version, bv)
    hit = _NORM_CACHE.get(key)
    if hit is not None and hit[0]() is w2:
        return hit[1]
    v = w2.shape[0]
    num_tiles = triton.cdiv(v, bv)
    norms = torch.linalg.vector_norm(w2.float(), dim=1)
    padded = torch.zeros(num_tiles * bv, dtype=torch.float32, device=w2.device)
    padded[:v] = norms
    out = padded.view(num_tiles, bv).amax(dim=1).contiguous()
    if key not in _NORM_CACHE and len(_NORM_CACHE) >= _NORM_CACHE_MAX:
        _NORM_CACHE.pop(next(iter(_NORM_CACHE)))
    _NORM_CACHE[key] = (weakref.ref(w2), out)
    return out


def fused_correction_argmax(
    base_logits: torch.Tensor,
    z: torch.Tensor,
    h: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    prune: bool = False,
    *,
    w2_tile_norms: Optional[torch.Tensor] = None,
    block_v: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy token of ``base + W2 · SiLU(W1 · [z | h])`` over the full vocabulary, fused.

    Args:
        base_logits: [N, V] base logits of this slot (any float dtype; read as fp32).
        z: [N, H] backbone hidden state of this slot (rounded to ``w1.dtype``, as eager does).
        h: [N, G] GRU state.
        w1: [r, H+G] ``embed_proj.0.weight``.
        w2: [V, r] ``embed_proj.2.weight``.
        prune: skip W2 tiles that provably cannot win (exact; see the module docstring).
        w2_tile_norms: [num_tiles] from :func:`w2_tile_row_norm_max` with the same ``block_v``
            (looked up in a per-weight cache when omitted).
        block_v: vocabulary rows per tile (power of two >= 16); default :func:`default_block_v`.

    Every tensor may be a strided view (e.g. ``base[:, slot]``): rows are read through their strides,
    and a tensor whose last dimension is not unit-stride is copied first.

    Returns:
        token_ids int64 [N] (ties to the lowest id) and best_logit fp32 [N] (the winning corrected logit).
    """
    tokens, best, _ = _argmax_impl(base_logits, z, h, w1, w2, prune, w2_tile_norms, block_v)
    return tokens, best


def prune_keep_fraction(
    base_logits: torch.Tensor,
    z: torch.Tensor,
    h: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    *,
    block_v: Optional[int] = None,
) -> float:
    """Fraction of W2 tiles the pruned argmax still evaluates for this slot (host sync; diagnostics).

    Run it on real checkpoints and text to learn whether ``prune=True`` pays off; 1.0 means nothing
    was skipped. A tile counts as kept when any row got a finite tile maximum.
    """
    _, _, tile_max = _argmax_impl(base_logits, z, h, w1, w2, True, None, block_v)
    if tile_max.numel() == 0:
        return 1.0
    return float(torch.isfinite(tile_max).any(dim=0).float().mean().item())


def _argmax_impl(
    base_logits: torch.Tensor,
    z: torch.Tensor,
    h: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    prune: bool,
    w2_tile_norms: Optional[torch.Tensor],
    block_v: Optional[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_shapes(base_logits, z, h, w1, w2)
    check_launchable(base_logits, z, h, w1, w2)
    bv = _block_v(block_v)
    base_logits, w2 = _row_major(base_logits), _row_major(w2)
    n, v = base_logits.shape
    r = w1.shape[0]
    dev = base_logits.device
    tokens = torch.empty(n, dtype=torch.int64, device=dev)
    best = torch.empty(n, dtype=torch.float32, device=dev)
    if n == 0:
        return tokens, best, torch.empty((0, 0), dtype=torch.float32, device=dev)
    u = correction_hidden(z, h, w1, w2.dtype)
    num_tiles = triton.cdiv(v, bv)
    tile_max = torch.empty((n, num_tiles), dtype=torch.float32, device=dev)
    tile_arg = torch.empty((n, num_tiles), dtype=torch.int64, device=dev)
    block_n = _block_n(n)
    block_k = min(max(16, _next_pow2(r)), 256 if interpreter_active() else 64)
    block_t = min(_next_pow2(num_tiles), 1024)
    if prune:
        tnorm = w2_tile_norms if w2_tile_norms is not None else w2_tile_row_norm_max(w2, bv)
        if tnorm.shape != (num_tiles,) or tnorm.dtype != torch.float32 or tnorm.device != dev:
            raise ValueError(f"w2_tile_norms must be fp32 [{num_tiles}] on {dev} for block_v={bv}")
        tnorm = tnorm.contiguous()  # the kernels index it with unit stride
        base_tile_max = torch.empty((n, num_tiles), dtype=torch.float32, device=dev)
        lower = torch.empty(n, dtype=torch.float32, device=dev)
        unorm = torch.empty(n, dtype=torch.float32, device=dev)
        _base_tile_max_kernel[(num_tiles,)](
            base_logits, base_tile_max, n, v, base_logits.stride(0), base_tile_max.stride(0),
            BLOCK_N=block_n, BLOCK_V=bv,
        )
        _lower_bound_kernel[(n,)](
            base_logits, u, w2, base_tile_max, tnorm, lower, unorm,
            v, r, num_tiles,
            base_logits.stride(0), u.stride(0), w2.stride(0), base_tile_max.stride(0),
            REL_EPS=_PRUNE_REL_EPS, ABS_EPS=_PRUNE_ABS_EPS,
            BLOCK_T=block_t, BLOCK_V=bv, BLOCK_K=block_k,
        )
    else:
        # Unused pointer arguments of the PRUNE branch (compiled out).
        base_tile_max = tnorm = lower = unorm = tile_max
    _w2_tile_argmax_kernel[(num_tiles,)](
        base_logits, u, w2, tile_max, tile_arg,
        base_tile_max, tnorm, lower, unorm,
        n, v, r,
        base_logits.stride(0), u.stride(0), w2.stride(0), tile_max.stride(0),
        PRUNE=bool(prune), UPCAST=not _native(w2), REL_EPS=_PRUNE_REL_EPS, ABS_EPS=_PRUNE_ABS_EPS,
        BLOCK_N=block_n, BLOCK_V=bv, BLOCK_K=block_k,
    )
    block_r = _reduce_rows(n, block_t)
    _reduce_argmax_kernel[(triton.cdiv(n, block_r),)](
        tile_max, tile_arg, tokens, best, n, num_tiles, tile_max.stride(0), BLOCK_R=block_r, BLOCK_T=block_t,
    )
    return tokens, best, tile_max


@dataclass(frozen=True)
class SampleStats:
    """What a sampling rollout needs from one slot (all [N]).

    token_ids: int64 Gumbel-max draw from softmax(l / T).
    token_logprob: fp32 exact log q(token) = l_tok / T - logsumexp.
    logsumexp: fp32 logsumexp_v(l_v / T) over the full vocabulary.
    """

    token_ids: torch.Tensor
    token_logprob: torch.Tensor
    logsumexp: torch.Tensor


def gumbel_from_uniform(uniform: torch.Tensor) -> torch.Tensor:
    """g = -log(-log U) in fp32, the transform the sampling kernel applies (for references/tests)."""
    return -torch.log(-torch.log(uniform.float()))


def fused_correction_sample_stats(
    base_logits: torch.Tensor,
    z: torch.Tensor,
    h: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    temperature: Union[float, torch.Tensor],
    *,
    seeds: Optional[torch.Tensor] = None,
    uniform_noise: Optional[torch.Tensor] = None,
    block_v: Optional[int] = None,
) -> SampleStats:
    """Sample one token per row from softmax((base + W2 · SiLU(W1 · [z | h])) / T), fused.

    Args:
        base_logits, z, h, w1, w2: as in :func:`fused_correction_argmax`.
        temperature: float or [N] tensor, > 0 (not checked on device values: no host sync).
        seeds: [N] int64 Philox seeds, one per row; the noise of (seed, token) is fixed, so give each
            (request, slot) its own seed. Device tensor, so a captured CUDA graph can take new seeds.
        uniform_noise: [N, V] uniforms in (0, 1) instead of ``seeds`` (exact reproducibility).
        block_v: vocabulary rows per tile.

    Returns:
        :class:`SampleStats`. No top-k/top-p filtering is applied.
    """
    _check_shapes(base_logits, z, h, w1, w2)
    check_launchable(base_logits, z, h, w1, w2)
    if (seeds is None) == (uniform_noise is None):
        raise ValueError("give exactly one of seeds [N] or uniform_noise [N, V]")
    bv = _block_v(block_v)
    base_logits, w2 = _row_major(base_logits), _row_major(w2)
    n, v = base_logits.shape
    r = w1.shape[0]
    dev = base_logits.device
    if isinstance(temperature, torch.Tensor):
        inv_t = (1.0 / temperature.to(device=dev, dtype=torch.float32)).expand(n).contiguous()
    else:
        if temperature <= 0:
            raise ValueError("temperature must be > 0 (use fused_correction_argmax for greedy)")
        inv_t = torch.full((n,), 1.0 / float(temperature), dtype=torch.float32, device=dev)
    if uniform_noise is not None:
        if uniform_noise.shape != (n, v):
            raise ValueError(f"uniform_noise must be [N={n}, V={v}]")
        noise = _row_major(uniform_noise)
        seed_t = inv_t  # unused
    else:
        if seeds.shape != (n,):
            raise ValueError(f"seeds must be [N={n}]")
        seed_t = seeds.to(device=dev, dtype=torch.int64).contiguous()
        noise = inv_t  # unused
    tokens = torch.empty(n, dtype=torch.int64, device=dev)
    logp = torch.empty(n, dtype=torch.float32, device=dev)
    lse = torch.empty(n, dtype=torch.float32, device=dev)
    if n == 0:
        return SampleStats(tokens, logp, lse)
    u = correction_hidden(z, h, w1, w2.dtype)
    num_tiles = triton.cdiv(v, bv)
    bufs = [torch.empty((n, num_tiles), dtype=torch.float32, device=dev) for _ in range(3)]
    tile_arg = torch.empty((n, num_tiles), dtype=torch.int64, device=dev)
    tile_logit = torch.empty((n, num_tiles), dtype=torch.float32, device=dev)
    block_n = _block_n(n)
    block_k = min(max(16, _next_pow2(r)), 256 if interpreter_active() else 64)
    block_t = min(_next_pow2(num_tiles), 1024)
    _w2_tile_sample_kernel[(num_tiles,)](
        base_logits, u, w2, inv_t, seed_t, noise,
        bufs[0], bufs[1], bufs[2], tile_arg, tile_logit,
        n, v, r,
        base_logits.stride(0), u.stride(0), w2.stride(0), noise.stride(0), bufs[0].stride(0),
        NOISE=uniform_noise is not None, UPCAST=not _native(w2),
        BLOCK_N=block_n, BLOCK_V=bv, BLOCK_K=block_k,
    )
    block_r = _reduce_rows(n, block_t)
    _reduce_sample_kernel[(triton.cdiv(n, block_r),)](
        bufs[0], bufs[1], bufs[2], tile_arg, tile_logit, tokens, logp, lse,
        n, num_tiles, bufs[0].stride(0), BLOCK_R=block_r, BLOCK_T=block_t,
    )
    return SampleStats(tokens, logp, lse)
