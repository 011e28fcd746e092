"""The reference rollout: exact full-vocabulary Domino drafting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import random_drafter

from sglang_domino import SamplingParams, greedy_rollout, sampling_rollout
from sglang_domino.rollout import proposal_hidden

V, H = 96, 64


def _inputs(batch: int, block: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    embedding = torch.nn.Embedding(V, H)
    with torch.no_grad():
        embedding.weight.copy_(torch.randn(V, H, generator=g))
    lm_head = torch.randn(V, H, generator=g) * 0.3
    draft_hidden = torch.randn(batch, block, H, generator=g)
    bonus = torch.randint(0, V, (batch,), generator=g)
    return embedding, lm_head, draft_hidden, bonus


def _head_matters(drafter, draft_hidden, bonus, embedding, lm_head) -> bool:
    """True when the correction changes at least one drafted token (otherwise the oracle test is vacuous)."""
    z = proposal_hidden(draft_hidden, drafter.config.shift_label)
    base_only = torch.argmax(F.linear(z, lm_head), dim=-1)
    return not torch.equal(base_only, greedy_rollout(drafter, draft_hidden, bonus, embedding.weight, lm_head))


@pytest.mark.parametrize("shift_label", [True, False])
@pytest.mark.parametrize("batch", [1, 5])
def test_greedy_rollout_matches_upstream_sglang(shift_label: bool, batch: int) -> None:
    """Upstream domino_greedy_rollout (candidate_pool_size=0, pure torch, CPU) is an independent oracle."""
    from sglang.srt.speculative.domino_utils import domino_greedy_rollout

    drafter = random_drafter(seed=3, scale=30.0, shift_label=shift_label, pure_draft_prefix_len=1)
    embedding, lm_head, draft_hidden, bonus = _inputs(batch, drafter.config.block_size)
    ours = greedy_rollout(drafter, draft_hidden, bonus, embedding.weight, lm_head)
    upstream = domino_greedy_rollout(
        draft_hidden=draft_hidden, bonus_tokens=bonus, target_embedding=embedding, lm_head_weight=lm_head,
        prefix_gru=drafter.prefix_gru, embed_proj=drafter.embed_proj, vocab_size=V, shift_label=shift_label,
        candidate_pool_size=0, in_cuda_graph=False,
    )
    assert ours.shape == (batch, drafter.config.block_size - 1)
    assert ours.dtype == torch.long
    assert torch.equal(ours, upstream)
    assert _head_matters(drafter, draft_hidden, bonus, embedding, lm_head)


@pytest.mark.parametrize("prefix_len", [0, 1, 2, 5])
@pytest.mark.parametrize("shift_label", [True, False])
def test_rollout_is_consistent_with_teacher_forced_head(prefix_len: int, shift_label: bool) -> None:
    """Re-derive every drafted token the way training scores them: a full-sequence nn.GRU over
    [bonus, d_0, ...] (teacher forcing on the drafted tokens) and argmax of base + correction,
    base only for slots below pure_draft_prefix_len. Any pure_draft_prefix_len is allowed (upstream: 1 only)."""
    drafter = random_drafter(seed=5, scale=30.0, shift_label=shift_label, pure_draft_prefix_len=prefix_len)
    embedding, lm_head, draft_hidden, bonus = _inputs(4, drafter.config.block_size, seed=7)
    tokens = greedy_rollout(drafter, draft_hidden, bonus, embedding.weight, lm_head)
    z = proposal_hidden(draft_hidden, shift_label)
    base = F.linear(z, lm_head)
    prev = torch.cat((bonus[:, None], tokens[:, :-1]), dim=1)
    gru_states, _ = drafter.prefix_gru(embedding(prev))  # state after consuming prev[..k] is row k
    corrected = base + drafter.embed_proj(torch.cat((z, gru_states), dim=-1))
    expected = torch.where(
        torch.arange(tokens.shape[1])[None, :] < prefix_len,
        torch.argmax(base, dim=-1),
        torch.argmax(corrected, dim=-1),
    )
    assert torch.equal(tokens, expected)


def test_backbone_only_drafts_base_argmax() -> None:
    drafter = random_drafter(seed=2, scale=30.0)
    embedding, lm_head, draft_hidden, bonus = _inputs(3, drafter.config.block_size)
    base_argmax = torch.argmax(F.linear(proposal_hidden(draft_hidden, True), lm_head), dim=-1)
    drafter.drop_head()
    assert torch.equal(greedy_rollout(drafter, draft_hidden, bonus, embedding.weight, lm_head), base_argmax)


def test_sampling_rollout_returns_the_distributions_it_drew_from() -> None:
    drafter = random_drafter(seed=4, scale=3.0)
    embedding, lm_head, draft_hidden, bonus = _inputs(6, drafter.config.block_size)
    params = SamplingParams.uniform(6, temperature=0.7, top_k=20, top_p=0.9)
    tokens, probs = sampling_rollout(drafter, draft_hidden, bonus, embedding.weight, lm_head, params,
                                     torch.Generator().manual_seed(0))
    assert tokens.shape == (6, 7) and probs.shape == (6, 7, V)
    assert torch.allclose(probs.sum(-1), torch.ones(6, 7))
    chosen = probs.gather(2, tokens[..., None]).squeeze(-1)
    assert bool((chosen > 0).all())  # every draft lies in its own filtered support
    assert bool(((probs > 0).sum(-1) <= 20).all())  # top-k honoured


def test_sampled_drafts_come_from_the_scaled_temperature() -> None:
    """With scale s the drafts are drawn from (and returned with) the filtered softmax at T·s: the returned
    probabilities of slot 0 equal filtered_probs of its corrected logits at that temperature, and s < 1 sharpens."""
    from sglang_domino.sampling import filtered_probs

    drafter = random_drafter(seed=4, scale=3.0)
    embedding, lm_head, draft_hidden, bonus = _inputs(4, drafter.config.block_size)
    params = SamplingParams.uniform(4, temperature=0.7, top_p=0.95)
    _, probs_1 = sampling_rollout(drafter, draft_hidden, bonus, embedding.weight, lm_head, params,
                                  torch.Generator().manual_seed(0), draft_temperature_scale=1.0)
    _, probs_s = sampling_rollout(drafter, draft_hidden, bonus, embedding.weight, lm_head, params,
                                  torch.Generator().manual_seed(0), draft_temperature_scale=0.5)
    # Slot 0's corrected logits do not depend on what was drawn: recover them (up to a per-row constant) from the
    # unfiltered softmax at T = 1, then apply T·s = 0.35 with the same top-p.
    full = sampling_rollout(drafter, draft_hidden, bonus, embedding.weight, lm_head,
                            SamplingParams.uniform(4, temperature=1.0), torch.Generator().manual_seed(0),
                            draft_temperature_scale=1.0)[1][:, 0]
    logits_0 = torch.log(full)
    expected = filtered_probs(logits_0, SamplingParams.uniform(4, temperature=0.35, top_p=0.95))
    assert torch.allclose(probs_s[:, 0], expected, atol=1e-5)
    assert bool((probs_s.amax(-1) >= probs_1.amax(-1) - 1e-6).all())  # sharper
    with pytest.raises(ValueError, match="finite number > 0"):
        sampling_rollout(drafter, draft_hidden, bonus, embedding.weight, lm_head, params, draft_temperature_scale=0.0)


def test_draft_temperature_scale_resolution() -> None:
    from sglang_domino import rollout
    from sglang_domino.settings import DRAFT_TEMPERATURE_SCALE_ENV, EnvSettings, SettingsError

    assert rollout.resolve_draft_temperature_scale() == 0.6
    assert rollout.resolve_draft_temperature_scale(1.0) == 1.0
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="finite number > 0"):
            rollout.resolve_draft_temperature_scale(bad)
    # The server's switch, parsed once per process by sglang_domino.settings.
    assert EnvSettings.from_environ({}).draft_temperature_scale == 0.6
    assert EnvSettings.from_environ({DRAFT_TEMPERATURE_SCALE_ENV: " 0.8 "}).draft_temperature_scale == 0.8
    for bad in ("nan", "-1", "inf", "0", "sharp"):
        with pytest.raises(SettingsError, match=f"{DRAFT_TEMPERATURE_SCALE_ENV}='{bad}'"):
            EnvSettings.from_environ({DRAFT_TEMPERATURE_SCALE_ENV: bad})


def test_sampling_rollout_at_temperature_zero_is_greedy() -> None:
    drafter = random_drafter(seed=4, scale=30.0)
    embedding, lm_head, draft_hidden, bonus = _inputs(3, drafter.config.block_size)
    tokens, probs = sampling_rollout(drafter, draft_hidden, bonus, embedding.weight, lm_head,
                                     SamplingParams.uniform(3, temperature=0.0))
    assert torch.equal(tokens, greedy_rollout(drafter, draft_hidden, bonus, embedding.weight, lm_head))
    assert torch.equal(probs.amax(-1), torch.ones(3, 7))


def test_rollout_rejects_bad_shapes() -> None:
    drafter = random_drafter()
    embedding, lm_head, draft_hidden, bonus = _inputs(2, 8)
    with pytest.raises(ValueError, match=r"\[batch, block, hidden\]"):
        greedy_rollout(drafter, draft_hidden[0], bonus, embedding.weight, lm_head)
    with pytest.raises(ValueError, match="bonus_tokens"):
        greedy_rollout(drafter, draft_hidden, bonus[:1], embedding.weight, lm_head)


def test_draft_logits_dtype_choices(monkeypatch) -> None:
    from sglang_domino import rollout
    from sglang_domino.settings import DRAFT_LOGITS_DTYPE_ENV, EnvSettings, SettingsError

    fp32, bf16 = torch.zeros(4, 2), torch.zeros(4, 2, dtype=torch.bfloat16)
    assert rollout.draft_logits_dtype(fp32, "float32") == torch.float32
    assert rollout.draft_logits_dtype(fp32, "bfloat16") == torch.bfloat16
    assert rollout.draft_logits_dtype(bf16, "auto") == torch.bfloat16  # a bf16 head is never upcast by auto
    for has_units, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(rollout, "cpu_has_bf16_units", lambda: has_units)
        assert rollout.draft_logits_dtype(fp32) == expected  # no choice: auto
    with pytest.raises(ValueError, match="'fp8'"):
        rollout.draft_logits_dtype(fp32, "fp8")
    # The server's switch, parsed once per process by sglang_domino.settings.
    assert EnvSettings.from_environ({DRAFT_LOGITS_DTYPE_ENV: " Float32"}).draft_logits_dtype == "float32"
    assert EnvSettings.from_environ({}).draft_logits_dtype == "auto"
    with pytest.raises(SettingsError, match="SGLANG_DOMINO_DRAFT_LOGITS_DTYPE='fp8'"):
        EnvSettings.from_environ({DRAFT_LOGITS_DTYPE_ENV: "fp8"})


def test_bf16_drafting_head_gives_float32_logits_to_the_correction() -> None:
    """A bf16 copy of the head: the base logits are those of the rounded weights, brought back to the hidden
    states' dtype before the (float32) correction is added -- checked against the eager loop on such logits."""
    from sglang_domino import kernels
    from sglang_domino.rollout import draft_from_hidden, drafting_lm_head

    drafter = random_drafter(seed=4, scale=30.0)
    embedding, lm_head, draft_hidden, bonus = _inputs(3, drafter.config.block_size)
    head_bf16 = drafting_lm_head(lm_head, "bfloat16")
    assert head_bf16.dtype == torch.bfloat16 and drafting_lm_head(lm_head, "float32") is lm_head
    z = proposal_hidden(draft_hidden, drafter.config.shift_label)
    base = F.linear(z.to(torch.bfloat16), head_bf16).float()
    expected, _ = kernels.correction_loop_eager(base, z, bonus, embedding.weight, drafter.head_weights(),
                                                drafter.config.pure_draft_prefix_len)
    got = draft_from_hidden(draft_hidden, bonus, embedding.weight, head_bf16, drafter.head_weights(),
                            shift_label=drafter.config.shift_label,
                            pure_draft_prefix_len=drafter.config.pure_draft_prefix_len)
    assert torch.equal(got.tokens, expected)


def test_seeded_rows_draft_with_the_seeds_noise_and_leave_the_others_alone() -> None:
    """A seeded row's drafts are argmax(log q + G(seed, position)) slot by slot -- the same whatever the generator
    and the other rows -- and the rows without a seed draw from q as before."""
    from sglang_domino.sampling import SeededRows, seeded_choice

    drafter = random_drafter(seed=4, scale=3.0)
    embedding, lm_head, draft_hidden, bonus = _inputs(batch=3, block=8)
    params = SamplingParams.uniform(3, temperature=1.0, top_p=0.95)
    seeded = SeededRows(torch.tensor([1]), torch.tensor([1234]), torch.tensor([40]))

    def run(generator_seed: int):
        return sampling_rollout(drafter, draft_hidden, bonus, embedding.weight, lm_head, params,
                                generator=torch.Generator().manual_seed(generator_seed), draft_temperature_scale=1.0,
                                seeded=seeded)

    (tokens_a, probs_a), (tokens_b, _) = run(0), run(1)
    assert torch.equal(tokens_a[1], tokens_b[1])  # fixed by the seed
    assert not torch.equal(tokens_a[[0, 2]], tokens_b[[0, 2]])  # the others still draw
    expected = seeded_choice(probs_a[1:2], torch.tensor([1234]), (40 + torch.arange(probs_a.shape[1]))[None])
    assert torch.equal(tokens_a[1], expected[0])
