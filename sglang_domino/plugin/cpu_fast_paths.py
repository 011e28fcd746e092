"""CPU fast paths the plugin installs in every SGLang process on CPU, plain serving included (same results).

1. Float32 linear layers (hooks on ``UnquantizedLinearMethod.apply`` and ``LogitsProcessor._compute_lm_head``):
   the kernels of :mod:`sglang_domino.kernels.cpu_linear` -- one or two rows as ``(W @ xᵀ)ᵀ``, three or more
   through oneDNN with the weight packed once per layer (why and measured costs: that module).
2. torch_native *decode* attention gathering each request's keys with ``index_select`` (:func:`sdpa_decode`):
   the same attention as upstream's ``_run_sdpa_forward_decode``; see
   :func:`sglang_domino.plugin.attention.sdpa_new_tokens_only`, which the verify and draft extends use (both
   loop through :func:`~sglang_domino.plugin.attention.sdpa_over_requests`).

Both are installed for plain servers too, so a benchmark compares plain, backbone and Domino servers on the same
kernels. ``SGLANG_DOMINO_CPU_FAST_PATHS=0`` turns both off (upstream's code runs unchanged), and with them the
same kernels in Domino's drafting; the plugin applies it when it loads (:func:`configure_from_environment`).

The packed copies cost the weights' size again in memory (540 MB for SmolLM2-135M in float32), and while one
exists SGLang refuses online weight updates (which write through ``param.data``, invisible to any check) with a
message naming the switch.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch

from sglang_domino.kernels import cpu_linear
from sglang_domino.plugin.attention import sdpa_over_requests
from sglang_domino.settings import CPU_FAST_PATHS_ENV

logger = logging.getLogger(__name__)

DERIVED_WEIGHT_ERROR_ATTR = "_derived_weight_cache_error"  # read by SGLang's weight updater (contract)
PACKED_WEIGHTS_REFUSAL = (
    f"Online weight updates are not supported while the Domino plugin's CPU fast paths keep oneDNN-packed copies "
    f"of the float32 weights (they would keep the old values); restart the server with {CPU_FAST_PATHS_ENV}=0 to use "
    f"online weight updates.")


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


def _refuse_updates_once_packed(module: Any) -> cpu_linear.OnNewCopy:
    """The ``on_new_copy`` callback for ``module``'s weight: SGLang refuses online weight updates for ``module``."""
    return lambda _: refuse_online_weight_updates(module, PACKED_WEIGHTS_REFUSAL)


def fast_linear(module: Any, x: torch.Tensor, weight: torch.Tensor,
                bias: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """:func:`sglang_domino.kernels.cpu_linear.fast_linear` for an SGLang layer: a packed copy is kept with the
    weight (:func:`~sglang_domino.kernels.cpu_linear.weight_owner`, shared with Domino's drafting for the lm_head)
    and makes SGLang refuse online weight updates for ``module``. None = upstream's product."""
    return cpu_linear.fast_linear(cpu_linear.weight_owner(weight), x, weight, bias,
                                  on_new_copy=_refuse_updates_once_packed(module))


def _linear_hook_weight(layer: Any) -> Optional[torch.Tensor]:
    """The weight :func:`unquantized_linear_apply` multiplies by itself, or None where upstream's code runs (no
    tensor weight, an AMX-packed layer)."""
    from sglang.srt.utils.common import use_intel_amx_backend

    weight = getattr(layer, "weight", None)
    return weight if isinstance(weight, torch.Tensor) and not use_intel_amx_backend(layer) else None


def prepack_linears(model: torch.nn.Module) -> int:
    """Pack now every float32 weight of ``model``'s SGLang linear layers that :func:`fast_linear` would pack in
    its first few-row product (a server's first request would pay for it: :func:`~sglang_domino.kernels.cpu_linear.
    prepack`); returns how many were packed. Layers with another quantisation method are left alone."""
    from sglang.srt.layers.quantization.unquant import UnquantizedLinearMethod

    packed = 0
    for module in model.modules():
        weight = _linear_hook_weight(module)
        if weight is not None and isinstance(getattr(module, "quant_method", None), UnquantizedLinearMethod):
            packed += cpu_linear.prepack(cpu_linear.weight_owner(weight), weight,
                                         on_new_copy=_refuse_updates_once_packed(module))
    return packed


# The AROUND hooks (registered by :func:`sglang_domino.plugin.hooks.register_hooks`; targets in the contract).
def unquantized_linear_apply(original, self, layer, x, bias=None, *args, **kwargs):
    """``UnquantizedLinearMethod.apply``: every dense linear of the target (and of SGLang-run drafters)."""
    weight = _linear_hook_weight(layer)
    if not args and not kwargs and weight is not None:
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
    extend of one token after ``seq_len - 1`` cached ones) through :func:`~.attention.sdpa_over_requests`.
    Encoder/cross attention and sliding windows stay upstream's.
    """
    plain = (not args and not kwargs and encoder_lens is None and not is_cross_attn
             and (sliding_window_size is None or sliding_window_size < 0))
    if plain and query.device.type == "cpu" and cpu_linear.enabled():
        requests = ((1, total, total - 1, pool_row)
                    for total, pool_row in zip(seq_lens.tolist(), req_pool_indices.tolist()))
        return sdpa_over_requests(query, output, k_cache, v_cache, req_to_token, requests, scaling=scaling,
                                  enable_gqa=enable_gqa, causal=False)
    return original(self, query, output, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, encoder_lens,
                    scaling=scaling, enable_gqa=enable_gqa, causal=causal, is_cross_attn=is_cross_attn,
                    sliding_window_size=sliding_window_size, *args, **kwargs)


def configure_from_environment() -> None:
    """Apply ``$SGLANG_DOMINO_CPU_FAST_PATHS`` (:mod:`sglang_domino.settings`) in this process. A bad value turns
    the fast paths off with an error in the log -- plain servers keep serving; a Domino server refuses to start
    on it (:mod:`.validate`)."""
    from sglang_domino.settings import SettingsError, environment_settings

    try:
        on = environment_settings().cpu_fast_paths
    except SettingsError as exc:
        logger.error("%s; CPU fast paths off", exc)
        on = False
    cpu_linear.configure(on)
