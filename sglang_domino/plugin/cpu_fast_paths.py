"""CPU fast paths the plugin installs in every SGLang process on CPU, plain serving included (same results).

1. Float32 linear layers for small batches, computed the way MKL streams the weight once
   (:func:`small_batch_linear`; hooks on ``UnquantizedLinearMethod.apply`` and ``LogitsProcessor._compute_lm_head``).
2. torch_native *decode* attention gathering each request's keys with ``index_select`` (:func:`sdpa_decode`):
   the same attention as upstream's ``_run_sdpa_forward_decode``; see
   :func:`sglang_domino.plugin.hooks.sdpa_new_tokens_only`, which the verify and draft extends use (both loop
   through :func:`~sglang_domino.plugin.hooks.sdpa_over_requests`).

Both are installed for plain servers too, so a benchmark compares plain, backbone and Domino servers on the same
kernels. ``SGLANG_DOMINO_CPU_FAST_PATHS=0`` turns both off (upstream's code runs unchanged).

Why the linear path: on this machine kind (2 cores, AVX-512, no AMX) ``F.linear(x, W)`` for a float32 ``x`` of
1-16 rows runs at 10-20 GB/s, well below what the memory system gives: for one row MKL's gemv is slow, and for a few rows
its sgemm packs the *weight* (the large operand) on every call. A speculative verify is exactly such a call
(``batch × draft_tokens`` rows), so on CPU it paid ~1.7× a plain decode step for the target's linears alone
while the weights read are the same. Written as ``(W @ xᵀ)ᵀ`` MKL packs the small operand instead. Measured
on SmolLM2-135M's shapes (30 layers' linears + lm_head, float32, 2 threads, weights not in cache;
``benchmarks/results/exploration/cpu_linear_gemm.{py,txt}``): 1 row 52 → 31 ms (padded to 2 rows, below), 2 rows
95 → 26 ms, 4 rows 78 → 42 ms, 8-16 rows ~1.15× faster; from 64 rows on it is no better (0.86-0.94×, and
1.2-1.4× better in an earlier run: noise), so it stops at :data:`MAX_ROWS`.

The result is the same product (float32, another summation order, as between any two GEMM shapes). bfloat16
and other dtypes keep upstream's ``F.linear`` (oneDNN handles small bf16 batches well: 22 ms for one row), as
does anything with more than :data:`MAX_ROWS` rows (prefill, large batches) and any device but
CPU.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Optional

import torch

logger = logging.getLogger(__name__)

ENV_SWITCH = "SGLANG_DOMINO_CPU_FAST_PATHS"
MAX_ROWS = 32


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
    """True when :func:`small_batch_linear` is the faster way to compute ``F.linear(x, weight)``."""
    return (x.device.type == "cpu" and weight.device.type == "cpu"
            and x.dtype == torch.float32 and weight.dtype == torch.float32
            and weight.dim() == 2 and x.dim() >= 1 and x.shape[-1] == weight.shape[1]
            and 0 < x.numel() // max(weight.shape[1], 1) <= MAX_ROWS
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))


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
    if (not args and not kwargs and isinstance(weight, torch.Tensor)
            and not use_intel_amx_backend(layer) and applies(x, weight) and enabled()):
        return small_batch_linear(x, weight, bias)
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
            and not getattr(self, "use_fp32_lm_head", False) and getattr(self, "rl_on_policy_target", None) is None
            and applies(hidden_states, weight) and enabled()):
        return small_batch_linear(hidden_states, weight)
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
