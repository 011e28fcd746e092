"""Fused correction argmax / sampling statistics against the fp32 eager oracle."""

from __future__ import annotations

import pytest
import torch
from kernel_env import triton_ready  # noqa: F401  (first: picks the interpreter before triton loads)
import torch.nn.functional as F

from sglang_domino.kernels.reference import correction_logits

pytestmark = pytest.mark.usefixtures("triton_ready")


def _problem(n: int, v: int, hdim: int = 24, g: int = 16, r: int = 12, seed: int = 0, base_scale: float = 2.0):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n, v, generator=gen) * base_scale
    z = torch.randn(n, hdim, generator=gen)
    h = torch.randn(n, g, generator=gen)
    w1 = torch.randn(r, hdim + g, generator=gen) * 0.3
    w2 = torch.randn(v, r, generator=gen) * 0.5
    return base, z, h, w1, w2


def _oracle(base, z, h, w1, w2) -> torch.Tensor:
    """base + W2 · SiLU(W1 · [z | h]) in fp32."""
    return base.float() + correction_logits(z.float(), h.float(), w1.float(), w2.float())


def _on(dev, *ts):
    return [t.to(dev) for t in ts]


@pytest.mark.parametrize("prune", [False, True])
@pytest.mark.parametrize(
    "n,v,block_v",
    [(1, 200, 64), (4, 200, 64), (3, 1000, None), (2, 333, 16), (1, 17, 16)],  # V never a tile multiple
)
def test_argmax_matches_fp32_oracle(triton_ready, prune: bool, n: int, v: int, block_v) -> None:
    from sglang_domino.kernels.triton_correction import fused_correction_argmax

    base, z, h, w1, w2 = _problem(n, v, seed=n * 1000 + v)
    ref = _oracle(base, z, h, w1, w2)
    tok, best = fused_correction_argmax(*_on(triton_ready, base, z, h, w1, w2), prune=prune, block_v=block_v)
    assert tok.dtype == torch.int64 and best.dtype == torch.float32
    assert torch.equal(tok.cpu(), torch.argmax(ref, dim=-1))
    torch.testing.assert_close(best.cpu(), ref.max(dim=-1).values, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("prune", [False, True])
def test_ties_go_to_lowest_token_id(triton_ready, prune: bool) -> None:
    """Duplicate W2 rows plus equal base logits give exact ties, inside a tile and across tiles."""
    from sglang_domino.kernels.triton_correction import fused_correction_argmax

    n, v, r, bv = 3, 300, 8, 64
    base, z, h, w1, w2 = _problem(n, v, r=r, seed=7)
    # One-hot rows make the correction exactly u_j in any summation order, kernel and oracle alike.
    onehot = torch.zeros(r)
    onehot[3] = 1.0
    tied = {0: [70, 5, 299], 1: [130, 131, 255], 2: [64, 63]}  # 63|64 straddle a tile boundary
    for row, ids in tied.items():
        for t in ids:
            w2[t] = onehot
            base[row, t] = 40.0
    ref = _oracle(base, z, h, w1, w2)
    expected = torch.tensor([5, 130, 63])
    assert torch.equal(torch.argmax(ref, dim=-1), expected)  # the oracle sees the same ties
    tok, _ = fused_correction_argmax(*_on(triton_ready, base, z, h, w1, w2), prune=prune, block_v=bv)
    assert torch.equal(tok.cpu(), expected)


@pytest.mark.parametrize("prune", [False, True])
def test_many_equal_base_logits_zero_correction(triton_ready, prune: bool) -> None:
    from sglang_domino.kernels.triton_correction import fused_correction_argmax

    n, v = 4, 500
    base, z, h, w1, w2 = _problem(n, v, seed=3)
    base = torch.randint(0, 4, (n, v), generator=torch.Generator().manual_seed(1)).float()  # ties everywhere
    w2 = torch.zeros_like(w2)
    tok, best = fused_correction_argmax(*_on(triton_ready, base, z, h, w1, w2), prune=prune, block_v=32)
    assert torch.equal(tok.cpu(), torch.argmax(base, dim=-1))
    assert torch.equal(best.cpu(), base.max(dim=-1).values)


def test_pruning_skips_tiles_and_stays_exact(triton_ready) -> None:
    from sglang_domino.kernels.triton_correction import fused_correction_argmax, prune_keep_fraction

    n, v = 2, 1024
    # Spread-out base logits next to a small correction: most tiles provably cannot win.
    base, z, h, w1, w2 = _problem(n, v, seed=11, base_scale=10.0)
    w2 = w2 * 0.1
    args = _on(triton_ready, base, z, h, w1, w2)
    keep = prune_keep_fraction(*args, block_v=32)
    assert 0.0 < keep < 0.5
    pruned, _ = fused_correction_argmax(*args, prune=True, block_v=32)
    full, _ = fused_correction_argmax(*args, prune=False, block_v=32)
    assert torch.equal(pruned, full)
    assert torch.equal(pruned.cpu(), torch.argmax(_oracle(base, z, h, w1, w2), dim=-1))


def test_masked_vocab_minus_inf(triton_ready) -> None:
    from sglang_domino.kernels.triton_correction import fused_correction_argmax

    n, v = 2, 200
    base, z, h, w1, w2 = _problem(n, v, seed=5)
    base[:, :150] = float("-inf")  # e.g. a grammar mask
    ref = _oracle(base, z, h, w1, w2)
    for prune in (False, True):
        tok, _ = fused_correction_argmax(*_on(triton_ready, base, z, h, w1, w2), prune=prune, block_v=32)
        assert torch.equal(tok.cpu(), torch.argmax(ref, dim=-1))


def test_bf16_inputs_pick_an_fp32_optimal_token(triton_ready) -> None:
    """bf16 weights/activations: the fused result is the fp32 argmax of the bf16 values (with u rounded
    to bf16 as eager does); any disagreement with the oracle must be an fp32-rounding-level near-tie."""
    from sglang_domino.kernels.triton_correction import fused_correction_argmax

    n, v = 3, 400
    base, z, h, w1, w2 = (t.bfloat16() for t in _problem(n, v, seed=9))
    u = F.silu(F.linear(torch.cat((z.float(), h.float()), -1), w1.float())).bfloat16().float()
    ref = base.float() + F.linear(u, w2.float())
    tok, best = fused_correction_argmax(*_on(triton_ready, base, z, h, w1, w2), block_v=64)
    tok = tok.cpu()
    picked = ref.gather(1, tok[:, None])[:, 0]
    assert ((ref.max(dim=-1).values - picked) <= 1e-3).all()
    torch.testing.assert_close(best.cpu(), ref.max(dim=-1).values, atol=1e-2, rtol=1e-3)


def test_shape_errors(triton_ready) -> None:
    from sglang_domino.kernels.triton_correction import fused_correction_argmax

    base, z, h, w1, w2 = _on(triton_ready, *_problem(2, 100))
    with pytest.raises(ValueError):
        fused_correction_argmax(base, z, h, w1, w2[:-1])
    with pytest.raises(ValueError):
        fused_correction_argmax(base, z, h, w1, w2, block_v=48)


@pytest.mark.parametrize("temperature", [1.0, 0.6, "tensor"])
def test_sample_stats_exact_logsumexp_and_gumbel_token(triton_ready, temperature) -> None:
    from sglang_domino.kernels.triton_correction import fused_correction_sample_stats, gumbel_from_uniform

    n, v = 3, 333
    base, z, h, w1, w2 = _problem(n, v, seed=21)
    temps = torch.tensor([0.5, 1.0, 1.7]) if temperature == "tensor" else torch.full((n,), float(temperature))
    scaled = _oracle(base, z, h, w1, w2) / temps[:, None]
    unif = torch.rand(n, v, generator=torch.Generator().manual_seed(2)).clamp(1e-7, 1 - 1e-7)
    t_arg = temps.to(triton_ready) if temperature == "tensor" else float(temperature)
    st = fused_correction_sample_stats(*_on(triton_ready, base, z, h, w1, w2), t_arg,
                                       uniform_noise=unif.to(triton_ready), block_v=64)
    torch.testing.assert_close(st.logsumexp.cpu(), torch.logsumexp(scaled, dim=-1), atol=2e-5, rtol=1e-6)
    expected = torch.argmax(scaled + gumbel_from_uniform(unif), dim=-1)
    assert torch.equal(st.token_ids.cpu(), expected)
    ref_logp = torch.log_softmax(scaled, dim=-1).gather(1, expected[:, None])[:, 0]
    torch.testing.assert_close(st.token_logprob.cpu(), ref_logp, atol=2e-5, rtol=1e-5)


def test_seeded_sampling_follows_the_softmax(triton_ready) -> None:
    """Philox noise in the kernel: many identical rows with distinct seeds sample softmax(l / T)."""
    from sglang_domino.kernels.triton_correction import fused_correction_sample_stats

    rows, v, temp = 3000, 8, 0.8
    base, z, h, w1, w2 = _problem(1, v, seed=4, base_scale=1.0)
    probs = torch.softmax(_oracle(base, z, h, w1, w2)[0] / temp, dim=-1)
    rep = lambda t: t.expand(rows, -1).contiguous()  # noqa: E731
    seeds = torch.arange(rows, dtype=torch.int64) * 7919 + 12345
    args = _on(triton_ready, rep(base), rep(z), rep(h), w1, w2)
    st = fused_correction_sample_stats(*args, temp, seeds=seeds.to(triton_ready))
    freq = torch.bincount(st.token_ids.cpu(), minlength=v).float() / rows
    sigma = (probs * (1 - probs) / rows).sqrt()
    assert ((freq - probs).abs() <= 5 * sigma + 1e-3).all(), (freq, probs)
    again = fused_correction_sample_stats(*args, temp, seeds=seeds.to(triton_ready))
    assert torch.equal(again.token_ids, st.token_ids)  # same seeds, same draws
    torch.testing.assert_close(st.token_logprob.cpu(), probs.log()[st.token_ids.cpu()], atol=2e-5, rtol=1e-5)
