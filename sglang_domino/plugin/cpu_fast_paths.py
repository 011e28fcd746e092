"""CPU fast paths the plugin installs in every SGLang process on CPU, plain serving included (same results).

1. Float32 linear layers (:func:`fast_linear`; hooks on ``UnquantizedLinearMethod.apply`` and
   ``LogitsProcessor._compute_lm_head``): one or two rows as ``(W @ xᵀ)ᵀ`` (:func:`small_batch_linear`), three or
   more through oneDNN with the weight packed once per layer (:func:`packed_linear`).
2. torch_native *decode* attention gathering each request's keys with ``index_select`` (:func:`sdpa_decode`):
   the same attention as upstream's ``_run_sdpa_forward_decode``; see
   :func:`sglang_domino.plugin.hooks.sdpa_new_tokens_only`, which the verify and draft extends use (both loop
   through :func:`~sglang_domino.plugin.hooks.sdpa_over_requests`).

Both are installed for plain servers too, so a benchmark compares plain, backbone and Domino servers on the same
kernels. ``SGLANG_DOMINO_CPU_FAST_PATHS=0`` turns both off (upstream's code runs unchanged).

Why the linear paths: on this machine kind (2 cores, AVX-512, no AMX) ``F.linear(x, W)`` for a float32 ``x`` of
a few rows runs far below what the memory system gives: for one row MKL's gemv is slow, and for a few rows its
sgemm packs the *weight* (the large operand) on every call. A speculative verify is exactly such a call
(``batch × draft_tokens`` rows). Written as ``(W @ xᵀ)ᵀ`` MKL packs the small operand instead, which is the
fastest way found for one or two rows; from three rows on, oneDNN with a weight packed ahead of time (its blocked
layout, made once per layer and kept) is faster at every size measured, prefill included. SmolLM2-135M's shapes
(30 layers' linears + lm_head, float32, 2 threads, weights not in cache;
``benchmarks/results/exploration/cpu_linear_gemm.{py,txt}``), ms per forward, F.linear / small / packed:
1 row 50 / 22 / 30, 4 rows 67 / 30 / 24, 8 rows 63 / 63 / 29, 16 rows 76 / 65 / 37, 64 rows 197 / 166 / 116,
512 rows 862 / 1,032 / 728 (three more runs, with other layout hints, agreed within noise).

The result is the same product (float32, another summation order, as between any two GEMM shapes); oneDNN's row
results do not depend on the other rows of the batch. The packed copies cost the weights' size again in memory
(540 MB for SmolLM2-135M in float32), and while one exists SGLang refuses online weight updates (which write
through ``param.data``, invisible to any check) with a message naming the switch. bfloat16 and other dtypes keep
upstream's ``F.linear`` (oneDNN handles small bf16 batches well), as does any device but CPU; without oneDNN
weight packing in this torch build, :func:`small_batch_linear` covers up to :data:`MAX_SMALL_ROWS` rows.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Optional

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

ENV_SWITCH = "SGLANG_DOMINO_CPU_FAST_PATHS"
# Rows served by small_batch_linear when oneDNN packing is there (measured fastest for 1-2 rows) and when it is not.
SMALL_ROWS = 2
MAX_SMALL_ROWS = 32
# The batch size oneDNN picks the packed layout for; layouts for 4, 32 and 128 measured the same from 1 to 512 rows
# (1 was slower from 4 rows on).
PACK_HINT_ROWS = 32
_PACKED_ATTR = "_domino_onednn_weight"
DERIVED_WEIGHT_ERROR_ATTR = "_derived_weight_cache_error"  # read by SGLang's weight updater (contract)


def parse_switch(value: Optional[str]) -> bool:
    """``SGLANG_DOMINO_CPU_FAST_PATHS``: unset/1/true/yes/on -> on, 0/false/no/off -> off, anything else ValueError."""
    text = (value if value is not None else "1").strip().lower()
    if text in ("1", "true", "yes", "on", ""):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{ENV_SWITCH}={value!r}: expected 1 or 0")


@functools.lru_cache(maxsize=1)
def enabled() -> bool:
    """Whether the CPU fast paths are on in this process (read once).

    A bad value turns them off with an error in the log rather than failing a forward pass; a Domino server refuses
    to start on it (:func:`sglang_domino.plugin.validate.check_drafting_env`).
    """
    try:
        return parse_switch(os.environ.get(ENV_SWITCH))
    except ValueError as exc:
        logger.error("%s; CPU fast paths off", exc)
        return False


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True when ``F.linear(x, weight)`` is a float32 CPU product without autograd that :func:`fast_linear` may take."""
    return (x.device.type == "cpu" and weight.device.type == "cpu"
            and x.dtype == torch.float32 and weight.dtype == torch.float32
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


def refuse_online_weight_updates(module: Any, reason: str) -> None:
    """Make SGLang refuse online weight updates while ``module`` has a derived copy of its weight.

    SGLang's ``update_weights_from_{disk,tensor,distributed,ipc}`` write through ``param.data``, which no version
    counter sees, so a copy would silently go stale; SGLang's weight updater checks every module for
    ``_derived_weight_cache_error`` before writing and answers the request with it. Reasons accumulate.
    """
    existing = getattr(module, DERIVED_WEIGHT_ERROR_ATTR, None)
    if existing and reason in existing:
        return
    setattr(module, DERIVED_WEIGHT_ERROR_ATTR, f"{existing} {reason}" if existing else reason)


def weight_copy_key(weight: torch.Tensor) -> tuple:
    """When a copy derived from ``weight`` is stale: another tensor, or a write through autograd-visible ops.

    Address, geometry and version counter. A cache keyed on it must hold ``weight`` itself, so that its memory
    cannot be freed and reused by another tensor at the same address; a view with the same address and geometry
    has the same values.
    """
    return (weight.data_ptr(), tuple(weight.shape), weight.stride(), weight._version)


def packed_weight(module: Any, weight: torch.Tensor) -> torch.Tensor:
    """``module``'s oneDNN-packed copy of ``weight`` [out, in], made on first use and kept on the module
    (remade when :func:`weight_copy_key` changes)."""
    key = weight_copy_key(weight)
    cached = getattr(module, _PACKED_ATTR, None)
    if cached is not None and cached[1] == key:
        return cached[2]
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_HINT_ROWS)
    setattr(module, _PACKED_ATTR, (weight, key, packed))
    refuse_online_weight_updates(
        module, f"Online weight updates are not supported while the Domino plugin's CPU fast paths keep "
                f"oneDNN-packed copies of the float32 weights (they would keep the old values); restart the "
                f"server with {ENV_SWITCH}=0 to use online weight updates.")
    return packed


def packed_linear(module: Any, x: torch.Tensor, weight: torch.Tensor,
                  bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` through oneDNN with ``module``'s packed weight. x [..., in] -> [..., out]."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.ops.mkldnn._linear_pointwise(rows, packed_weight(module, weight), bias, "none", [], "")
    return out.view(*x.shape[:-1], weight.shape[0])


def fast_linear(module: Any, x: torch.Tensor, weight: torch.Tensor,
                bias: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """``F.linear(x, weight, bias)`` by the fastest path measured for its row count, or None for upstream's."""
    if not (applies(x, weight) and enabled()):
        return None
    rows = x.numel() // weight.shape[1]
    if rows > SMALL_ROWS and onednn_packing_available():
        return packed_linear(module, x, weight, bias)
    if rows <= MAX_SMALL_ROWS:
        return small_batch_linear(x, weight, bias)
    return None


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


# The AROUND hooks (registered by :func:`sglang_domino.plugin.hooks.register_hooks`; targets in the contract).
def unquantized_linear_apply(original, self, layer, x, bias=None, *args, **kwargs):
    """``UnquantizedLinearMethod.apply``: every dense linear of the target (and of SGLang-run drafters)."""
    from sglang.srt.utils.common import use_intel_amx_backend

    weight = getattr(layer, "weight", None)
    if not args and not kwargs and isinstance(weight, torch.Tensor) and not use_intel_amx_backend(layer):
        out = fast_linear(layer, x, weight, bias)
        if out is not None:
            return out
    return original(self, layer, x, bias, *args, **kwargs)


def compute_lm_head(original, self, hidden_states, lm_head, embedding_bias=None, *args, out=None, **kwargs):
    """``LogitsProcessor._compute_lm_head``: upstream's plain-weight branch is ``hidden @ W.T``; same product here.

    Every other branch (LoRA, quantized or AMX lm_head, the fp32-lm_head and RL on-policy options, an embedding
    bias) stays upstream's. ``out`` (a logits buffer) is not used by that branch upstream either.
    """
    from sglang.srt.layers import logits_processor
    from sglang.srt.utils.common import use_intel_amx_backend

    weight = getattr(lm_head, "weight", None)
    if (not args and not kwargs and embedding_bias is None and isinstance(weight, torch.Tensor)
            and hidden_states.dim() == 2 and not (hasattr(lm_head, "set_lora") and hasattr(lm_head, "apply_lora"))
            and not logits_processor.should_apply_lm_head_quant_method(lm_head, getattr(lm_head, "quant_method", None))
            and not use_intel_amx_backend(lm_head)
            and not getattr(self, "use_fp32_lm_head", False) and getattr(self, "rl_on_policy_target", None) is None):
        logits = fast_linear(lm_head, hidden_states, weight)
        if logits is not None:
            return logits
    return original(self, hidden_states, lm_head, embedding_bias, *args, out=out, **kwargs)


def sdpa_decode(original, self, query, output, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens,
                encoder_lens=None, scaling=None, enable_gqa=False, causal=False, is_cross_attn=False,
                sliding_window_size=None, *args, **kwargs):
    """``TorchNativeAttnBackend._run_sdpa_forward_decode``: one new token per request, its key already cached.

    Upstream gathers each request's keys with ``k_cache[slots]``; in a busy CPU scheduler that gather cost about
    twice the attention itself (py-spy, 2026-12-03). This is the same SDPA over the same keys (decode is an
    extend of one token after ``seq_len - 1`` cached ones) through :func:`~.hooks.sdpa_over_requests`.
    Encoder/cross attention and sliding windows stay upstream's.
    """
    plain = (not args and not kwargs and encoder_lens is None and not is_cross_attn
             and (sliding_window_size is None or sliding_window_size < 0))
    if plain and query.device.type == "cpu" and enabled():
        from sglang_domino.plugin.hooks import sdpa_over_requests

        requests = ((1, total, total - 1, pool_row)
                    for total, pool_row in zip(seq_lens.tolist(), req_pool_indices.tolist()))
        return sdpa_over_requests(query, output, k_cache, v_cache, req_to_token, requests, scaling=scaling,
                                  enable_gqa=enable_gqa, causal=False)
    return original(self, query, output, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, encoder_lens,
                    scaling=scaling, enable_gqa=enable_gqa, causal=causal, is_cross_attn=is_cross_attn,
                    sliding_window_size=sliding_window_size, *args, **kwargs)
