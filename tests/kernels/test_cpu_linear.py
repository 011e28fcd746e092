"""The CPU linear kernels (kernels/cpu_linear.py) compute what F.linear computes (bf16: bit for bit), by the path
measured fastest for the row count; drafting's base logits use them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from sglang_domino.kernels import cpu_linear
from sglang_domino.kernels.cpu_linear import MAX_SMALL_ROWS, applies, fast_linear, linear, packed_linear, small_batch_linear
from sglang_domino.plugin.cpu_fast_paths import configure_from_environment
from sglang_domino.settings import CPU_FAST_PATHS_ENV, SettingsError, environment_settings, parse_switch


pytestmark = pytest.mark.usefixtures("fresh_cpu_fast_paths_switch")


@pytest.mark.parametrize("shape", [(1, 48), (2, 48), (4, 48), (7, 48), (MAX_SMALL_ROWS, 48), (2, 3, 48)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_small_batch_linear_equals_f_linear(shape, with_bias: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x, weight = torch.randn(*shape, generator=g), torch.randn(80, 48, generator=g)
    bias = torch.randn(80, generator=g) if with_bias else None
    got = small_batch_linear(x, weight, bias)
    assert got.shape == (*shape[:-1], 80) and got.is_contiguous()
    torch.testing.assert_close(got, F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)


def test_applies_only_to_float32_or_paying_bf16_cpu_products_without_grad(monkeypatch) -> None:
    w = torch.randn(8, 4)
    assert applies(torch.randn(3, 4), w) and applies(torch.randn(500, 4), w)
    for pays in (False, True):
        monkeypatch.setattr(cpu_linear, "bf16_packing_pays", lambda: pays)
        assert applies(torch.randn(3, 4, dtype=torch.bfloat16), w.bfloat16()) is pays
    assert not applies(torch.randn(3, 4, dtype=torch.bfloat16), w)  # mixed dtypes: F.linear refuses them anyway
    assert not applies(torch.randn(3, 4, dtype=torch.float64), w.double())
    assert not applies(torch.randn(3, 4, device="meta"), w)
    assert not applies(torch.randn(3, 5), w)
    assert not applies(torch.randn(0, 4), w)
    assert not applies(torch.randn(3, 4, requires_grad=True), w)
    with torch.no_grad():
        assert applies(torch.randn(3, 4, requires_grad=True), w)


needs_onednn = pytest.mark.skipif(not cpu_linear.onednn_packing_available(),
                                  reason="this torch build cannot pack weights for oneDNN")


@needs_onednn
@pytest.mark.parametrize("shape", [(3, 48), (4, 48), (33, 48), (300, 48), (2, 5, 48)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_packed_linear_equals_f_linear(shape, with_bias: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x, weight = torch.randn(*shape, generator=g), torch.randn(80, 48, generator=g)
    bias = torch.randn(80, generator=g) if with_bias else None
    module = SimpleNamespace()
    got = packed_linear(module, x, weight, bias)
    assert got.shape == (*shape[:-1], 80)
    torch.testing.assert_close(got, F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_packed_rows_do_not_depend_on_the_rest_of_the_batch() -> None:
    """A request's logits must not change with what it is batched with (verify rows vs a lone decode row)."""
    g = torch.Generator().manual_seed(1)
    x, weight, module = torch.randn(16, 64, generator=g), torch.randn(200, 64, generator=g), SimpleNamespace()
    together = packed_linear(module, x, weight)
    for rows in (slice(0, 3), slice(5, 9), slice(3, 16)):
        assert torch.equal(packed_linear(module, x[rows], weight), together[rows])


def test_fast_linear_picks_the_path_by_rows(monkeypatch) -> None:
    w, module = torch.randn(8, 4), SimpleNamespace()
    calls = []
    monkeypatch.setattr(cpu_linear, "small_batch_linear", lambda *a: calls.append("small") or "small")
    monkeypatch.setattr(cpu_linear, "packed_linear", lambda *a: calls.append("packed") or "packed")
    monkeypatch.setattr(cpu_linear, "onednn_packing_available", lambda: True)
    assert [fast_linear(module, torch.randn(r, 4), w) for r in (1, 2, 3, 500)] == ["small", "small", "packed", "packed"]
    monkeypatch.setattr(cpu_linear, "onednn_packing_available", lambda: False)
    assert fast_linear(module, torch.randn(MAX_SMALL_ROWS, 4), w) == "small"
    assert fast_linear(module, torch.randn(MAX_SMALL_ROWS + 1, 4), w) is None  # upstream's GEMM
    monkeypatch.setattr(cpu_linear, "onednn_packing_available", lambda: True)
    monkeypatch.setattr(cpu_linear, "bf16_packing_pays", lambda: False)
    assert fast_linear(module, torch.randn(3, 4, dtype=torch.bfloat16), w.bfloat16()) is None
    monkeypatch.setattr(cpu_linear, "bf16_packing_pays", lambda: True)  # bf16: packed at every row count
    assert [fast_linear(module, torch.randn(r, 4, dtype=torch.bfloat16), w.bfloat16()) for r in (1, 2, 3)] == \
        ["packed"] * 3


@pytest.mark.parametrize("value, expected", [(None, True), ("1", True), ("on", True), ("0", False), ("off", False)])
def test_switch_values(value, expected: bool) -> None:
    assert parse_switch(CPU_FAST_PATHS_ENV, value) is expected


def test_bad_switch_turns_paths_off_instead_of_failing_a_forward(monkeypatch) -> None:
    with pytest.raises(SettingsError, match="SGLANG_DOMINO_CPU_FAST_PATHS='maybe'"):
        parse_switch(CPU_FAST_PATHS_ENV, "maybe")
    monkeypatch.setenv(CPU_FAST_PATHS_ENV, "maybe")
    assert cpu_linear.enabled() is True
    configure_from_environment()  # what the plugin does in every SGLang process
    assert cpu_linear.enabled() is False


@needs_onednn
def test_packed_weight_is_made_once_per_owner_and_remade_on_a_new_weight() -> None:
    owner, x = SimpleNamespace(), torch.randn(4, 8)
    weight, made = torch.randn(16, 8), []
    first = packed_linear(owner, x, weight, on_new_copy=made.append)
    packed = cpu_linear.packed_weight(owner, weight, made.append)
    assert cpu_linear.packed_weight(owner, weight, made.append) is packed and made == [owner]  # kept
    weight.mul_(2)  # an autograd-visible write bumps the version: repacked
    torch.testing.assert_close(packed_linear(owner, x, weight, on_new_copy=made.append), 2 * first,
                               rtol=1e-5, atol=1e-5)
    assert made == [owner, owner]


@pytest.mark.parametrize("rows", [1, 3, 16])
def test_linear_equals_f_linear_and_packs_the_weight_once(rows: int) -> None:
    """The drafting GEMM: same product as F.linear; the packed copy lives on the weight tensor and is reused."""
    g = torch.Generator().manual_seed(2)
    x, weight = torch.randn(rows, 64, generator=g), torch.randn(300, 64, generator=g)
    torch.testing.assert_close(linear(x, weight), F.linear(x, weight), rtol=1e-5, atol=1e-5)
    if rows > cpu_linear.SMALL_ROWS and cpu_linear.onednn_packing_available():
        packed = cpu_linear.packed_weight(weight, weight)
        linear(x, weight)
        assert cpu_linear.packed_weight(weight, weight) is packed


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 3, 16])
def test_linear_leaves_other_dtypes_to_f_linear(monkeypatch, dtype: torch.dtype, rows: int) -> None:
    """Not float32 (nor bf16 where packing pays): neither fast path runs and no packed copy is made; the product is
    still x · Wᵀ."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a CPU fast path was taken for a {dtype} product")

    monkeypatch.setattr(cpu_linear, "bf16_packing_pays", lambda: False)
    monkeypatch.setattr(cpu_linear, "small_batch_linear", refuse)
    monkeypatch.setattr(cpu_linear, "packed_linear", refuse)
    g = torch.Generator().manual_seed(3)
    x, weight = torch.randn(rows, 64, generator=g).to(dtype), torch.randn(300, 64, generator=g).to(dtype)
    got = linear(x, weight)
    assert got.dtype == dtype and got.shape == (rows, 300)
    by_hand = (x.double()[:, None, :] * weight.double()[None, :, :]).sum(-1)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1.6e-2, atol=2e-2)
    torch.testing.assert_close(got.double(), by_hand, **tol)
    assert not hasattr(weight, "_domino_onednn_weight")


def test_linear_with_the_switch_off_is_f_linear() -> None:
    cpu_linear.configure(False)
    x, weight = torch.randn(3, 8), torch.randn(16, 8)
    assert fast_linear(weight, x, weight) is None
    assert torch.equal(linear(x, weight), F.linear(x, weight))
    assert not hasattr(weight, "_domino_onednn_weight")


@pytest.mark.skipif(not cpu_linear.onednn_packing_available(), reason="this torch build cannot pack weights for oneDNN")
def test_a_full_size_view_shares_its_base_packed_copy() -> None:
    """Drafting's ``lm_head.weight[:vocab]`` and the target's lm_head (the full parameter) pack one copy; a real
    slice (fewer rows) has its own."""
    weight, x = torch.randn(300, 64), torch.randn(3, 64)
    full_view, slice_view = weight[:300], weight[:200]
    assert cpu_linear.weight_owner(full_view) is weight and cpu_linear.weight_owner(slice_view) is slice_view
    linear(x, full_view)
    shared = cpu_linear.packed_weight(weight, weight)
    linear(x, full_view)
    assert cpu_linear.packed_weight(weight, weight) is shared
    torch.testing.assert_close(linear(x, slice_view), F.linear(x, slice_view), rtol=1e-5, atol=1e-5)
    assert cpu_linear.packed_weight(slice_view, slice_view) is not shared


def test_prepack_makes_the_copy_the_first_product_would_make(monkeypatch) -> None:
    """A server packs at start what its first few-row product would pack; nothing for weights no fast path takes,
    nor with the switch off."""
    weight, x = torch.randn(300, 64), torch.randn(3, 64)
    assert cpu_linear.prepack(weight, weight.double()) is False
    if not cpu_linear.onednn_packing_available():
        assert cpu_linear.prepack(weight, weight) is False
        return
    assert cpu_linear.prepack(weight, weight) is True
    packed = cpu_linear.packed_weight(weight, weight)
    torch.testing.assert_close(linear(x, weight), F.linear(x, weight), rtol=1e-5, atol=1e-5)
    assert cpu_linear.packed_weight(weight, weight) is packed  # the product used the copy made ahead
    cpu_linear.configure(False)
    other = torch.randn(300, 64)
    assert cpu_linear.prepack(other, other) is False and not hasattr(other, "_domino_onednn_weight")


needs_bf16_packing = pytest.mark.skipif(not cpu_linear.bf16_packing_pays(),
                                        reason="bf16 packing runs only on a CPU with native bf16 units")


@needs_bf16_packing
@pytest.mark.parametrize("rows", [1, 2, 3, 16, 48])
@pytest.mark.parametrize("with_bias", [False, True])
def test_bf16_packed_product_is_f_linear_bit_for_bit(rows: int, with_bias: bool) -> None:
    """bf16 is switched on only because it changes speed, not numbers: a bf16 server (plain or Domino) gives the
    tokens it gave before, and drafting's bf16 logits are those of ``F.linear`` (SmolLM2's widths)."""
    g = torch.Generator().manual_seed(4)
    for out_features, in_features in ((576, 576), (1536, 576), (576, 1536), (4096, 576)):
        x = torch.randn(rows, in_features, generator=g).bfloat16()
        weight = torch.randn(out_features, in_features, generator=g).bfloat16()
        bias = torch.randn(out_features, generator=g).bfloat16() if with_bias else None
        owner = SimpleNamespace()
        got = fast_linear(owner, x, weight, bias)
        assert got is not None and hasattr(owner, "_domino_onednn_weight")
        assert got.dtype == torch.bfloat16 and torch.equal(got, F.linear(x, weight, bias))


@needs_bf16_packing
def test_bf16_packed_rows_do_not_depend_on_the_rest_of_the_batch() -> None:
    g = torch.Generator().manual_seed(5)
    x, weight, owner = torch.randn(16, 576, generator=g).bfloat16(), torch.randn(300, 576, generator=g).bfloat16(), \
        SimpleNamespace()
    together = fast_linear(owner, x, weight)
    for rows in (slice(0, 1), slice(5, 9), slice(3, 16)):
        assert torch.equal(fast_linear(owner, x[rows], weight), together[rows])


def test_bf16_packing_needs_native_bf16_units(monkeypatch) -> None:
    """Without AVX512-BF16 / AMX-BF16 oneDNN emulates bf16 and nothing was measured there: bf16 stays F.linear's."""
    from sglang_domino import hardware

    monkeypatch.setattr(hardware, "cpu_has_bf16_units", lambda *a: False)
    cpu_linear.bf16_packing_pays.cache_clear()
    try:
        assert cpu_linear.bf16_packing_pays() is False
        assert not applies(torch.randn(3, 8).bfloat16(), torch.randn(16, 8).bfloat16())
    finally:
        cpu_linear.bf16_packing_pays.cache_clear()
