"""Chain verification: greedy rule, and lossless speculative sampling checked statistically."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from sglang_domino import SamplingParams, filtered_probs, verify_greedy, verify_sampling
from sglang_domino.sampling import sample_from

# --------------------------------------------------------------------------------------------- greedy


def test_greedy_accepts_the_matching_prefix_and_takes_the_target_bonus() -> None:
    vocab = 10
    target_argmax = torch.tensor([[3, 4, 5, 6], [1, 2, 3, 4], [7, 7, 7, 7]])
    logits = torch.nn.functional.one_hot(target_argmax, vocab).float()
    drafts = torch.tensor([[3, 4, 9], [0, 2, 3], [7, 7, 7]])
    result = verify_greedy(drafts, logits)
    assert result.accept_len.tolist() == [2, 0, 3]
    assert result.bonus.tolist() == [5, 1, 7]
    assert result.emitted(drafts) == [[3, 4, 5], [1], [7, 7, 7, 7]]


def test_greedy_rejects_wrong_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[2, 4, V\] for 3 drafts"):
        verify_greedy(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, 5))


def test_sampling_verify_at_temperature_zero_equals_greedy() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 5, 11, generator=g)
    drafts = torch.randint(0, 11, (64, 4), generator=g)
    drafts[:32] = logits[:32, :4].argmax(-1)  # half the rows fully match
    drafts[32:48, :2] = logits[32:48, :2].argmax(-1)
    one_hot_q = torch.nn.functional.one_hot(drafts, 11).float()
    sampled = verify_sampling(drafts, one_hot_q, logits, SamplingParams.uniform(64, temperature=0.0), g)
    greedy = verify_greedy(drafts, logits)
    assert torch.equal(sampled.accept_len, greedy.accept_len)
    assert torch.equal(sampled.bonus, greedy.bonus)


def test_sampling_verify_with_no_drafts_samples_the_target() -> None:
    """A plain-width step (no drafts, P = 0) on a sampled row: accept nothing, draw the bonus from p itself.

    This is what the adaptive width rule's plain steps send; it used to index a zero-row tensor and kill the
    scheduler on the first sampled request (issue 25)."""
    g = torch.Generator().manual_seed(3)
    logits = torch.tensor([[[2.0, 1.0, 0.0, -1.0, -9.0]]]).expand(4000, 1, 5).contiguous()
    params = SamplingParams.uniform(4000, temperature=1.0, top_k=3)
    result = verify_sampling(torch.empty(4000, 0, dtype=torch.long), torch.empty(4000, 0, 5), logits, params, g)
    assert result.accept_len.tolist() == [0] * 4000
    expected = filtered_probs(logits[:1, 0], SamplingParams.uniform(1, temperature=1.0, top_k=3))[0]
    counts = torch.bincount(result.bonus, minlength=5).double()
    assert counts[expected == 0].sum() == 0
    keep = expected > 0
    assert chisquare(counts[keep].numpy(), (expected[keep].double() * 4000).numpy()).pvalue > 1e-3


# --------------------------------------------------------------------------------- sampling (stats)
#
# A toy "language model" with a bigram target p(x_t | x_{t-1}) and a *different* bigram draft q.
# Each trial drafts P tokens from q, verifies them against p, and records the first two emitted
# tokens (running a second step when the first step emitted one token). Losslessness means the
# emitted pair is distributed as p(x0 | bonus) · p(x1 | x0) under the filtered target distribution.
#
# Bound: Pearson's chi-square goodness of fit over the non-zero cells, p-value > 1e-3. Under the null
# (a correct verifier) the p-value is uniform, so a fixed seed fails with probability 0.1%; the seed is
# fixed, so the test is deterministic. Cells the filtered target gives zero mass must get zero counts
# (top-k/top-p are honoured exactly, not just on average). Power: the same test, applied to the draft's
# own samples, rejects with a p-value < 1e-12 (checked below), so it detects a broken verifier.

VOCAB, DRAFTS, TRIALS = 6, 3, 60_000
PARAM_SETS = {
    "t1": dict(temperature=1.0),
    "t0.8_topk3": dict(temperature=0.8, top_k=3),
    "t1.3_topp0.7": dict(temperature=1.3, top_p=0.7),
    "t1_topk4_topp0.8": dict(temperature=1.0, top_k=4, top_p=0.8),
}


def _bigrams(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(VOCAB, VOCAB, generator=g) * 1.5, torch.randn(VOCAB, VOCAB, generator=g) * 1.5


def _one_step(bonus, target_table, draft_table, params, g, point_mass: bool = False):
    """Draft a chain from q (point_mass: q's argmax, verified as a one-hot q), verify against p; returns
    (emitted tokens [N, P+1] padded with -1, count [N])."""
    prev, drafts, probs = bonus, [], []
    for _ in range(DRAFTS):
        q = filtered_probs(draft_table[prev], params)
        if point_mass:
            q = torch.nn.functional.one_hot(q.argmax(-1), VOCAB).float()
        prev = sample_from(q, g)
        drafts.append(prev)
        probs.append(q)
    drafts_t = torch.stack(drafts, 1)
    target_logits = target_table[torch.cat((bonus[:, None], drafts_t), 1)]  # row j conditions on token j
    result = verify_sampling(drafts_t, torch.stack(probs, 1), target_logits, params, g)
    emitted = torch.full((bonus.shape[0], DRAFTS + 1), -1)
    emitted[:, :DRAFTS] = torch.where(torch.arange(DRAFTS)[None] < result.accept_len[:, None], drafts_t, -1)
    emitted.scatter_(1, result.accept_len[:, None], result.bonus[:, None])
    return emitted, result.accept_len + 1


def _first_two_tokens(params_kw: dict, seed: int = 0, point_mass: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    target_table, draft_table = _bigrams(seed)
    params = SamplingParams.uniform(TRIALS, **params_kw)
    g = torch.Generator().manual_seed(seed + 1)
    bonus = torch.zeros(TRIALS, dtype=torch.long)
    first, count = _one_step(bonus, target_table, draft_table, params, g, point_mass)
    second_step, _ = _one_step(first[:, 0], target_table, draft_table, params, g, point_mass)
    second = torch.where(count > 1, first[:, 1], second_step[:, 0])
    observed = torch.bincount(first[:, 0] * VOCAB + second, minlength=VOCAB * VOCAB).double()
    p0 = filtered_probs(target_table[:1], SamplingParams.uniform(1, **params_kw))[0]
    p1 = filtered_probs(target_table, SamplingParams.uniform(VOCAB, **params_kw))  # row x0 -> p(x1 | x0)
    expected = (p0[:, None] * p1).reshape(-1).double() * TRIALS
    return observed, expected


def _goodness_of_fit(observed: torch.Tensor, expected: torch.Tensor) -> float:
    support = expected > 0
    assert observed[~support].sum() == 0, "a token outside the filtered target support was emitted"
    exp = expected[support] * (observed.sum() / expected[support].sum())  # fp32 probabilities sum to 1 ± 1e-7
    return float(chisquare(observed[support].numpy(), exp.numpy()).pvalue)


@pytest.mark.parametrize("name", list(PARAM_SETS))
def test_speculative_sampling_preserves_the_target_distribution(name: str) -> None:
    observed, expected = _first_two_tokens(PARAM_SETS[name])
    # First token alone (marginal) and the pair (joint) both fit.
    first_obs = observed.view(VOCAB, VOCAB).sum(1)
    first_exp = expected.view(VOCAB, VOCAB).sum(1)
    assert _goodness_of_fit(first_obs, first_exp) > 1e-3
    assert _goodness_of_fit(observed, expected) > 1e-3


@pytest.mark.parametrize("name", ["t1", "t1_topk4_topp0.8"])
def test_point_mass_drafts_preserve_the_target_distribution(name: str) -> None:
    """Greedy drafts verified as point masses (upstream's treatment, our eval baseline) are lossless too."""
    observed, expected = _first_two_tokens(PARAM_SETS[name], point_mass=True)
    assert _goodness_of_fit(observed, expected) > 1e-3


def test_sampled_drafts_from_a_calibrated_drafter_beat_point_masses() -> None:
    """Why drafts are sampled: with q = p every sampled draft is accepted, a greedy point mass only with
    probability p(argmax) -- the gain `sglang-domino eval --temperature T` measures on a real pair."""
    target_table, _ = _bigrams(0)
    params = SamplingParams.uniform(TRIALS, temperature=1.0)
    bonus = torch.zeros(TRIALS, dtype=torch.long)
    _, sampled_count = _one_step(bonus, target_table, target_table, params, torch.Generator().manual_seed(1))
    _, greedy_count = _one_step(bonus, target_table, target_table, params, torch.Generator().manual_seed(1), True)
    assert bool((sampled_count == DRAFTS + 1).all())
    p_first = filtered_probs(target_table[:1], SamplingParams.uniform(1))[0]
    first_accepted = (greedy_count > 1).double().mean()
    assert float(p_first.max()) < 0.9 and float(first_accepted) == pytest.approx(float(p_first.max()), abs=0.01)


def test_the_statistical_test_detects_a_lossy_verifier() -> None:
    """Power check: emitting the draft's own first token (no correction) must fail the same test."""
    target_table, draft_table = _bigrams(0)
    params = SamplingParams.uniform(TRIALS, temperature=1.0)
    g = torch.Generator().manual_seed(1)
    drafts = sample_from(filtered_probs(draft_table[torch.zeros(TRIALS, dtype=torch.long)], params), g)
    observed = torch.bincount(drafts, minlength=VOCAB).double()
    expected = filtered_probs(target_table[:1], SamplingParams.uniform(1))[0].double() * TRIALS
    assert _goodness_of_fit(observed, expected) < 1e-12


def test_filtered_probs_known_answers() -> None:
    """top-k then top-p on the unrenormalised cumulative mass; temperature 0 is the argmax, ties to the lowest id."""
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    probs = filtered_probs(logits, SamplingParams.uniform(1, temperature=1.0, top_k=3, top_p=0.6))
    # cumulative mass before each: 0, .4, .7 -> the third (0.7 > 0.6) is dropped; top-3 keeps the first three.
    assert torch.allclose(probs, torch.tensor([[0.4 / 0.7, 0.3 / 0.7, 0.0, 0.0]]))
    greedy = filtered_probs(torch.tensor([[1.0, 3.0, 3.0]]), SamplingParams.uniform(1, temperature=0.0))
    assert greedy.tolist() == [[0.0, 1.0, 0.0]]  # ties go to the lowest id


def _sglang_filtered(logits: torch.Tensor, temperature, top_k, top_p, min_p) -> torch.Tensor:
    """What SGLang's pytorch sampling backend samples from, by SGLang's own functions: its sampler softmax of
    logits / T, then ``top_k_top_p_min_p_sampling_from_probs_torch``'s filtered weights, put back in token order
    and normalised. logits [N, V], parameters [N] (top_k as SGLang stores it, 2**30 = off) -> [N, V]."""
    from sglang.kernels.ops.sampling import softmax as sglang_softmax
    from sglang.srt.layers.sampler import top_k_top_p_min_p_sampling_from_probs_torch

    probs = sglang_softmax(logits.clone(), temperature[:, None])
    _, weights, order, _ = top_k_top_p_min_p_sampling_from_probs_torch(
        probs, top_k, top_p, min_p, bool((min_p > 0).any()), None, None, return_filtered_probs=True)
    kept = torch.zeros_like(probs).scatter_(-1, order.long(), weights)
    return kept / kept.sum(dim=-1, keepdim=True)


def _mixed_params(n: int, vocab: int, g: torch.Generator) -> SamplingParams:
    """Per-row parameters drawn from values that hit every filter's edges (top_k 1 is how SGLang stores greedy)."""
    from sglang.srt.sampling.sampling_params import TOP_K_ALL

    def pick(values):
        return torch.tensor(values)[torch.randint(0, len(values), (n,), generator=g)]

    return SamplingParams(temperature=pick([0.3, 0.7, 1.0, 1.6]),
                          top_k=pick([1, 2, 7, vocab - 1, vocab, TOP_K_ALL]).long(),
                          top_p=pick([0.05, 0.3, 0.6, 0.9, 1.0]), min_p=pick([0.0, 0.02, 0.1, 0.5, 1.0]))


def test_filtered_probs_is_sglangs_sampler_distribution() -> None:
    """Same support and probabilities as SGLang's own sampler on random logits, every filter mixed per row."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(600, 64, generator=g) * 2
    params = _mixed_params(600, 64, g)
    ours = filtered_probs(logits, params)
    theirs = _sglang_filtered(logits, params.temperature, params.top_k, params.top_p, params.min_p)
    assert torch.equal(ours > 0, theirs > 0), "a token kept by one sampler and dropped by the other"
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)


def test_filtered_probs_is_sglangs_sampler_distribution_on_ties() -> None:
    """Logits with many ties (the filters' boundaries fall inside groups of equal probabilities): the kept
    probabilities, as a multiset, are SGLang's (which of several tied tokens a cut keeps is the sort's choice)."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randint(0, 4, (600, 16), generator=g).float()
    params = _mixed_params(600, 16, g)
    ours = filtered_probs(logits, params)
    theirs = _sglang_filtered(logits, params.temperature, params.top_k, params.top_p, params.min_p)
    assert torch.equal((ours > 0).sum(-1), (theirs > 0).sum(-1)), "different numbers of tokens kept"
    torch.testing.assert_close(ours.sort(dim=-1).values, theirs.sort(dim=-1).values, atol=1e-6, rtol=1e-5)


def test_verify_target_distributions_are_sglangs_per_request() -> None:
    """verify's target rows [N, P+1, V]: every position of request i under request i's parameters, as SGLang."""
    from sglang_domino.verify import target_distributions

    g = torch.Generator().manual_seed(2)
    n, rows, vocab = 50, 4, 32
    logits = torch.randn(n, rows, vocab, generator=g) * 2
    params = _mixed_params(n, vocab, g)
    ours = target_distributions(logits, params)
    per_position = [t.repeat_interleave(rows) for t in (params.temperature, params.top_k, params.top_p, params.min_p)]
    theirs = _sglang_filtered(logits.reshape(n * rows, vocab), *per_position).view(n, rows, vocab)
    assert torch.equal(ours > 0, theirs > 0)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------------- seeded
#
# Seeded rows (``sampling_seed``) take the token argmax(log p + G(seed, position)) at every position. Three
# properties: the emitted chain is the target's own seeded sequence whatever was drafted (so it cannot depend
# on the draft width, the drafter or the batch); across seeds each token follows p exactly (Gumbel-max);
# drafts chosen with the same noise from q = p are always accepted.

from sglang_domino.sampling import SeededRows, gumbel_noise, seeded_choice  # noqa: E402
from sglang_domino.verify import verify_seeded  # noqa: E402


def _seeded_decode(target_table, params, seed: int, steps: int, drafter) -> list[int]:
    """Decode ``steps`` tokens after token 0 with speculative steps whose drafts come from ``drafter``."""
    out, pos = [0], 0  # the bonus (token 0) sits at position 0
    while len(out) < steps + 1:
        drafts = drafter(out[-1], pos)  # [P]
        chain = torch.tensor([out[-1], *drafts])
        result = verify_seeded(torch.tensor([drafts]), target_table[chain][None], params,
                               torch.tensor([seed]), torch.tensor([pos + 1]))
        emitted = result.emitted(torch.tensor([drafts]))[0]
        out += emitted
        pos += len(emitted)
    return out[1 : steps + 1]


def test_seeded_output_does_not_depend_on_the_drafts() -> None:
    target_table, draft_table = _bigrams(5)
    params = SamplingParams.uniform(1, temperature=1.0, top_p=0.9)
    rng = torch.Generator().manual_seed(0)
    reference = _seeded_decode(target_table, params, 77, 40, lambda bonus, pos: [])  # plain-width steps
    random_drafts = lambda bonus, pos: torch.randint(0, VOCAB, (3,), generator=rng).tolist()  # noqa: E731

    def coupled(bonus: int, pos: int) -> list[int]:  # draft from q with the same noise: the rollout's rule
        drafts = []
        for j in range(3):
            q = filtered_probs(draft_table[[bonus]], params)
            bonus = int(seeded_choice(q[:, None], torch.tensor([77]), torch.tensor([[pos + 1 + j]]))[0, 0])
            drafts.append(bonus)
        return drafts

    assert _seeded_decode(target_table, params, 77, 40, random_drafts) == reference
    assert _seeded_decode(target_table, params, 77, 40, coupled) == reference
    assert _seeded_decode(target_table, params, 78, 40, coupled) != reference  # the seed matters


def test_seeded_tokens_follow_the_target_distribution_across_seeds() -> None:
    """4 000 seeds, one verify step of 3 random drafts: the first emitted token ~ p(x | bonus), exactly."""
    target_table, _ = _bigrams(6)
    n = 4000
    params = SamplingParams.uniform(n, temperature=0.8, top_k=4)
    drafts = torch.randint(0, VOCAB, (n, 3), generator=torch.Generator().manual_seed(1))
    logits = target_table[torch.cat((torch.zeros(n, 1, dtype=torch.long), drafts), 1)]
    result = verify_seeded(drafts, logits, params, torch.arange(n) * 7919 - 2**40, torch.full((n,), 11))
    first = torch.where(result.accept_len > 0, drafts[:, 0], result.bonus)
    expected = filtered_probs(target_table[:1], SamplingParams.uniform(1, temperature=0.8, top_k=4))[0].double()
    assert _goodness_of_fit(torch.bincount(first, minlength=VOCAB).double(), expected * n) > 1e-3


def test_gumbel_noise_is_a_pure_function_of_seed_position_and_token() -> None:
    seeds, positions = torch.tensor([3, -(2**63), 2**63 - 1]), torch.tensor([[0, 5], [9, 2**31 + 7], [4, 4]])
    noise = gumbel_noise(seeds, positions, 50)
    assert torch.equal(noise, gumbel_noise(seeds, positions, 50))
    assert torch.equal(noise[1:2], gumbel_noise(seeds[1:2], positions[1:2], 50))  # independent of the batch
    assert torch.equal(noise[2, 0], noise[2, 1])  # row 2 asks for position 4 twice: the same noise
    assert not torch.equal(noise[0, 0], noise[0, 1])
    # Standard Gumbel: mean γ ≈ 0.5772, variance π²/6 ≈ 1.645, over 200 x 1000 draws.
    many = gumbel_noise(torch.arange(200), torch.arange(200)[:, None], 1000)
    assert float(many.mean()) == pytest.approx(0.5772, abs=0.01)
    assert float(many.var()) == pytest.approx(1.645, abs=0.03)


def test_seeded_rows_of_a_batch() -> None:
    assert SeededRows.of_batch([None, None], torch.tensor([4, 9])) is None
    rows = SeededRows.of_batch([None, 5, -3], torch.tensor([4, 9, 12]))
    assert rows.rows.tolist() == [1, 2] and rows.seeds.tolist() == [5, -3] and rows.first_position.tolist() == [9, 12]
