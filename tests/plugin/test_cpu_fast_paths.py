"""The CPU fast-path hooks installed in every SGLang process (plugin/cpu_fast_paths.py) compute what upstream
computes (the kernels themselves: tests/kernels/test_cpu_linear.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from sglang_domino.kernels import cpu_linear
from sglang_domino.plugin import cpu_fast_paths
from sglang_domino.settings import CPU_FAST_PATHS_ENV, environment_settings

pytestmark = pytest.mark.usefixtures("fresh_cpu_fast_paths_switch")


needs_onednn = pytest.mark.skipif(not cpu_linear.onednn_packing_available(),
                                  reason="this torch build cannot pack weights for oneDNN")


@needs_onednn
def test_packed_weight_is_made_once_remade_on_a_new_weight_and_refuses_online_updates() -> None:
    from sglang.srt.model_executor.model_runner_components.weight_updater import (
        _unsupported_derived_weight_cache_error,
    )

    model = torch.nn.Sequential(torch.nn.Linear(8, 16, bias=False))
    layer, x = model[0], torch.randn(4, 8)
    assert _unsupported_derived_weight_cache_error(model) is None
    with torch.no_grad():
        first = cpu_fast_paths.fast_linear(layer, x, layer.weight)
        packed = cpu_linear.packed_weight(layer.weight, layer.weight)
        assert cpu_linear.packed_weight(layer.weight, layer.weight) is packed  # kept, not repacked per call
        error = _unsupported_derived_weight_cache_error(model)
        assert error is not None and f"{CPU_FAST_PATHS_ENV}=0" in error
        layer.weight.mul_(2)  # an autograd-visible write bumps the version: repacked
        torch.testing.assert_close(cpu_fast_paths.fast_linear(layer, x, layer.weight), 2 * first, rtol=1e-5, atol=1e-5)
        layer.weight = torch.nn.Parameter(torch.randn(16, 8))  # another tensor: repacked
        torch.testing.assert_close(cpu_fast_paths.fast_linear(layer, x, layer.weight), F.linear(x, layer.weight),
                                   rtol=1e-5, atol=1e-5)


@needs_onednn
def test_prepack_linears_packs_sglang_linears_only_and_refuses_online_updates() -> None:
    """The Domino worker packs the drafter's SGLang linears at start; other modules (a torch Linear, a layer
    with another quantisation method, a float64 weight; bf16 where its packing does not pay) are left to their first
    product or to upstream."""
    from sglang.srt.layers.quantization.unquant import UnquantizedLinearMethod
    from sglang.srt.model_executor.model_runner_components.weight_updater import (
        _unsupported_derived_weight_cache_error,
    )

    def layer(dtype=torch.float32, method=UnquantizedLinearMethod):
        module = torch.nn.Module()
        module.weight = torch.nn.Parameter(torch.randn(16, 8, dtype=dtype), requires_grad=False)
        module.quant_method = method()
        return module

    model = torch.nn.ModuleDict({"a": layer(), "b": layer(), "bf16": layer(torch.bfloat16),
                                 "f64": layer(torch.float64), "other": layer(method=object),
                                 "torch": torch.nn.Linear(8, 16)})
    packed_names = ("a", "b", "bf16") if cpu_linear.bf16_packing_pays() else ("a", "b")
    assert cpu_fast_paths.prepack_linears(model) == len(packed_names)
    for name in packed_names:
        assert hasattr(model[name].weight, "_domino_onednn_weight")
        assert f"{CPU_FAST_PATHS_ENV}=0" in _unsupported_derived_weight_cache_error(model[name])
    for name in {"bf16", "f64", "other", "torch"} - set(packed_names):
        assert not hasattr(model[name].weight, "_domino_onednn_weight")
        assert _unsupported_derived_weight_cache_error(model[name]) is None
    x = torch.randn(4, 8)
    packed = cpu_linear.packed_weight(model["a"].weight, model["a"].weight)
    torch.testing.assert_close(cpu_fast_paths.fast_linear(model["a"], x, model["a"].weight),
                               F.linear(x, model["a"].weight), rtol=1e-5, atol=1e-5)
    assert cpu_linear.packed_weight(model["a"].weight, model["a"].weight) is packed


def _original(tag: str):
    calls = []

    def original(*args, **kwargs):
        calls.append((args, kwargs))
        return tag

    return original, calls


def test_linear_hook_uses_fast_path_or_defers_to_upstream(monkeypatch) -> None:
    from sglang.srt.layers.quantization.unquant import UnquantizedLinearMethod

    layer = SimpleNamespace(weight=torch.randn(16, 8))
    x = torch.randn(4, 8)
    upstream = UnquantizedLinearMethod.apply(UnquantizedLinearMethod(), layer, x, None)
    original, calls = _original("upstream")
    got = cpu_fast_paths.unquantized_linear_apply(original, None, layer, x, None)
    torch.testing.assert_close(got, upstream, rtol=1e-5, atol=1e-5)
    assert not calls
    # float64 (and bf16 where its packing does not pay), an AMX-packed layer and the switch off: upstream's own
    # code runs.
    f64 = SimpleNamespace(weight=layer.weight.double())
    amx = SimpleNamespace(weight=layer.weight, use_intel_amx_backend=True)
    assert cpu_fast_paths.unquantized_linear_apply(original, None, f64, x.double(), None) == "upstream"
    assert cpu_fast_paths.unquantized_linear_apply(original, None, amx, x, None) == "upstream"
    bf16 = SimpleNamespace(weight=layer.weight.bfloat16())
    monkeypatch.setattr(cpu_linear, "bf16_packing_pays", lambda: False)
    assert cpu_fast_paths.unquantized_linear_apply(original, None, bf16, x.bfloat16(), None) == "upstream"
    monkeypatch.setattr(cpu_linear, "bf16_packing_pays", lambda: True)
    torch.testing.assert_close(cpu_fast_paths.unquantized_linear_apply(original, None, bf16, x.bfloat16(), None),
                               F.linear(x.bfloat16(), bf16.weight))  # bit for bit where it runs: test_cpu_linear
    monkeypatch.setenv(CPU_FAST_PATHS_ENV, "0")
    environment_settings.cache_clear()
    cpu_fast_paths.configure_from_environment()  # what the plugin does when it loads
    assert cpu_fast_paths.unquantized_linear_apply(original, None, layer, x, None) == "upstream"
    assert len(calls) == 4


def test_lm_head_hook_equals_upstream_plain_branch() -> None:
    from sglang.srt.layers.logits_processor import LogitsProcessor

    processor = SimpleNamespace(use_fp32_lm_head=False, use_fp32_lm_head_output=False, rl_on_policy_target=None)
    lm_head = SimpleNamespace(weight=torch.randn(100, 8), quant_method=None)
    hidden = torch.randn(3, 8)
    upstream = LogitsProcessor._compute_lm_head(processor, hidden, lm_head, None)
    got = cpu_fast_paths.compute_lm_head(LogitsProcessor._compute_lm_head, processor, hidden, lm_head, None,
                                         out=torch.empty(3, 100))
    torch.testing.assert_close(got, upstream, rtol=1e-5, atol=1e-5)
    # Other branches stay upstream's: an embedding bias, the fp32-lm_head option.
    original, calls = _original("upstream")
    assert cpu_fast_paths.compute_lm_head(original, processor, hidden, lm_head, torch.zeros(100)) == "upstream"
    fp32_option = SimpleNamespace(**{**vars(processor), "use_fp32_lm_head": True})
    assert cpu_fast_paths.compute_lm_head(original, fp32_option, hidden, lm_head, None) == "upstream"
    assert len(calls) == 2


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_decode_attention_hook_equals_upstream(kv_heads: int) -> None:
    from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend

    g = torch.Generator().manual_seed(1)
    heads, dim, pool = 4, 8, 120
    seq_lens = torch.tensor([17, 1, 40])
    k_cache = torch.randn(pool, kv_heads, dim, generator=g)
    v_cache = torch.randn(pool, kv_heads, dim, generator=g)
    req_to_token = torch.zeros(4, 64, dtype=torch.int32)
    perm = torch.randperm(pool, generator=g)
    used = 0
    for row, n in zip((2, 0, 3), seq_lens.tolist()):
        req_to_token[row, :n] = perm[used : used + n].int()
        used += n
    req_pool_indices = torch.tensor([2, 0, 3])
    query = torch.randn(3, heads, dim, generator=g)
    args = (k_cache, v_cache, req_to_token, req_pool_indices, seq_lens)
    kw = dict(scaling=0.25, enable_gqa=kv_heads != heads)
    expected = TorchNativeAttnBackend._run_sdpa_forward_decode(None, query.clone(), torch.zeros_like(query), *args, **kw)
    got = cpu_fast_paths.sdpa_decode(TorchNativeAttnBackend._run_sdpa_forward_decode, None, query.clone(),
                                     torch.zeros_like(query), *args, **kw)
    assert torch.equal(got, expected)  # the same SDPA over the same keys: bit-identical
    # The next step reuses the length buffers in place: the hook must read the new lengths, not earlier ones.
    seq_lens.sub_(torch.tensor([3, 0, 12]))
    expected = TorchNativeAttnBackend._run_sdpa_forward_decode(None, query.clone(), torch.zeros_like(query), *args, **kw)
    got = cpu_fast_paths.sdpa_decode(TorchNativeAttnBackend._run_sdpa_forward_decode, None, query.clone(),
                                     torch.zeros_like(query), *args, **kw)
    assert torch.equal(got, expected)
    original, calls = _original("upstream")
    assert cpu_fast_paths.sdpa_decode(original, None, query, torch.zeros_like(query), *args,
                                      sliding_window_size=8, **kw) == "upstream"
    assert len(calls) == 1
