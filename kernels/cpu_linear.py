"""Linear products of a few rows on CPU (float32; bf16 where it pays), at the speed the memory system gives (same
results as F.linear).

Used for the target's linears and lm_head in every CPU SGLang process (through the hooks of
:mod:`sglang_domino.plugin.cpu_fast_paths`) and for the drafter's base logits (:func:`linear`, called by
:func:`sglang_domino.rollout.draft_from_hidden`), which is the same product against the target's lm_head.

Why: on CPU ``F.linear(x, W)`` for a float32 ``x`` of a few rows runs far below what the memory system gives: for
one row MKL's gemv is slow, and for a few rows its sgemm packs the *weight* (the large operand) on every call. A
speculative verify is exactly such a call (``batch × draft_tokens`` rows), and so is drafting (``batch × (W−1)``
rows against the [V, H] lm_head). Written as ``(W @ xᵀ)ᵀ`` MKL packs the small operand instead, which is the
fastest way found for one or two rows; from three rows on, oneDNN with a weight packed ahead of time (its blocked
layout, made once per weight and kept) is faster at every size measured, prefill included. SmolLM2-135M's shapes
(30 layers' linears + lm_head, float32, 2 threads, weights not in cache;
``scripts/exploration/cpu_linear_gemm.{py,txt}``), ms per forward, F.linear / small / packed, on an
AVX-512 machine: 1 row 50 / 22 / 30, 4 rows 67 / 30 / 24, 8 rows 63 / 63 / 29, 16 rows 76 / 65 / 37, 64 rows
197 / 166 / 116, 512 rows 862 / 1,032 / 728; on an AVX2-only machine (2026-12-03): 1 row 45 / 22 / 25, 3 rows
100 / 32 / 27, 4 rows 64 / 30 / 29, 16 rows 84 / 77 / 49. The lm_head alone ([49152, 576]) for the 3 draft rows
of a width-4 step on that AVX2 machine: F.linear 32 ms, packed 5 ms.

The result is the same product (float32, another summation order, as between any two GEMM shapes); oneDNN's row
results do not depend on the other rows of the batch. A packed copy costs its weight's size again in memory.

bfloat16 products take the packed path at every row count, on CPUs that multiply bf16 natively (AVX512-BF16 or
AMX-BF16) and only where a probe finds the packed product bit-equal to ``F.linear``'s (:func:`bf16_packing_pays`):
there ``F.linear`` runs the same oneDNN kernel but reorders the weight on every call. Measured on an AVX512-BF16
machine (2 threads, weights not in cache; ``scripts/exploration/cpu_linear_bf16.{py,txt}``): the [49152, 576] head
for 1-6 rows 1.8-2.2 ms by ``F.linear``, 1.1-1.4 ms packed; SmolLM2-135M's linears + head per forward, 1 / 3 / 16 /
48 rows, 11.3 / 12.0 / 15.0 / 26.3 ms against 7.4 / 8.5 / 11.2 / 21.8 ms. So bf16 drafting logits (the default for a
float32 target on such a CPU) and bf16 targets get faster, with the same numbers. Other dtypes and devices are left
to ``F.linear``; without oneDNN weight packing in this torch build, :func:`small_batch_linear` covers float32 up to :data:`MAX_SMALL_ROWS`
rows. ``SGLANG_DOMINO_CPU_FAST_PATHS=0`` turns all of it off (:func:`configure`).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

# Rows served by small_batch_linear when oneDNN packing is there (measured fastest for 1-2 rows) and when it is not.
SMALL_ROWS = 2
MAX_SMALL_ROWS = 32
# The batch size oneDNN picks the packed layout for; layouts for 4, 32 and 128 measured the same from 1 to 512 rows
# (1 was slower from 4 rows on).
PACK_HINT_ROWS = 32
_PACKED_ATTR = "_domino_onednn_weight"


_enabled = True


def configure(enabled: bool) -> None:
    """Turn the fast paths on or off for this process. SGLang processes: the plugin, from
    ``$SGLANG_DOMINO_CPU_FAST_PATHS`` (:mod:`sglang_domino.settings`), when it loads; elsewhere they are on."""
    global _enabled
    _enabled = bool(enabled)


def enabled() -> bool:
    """Whether the CPU fast paths are on in this process (:func:`configure`)."""
    return _enabled


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True when ``F.linear(x, weight)`` is a CPU product without autograd that :func:`fast_linear` may take:
    float32, or bfloat16 where :func:`bf16_packing_pays`."""
    return (x.device.type == "cpu" and weight.device.type == "cpu" and x.dtype == weight.dtype
            and (x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and bf16_packing_pays()))
            and weight.dim() == 2 and x.dim() >= 1 and x.shape[-1] == weight.shape[1] and x.numel() > 0
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))


@functools.lru_cache(maxsize=1)
def onednn_packing_available() -> bool:
    """Whether this torch build packs linear weights for oneDNN (checked once on a tiny product)."""
    try:
        weight, x = torch.randn(8, 4), torch.randn(3, 4)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_HINT_ROWS)
        got = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
        torch.testing.assert_close(got, F.linear(x, weight), rtol=1e-4, atol=1e-4)
        return True
    except Exception as exc:  # a build without oneDNN, or ops renamed in another torch
        logger.warning("oneDNN weight packing unavailable (%s); small float32 linears use MKL only", exc)
        return False


@functools.lru_cache(maxsize=1)
def bf16_packing_pays() -> bool:
    """Whether bfloat16 products take the packed path: oneDNN packing works, the CPU multiplies bf16 natively (else
    oneDNN emulates it and nothing was measured), and a packed product equals ``F.linear``'s bit for bit (checked
    once, at a width where oneDNN's blocked kernels run), so turning it on changes speed only."""
    from sglang_domino.hardware import cpu_has_bf16_units

    if not (onednn_packing_available() and cpu_has_bf16_units()):
        return False
    try:
        g = torch.Generator().manual_seed(0)
        weight = torch.randn(96, 576, generator=g).to(torch.bfloat16)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_HINT_ROWS)
        for rows in (1, 3, 40):
            x = torch.randn(rows, 576, generator=g).to(torch.bfloat16)
            packed_product = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
            if not torch.equal(packed_product, F.linear(x, weight)):
                logger.warning("oneDNN's packed bf16 product differs from F.linear here; bf16 linears use F.linear")
                return False
        return True
    except Exception as exc:  # bf16 packing missing from this build
        logger.warning("oneDNN bf16 weight packing unavailable (%s); bf16 linears use F.linear", exc)
        return False


def weight_copy_key(weight: torch.Tensor) -> tuple:
    """When a copy derived from ``weight`` is stale: another tensor, or a write through autograd-visible ops.

    Address, geometry and version counter. A cache keyed on it must hold ``weight`` itself, so that its memory
    cannot be freed and reused by another tensor at the same address; a view with the same address and geometry
    has the same values.
    """
    return (weight.data_ptr(), tuple(weight.shape), weight.stride(), weight._version)


OnNewCopy = Callable[[Any], None]


def weight_owner(weight: torch.Tensor) -> torch.Tensor:
    """Where a packed copy of ``weight`` is kept: the tensor it is a full-size view of (so the target's lm_head
    and drafting's ``lm_head.weight[:vocab]`` share one copy), else ``weight`` itself."""
    base = weight._base
    return base if base is not None and weight_copy_key(base) == weight_copy_key(weight) else weight


def packed_weight(owner: Any, weight: torch.Tensor, on_new_copy: Optional[OnNewCopy] = None) -> torch.Tensor:
    """``owner``'s oneDNN-packed copy of ``weight`` [out, in], made on first use and kept as an attribute of
    ``owner`` (a module, or the weight tensor itself); remade when :func:`weight_copy_key` changes.
    ``on_new_copy(owner)`` runs whenever a copy is made (SGLang's glue uses it to refuse online weight updates)."""
    key = weight_copy_key(weight)
    cached = getattr(owner, _PACKED_ATTR, None)
    if cached is not None and cached[1] == key:
        return cached[2]
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_HINT_ROWS)
    setattr(owner, _PACKED_ATTR, (weight, key, packed))
    if on_new_copy is not None:
        on_new_copy(owner)
    return packed


def prepack(owner: Any, weight: torch.Tensor, on_new_copy: Optional[OnNewCopy] = None) -> bool:
    """Make ``owner``'s packed copy of ``weight`` [out, in] now, where :func:`fast_linear` would make it in its
    first product of more than :data:`SMALL_ROWS` rows: for a server, at start rather than in a user's first
    request (the [49152, 576] float32 head took 2.3 s on an AVX2 machine, its products then 11 ms). Returns
    whether a packed copy exists (False: no fast path for this weight)."""
    probe = torch.empty(1, weight.shape[-1], dtype=weight.dtype, device=weight.device)
    if not (applies(probe, weight) and enabled() and onednn_packing_available()):
        return False
    packed_weight(owner, weight, on_new_copy)
    return True


def packed_linear(owner: Any, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  on_new_copy: Optional[OnNewCopy] = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` through oneDNN with ``owner``'s packed weight. x [..., in] -> [..., out]."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.ops.mkldnn._linear_pointwise(rows, packed_weight(owner, weight, on_new_copy), bias, "none", [], "")
    return out.view(*x.shape[:-1], weight.shape[0])


def small_batch_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` as ``(weight @ x_rowsᵀ)ᵀ``. x [..., in], weight [out, in] -> [..., out].

    One row is duplicated: MKL's two-column sgemm streams the weight about twice as fast as its gemv.
    """
    rows = x.reshape(-1, x.shape[-1])
    single = rows.shape[0] == 1
    if single:
        rows = torch.cat((rows, rows))
    out = torch.mm(weight, rows.t()).t()
    if single:
        out = out[:1]
    out = out.contiguous()
    if bias is not None:
        out += bias
    return out.view(*x.shape[:-1], weight.shape[0])


def fast_linear(owner: Any, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                on_new_copy: Optional[OnNewCopy] = None) -> Optional[torch.Tensor]:
    """``F.linear(x, weight, bias)`` by the fastest path measured for its row count, or None when no fast path
    applies (another dtype or device, autograd, the switch off, too many rows without oneDNN packing)."""
    if not (applies(x, weight) and enabled()):
        return None
    rows = x.numel() // weight.shape[1]
    if x.dtype == torch.bfloat16 or (rows > SMALL_ROWS and onednn_packing_available()):
        return packed_linear(owner, x, weight, bias, on_new_copy)
    if rows <= MAX_SMALL_ROWS:
        return small_batch_linear(x, weight, bias)
    return None


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight)``, through :func:`fast_linear` when it applies; a packed copy is kept on
    :func:`weight_owner`, so a weight reused across calls (the drafting lm_head) is packed once."""
    out = fast_linear(weight_owner(weight), x, weight)
    return F.linear(x, weight) if out is None else out


__all__ = ["MAX_SMALL_ROWS", "SMALL_ROWS", "applies", "bf16_packing_pays", "configure", "enabled", "fast_linear",
           "linear", "onednn_packing_available", "packed_linear", "packed_weight", "small_batch_linear",
           "weight_copy_key", "weight_owner"]
