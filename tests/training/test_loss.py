"""Training objective and block layout: λ schedule, slot weights, masks, labels, teacher-forced head."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import random_drafter

from sglang_domino.kernels import correction_loop_eager
from sglang_domino.rollout import proposal_hidden
from sglang_domino.training.loss import (
    LossVocab,
    accept_length,
    default_decay_gamma,
    domino_loss,
    first_corrected_slot,
    lambda_schedule,
    slot_weights,
    teacher_forced_logits,
)
from sglang_domino.training.masks import (
    block_input_ids,
    block_positions,
    block_prefix_ids,
    build_block_mask,
    gather_labels,
    sample_anchors,
    teacher_hidden_for_slots,
    valid_anchor_mask,
)


# Tiny tensors: one thread avoids OpenMP spin contention on a shared 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------ schedules
def test_lambda_schedule_values():
    # total 100, decay_ratio 0.5: linear from 1 at step 0 to 0 at step 50, then 0.
    assert lambda_schedule(0, 100) == 1.0
    assert lambda_schedule(25, 100) == pytest.approx(0.5)
    assert lambda_schedule(40, 100) == pytest.approx(0.2)
    assert lambda_schedule(50, 100) == 0.0
    assert lambda_schedule(99, 100) == 0.0
    # decay_ratio 1.0 (Qwen3-8B recipe) and a smaller λ0.
    assert lambda_schedule(50, 100, decay_ratio=1.0) == pytest.approx(0.5)
    assert lambda_schedule(0, 100, decay_ratio=1.0, lambda0=0.3) == pytest.approx(0.3)
    assert lambda_schedule(50, 100, decay_ratio=1.0, lambda0=0.3) == pytest.approx(0.15)
    # clamped to [0, 1]; a zero horizon gives 0.
    assert lambda_schedule(0, 100, lambda0=2.0) == 1.0
    assert lambda_schedule(10, 100, decay_ratio=0.0) == 0.0


def test_default_gamma():
    assert default_decay_gamma(16) == 7.0
    assert default_decay_gamma(10) == 5.0
    assert default_decay_gamma(8) == 4.0
    assert default_decay_gamma(12) == pytest.approx(5.0 + 2.0 / 3.0)  # between 10 and 16
    assert default_decay_gamma(9) == pytest.approx(4.5)
    assert default_decay_gamma(4) == pytest.approx(2.0)  # slope 0.5 below 8
    assert default_decay_gamma(32) == pytest.approx(7.0 + 16.0 / 3.0)  # slope 1/3 above 16
    assert default_decay_gamma(2) >= 1.0


def test_slot_weights_b16_both_offsets():
    gamma = default_decay_gamma(16)
    shifted = slot_weights(16, shift_label=True, gamma=gamma)
    expected = torch.tensor([math.exp(-k / 7.0) for k in range(16)])
    torch.testing.assert_close(shifted, expected)
    assert shifted[0] == 1.0
    plain = slot_weights(16, shift_label=False, gamma=gamma)
    expected = torch.tensor([0.0] + [math.exp(-(k - 1) / 7.0) for k in range(1, 16)])
    torch.testing.assert_close(plain, expected)
    assert plain[1] == 1.0 and plain[0] == 0.0


def test_first_corrected_slot():
    assert first_corrected_slot(True, 1) == 1
    assert first_corrected_slot(False, 1) == 2
    assert first_corrected_slot(True, 0) == 0
    assert first_corrected_slot(False, 0) == 1


# -------------------------------------------------------------------------------------- block layout
def test_block_mask_two_blocks_explicit():
    # Context of 6 positions, B = 3, anchors 2 and 4 (block 0 sees keys 0,1; block 1 sees keys 0..3).
    anchors = torch.tensor([[2, 4]])
    keep = torch.tensor([[True, True]])
    mask = build_block_mask(anchors, keep, context_len=6, block_size=3)
    #                    context 0..5          block0   block1
    row0 = [1, 1, 0, 0, 0, 0] + [1, 1, 1] + [0, 0, 0]
    row1 = [1, 1, 1, 1, 0, 0] + [0, 0, 0] + [1, 1, 1]
    expected = torch.tensor([row0] * 3 + [row1] * 3, dtype=torch.bool)
    assert mask.shape == (1, 6, 12)
    assert torch.equal(mask[0], expected)


def test_block_mask_unused_block_sees_only_itself():
    anchors = torch.tensor([[3, 0]])
    keep = torch.tensor([[True, False]])
    mask = build_block_mask(anchors, keep, context_len=5, block_size=2)
    assert torch.equal(mask[0, 2:, :5], torch.zeros(2, 5, dtype=torch.bool))  # no context
    assert torch.equal(mask[0, 2:, 5:], torch.tensor([[0, 0, 1, 1]] * 2, dtype=torch.bool))
    assert mask.any(dim=-1).all()  # no empty attention row (SDPA would give NaN)


def test_flex_block_mask_gives_the_sdpa_hidden_states():
    """The flex-attention BlockMask (the trainer's CUDA path) encodes build_block_mask's predicate: the same
    backbone output as the dense SDPA mask. Forward only: torch's flex attention has no backward on CPU, so the
    trainer refuses --attention flex there (checked below); gradients of the CUDA path are not tested here."""
    import warnings

    from sglang_domino.training.errors import TrainingError
    from sglang_domino.training.trainer import forward_blocks, resolve_attention

    drafter = random_drafter(3)
    cfg = drafter.config
    gen = torch.Generator().manual_seed(0)
    n, t = 2, 40
    ids = torch.randint(0, cfg.vocab_size - 1, (n, t), generator=gen)
    features = torch.randn(n, t, cfg.num_context_features * cfg.hidden_size, generator=gen)
    embed = torch.randn(cfg.vocab_size, cfg.hidden_size, generator=gen)
    anchors = torch.tensor([[5, 17, 0], [9, 20, 30]])
    keep = torch.tensor([[True, True, False], [True, True, True]])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flex attention warns that it runs unfused without torch.compile
        dense = forward_blocks(drafter, embed, features, ids, anchors, keep, "sdpa")
        flex = forward_blocks(drafter, embed, features, ids, anchors, keep, "flex")
    torch.testing.assert_close(flex, dense, rtol=1e-5, atol=1e-5)
    cpu = torch.device("cpu")
    assert resolve_attention("auto", cpu) == "sdpa" and resolve_attention("auto", torch.device("cuda")) == "flex"
    with pytest.raises(TrainingError, match="no backward pass on CPU"):
        resolve_attention("flex", cpu)


def test_block_inputs_positions_labels():
    x = torch.tensor([[10, 11, 12, 13, 14, 15, 16, 17]])
    lm = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    lengths = torch.tensor([8])
    anchors, keep = torch.tensor([[2, 4]]), torch.tensor([[True, True]])
    assert block_input_ids(x, anchors, 3, mask_token_id=99).tolist() == [[12, 99, 99, 14, 99, 99]]
    assert block_positions(anchors, 3).tolist() == [[2, 3, 4, 4, 5, 6]]
    assert block_prefix_ids(x, anchors, 3).tolist() == [[[12, 13, 14], [14, 15, 16]]]
    # shift_label True: slot k predicts x[a+k+1]; position 7 is not loss-masked.
    labels, valid = gather_labels(x, lm, lengths, anchors, keep, 3, shift_label=True)
    assert labels.tolist() == [[[13, 14, 15], [15, 16, 17]]]
    assert valid.tolist() == [[[True, True, True], [True, True, False]]]
    # shift_label False: slot k predicts x[a+k]; slot 0 (the anchor) is never a prediction.
    labels, valid = gather_labels(x, lm, lengths, anchors, keep, 3, shift_label=False)
    assert labels.tolist() == [[[12, 13, 14], [14, 15, 16]]]
    assert valid.tolist() == [[[False, True, True], [False, True, True]]]


def test_labels_stop_at_sequence_end():
    x = torch.tensor([[5, 6, 7, 8, 0, 0]])  # length 4, then padding
    lm = torch.tensor([[1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    labels, valid = gather_labels(x, lm, torch.tensor([4]), torch.tensor([[1]]), torch.tensor([[True]]), 3, True)
    assert valid.tolist() == [[[True, True, False]]]  # label position 4 is past the end


def test_anchor_sampling():
    lm = torch.zeros(3, 20, dtype=torch.bool)
    lm[0, 4:20] = True  # anchors 4..12 valid (a <= 20 - 8, x[a+1] masked)
    lm[1, 10:14] = True  # too short for any block of 8 inside length 14
    lm[2, 0:20] = True
    lengths = torch.tensor([20, 14, 20])
    valid = valid_anchor_mask(lm, lengths, 8)
    assert valid[0].nonzero().squeeze(1).tolist() == list(range(4, 13))
    assert not valid[1].any()
    g = torch.Generator().manual_seed(0)
    anchors, keep = sample_anchors(lm, lengths, 8, max_blocks=4, generator=g)
    assert anchors.shape == (3, 4)
    assert keep.tolist() == [[True] * 4, [False] * 4, [True] * 4]
    for row in (0, 2):
        picked = anchors[row][keep[row]].tolist()
        assert picked == sorted(set(picked)) and all(valid[row, a] for a in picked)
    again, _ = sample_anchors(lm, lengths, 8, max_blocks=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(anchors, again)
    # No valid anchor anywhere -> width 0 (the trainer skips the batch).
    none, keep_none = sample_anchors(lm[1:2], lengths[1:2], 8, 4, torch.Generator().manual_seed(0))
    assert none.shape == (1, 0) and keep_none.numel() == 0


# ---------------------------------------------------------------------------------------- objective
def test_accept_length():
    correct = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 1], [1, 1, 1, 1], [1, 0, 1, 1]], dtype=torch.bool)
    valid = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    # row 1: slot 0 invalid (not a prediction) neither counts nor breaks the run.
    assert accept_length(correct, valid).tolist() == [2.0, 3.0, 3.0, 1.0]


def test_decoding_tau_is_the_harmonic_mean_of_per_position_accept_lengths():
    """Why validation reports 1 / mean(1 / accept): decoding starts each block where the previous one stopped.

    Per-position accept lengths of an easy stretch (the drafter gets every token) followed by a hard one
    (it gets none): walking them as decoding does gives the harmonic mean over positions, while uniformly
    placed anchors (the arithmetic mean) overstate τ several-fold."""
    b, easy, hard = 16, 160, 160
    accept = [min(b, easy - i) for i in range(easy)] + [1] * hard  # tokens per verify step, bonus included
    pos, steps = 0, 0
    while pos < len(accept):
        pos, steps = pos + accept[pos], steps + 1
    tau = len(accept) / steps
    arithmetic = sum(accept) / len(accept)
    harmonic = len(accept) / sum(1.0 / a for a in accept)
    assert tau == pytest.approx(320 / 170)
    assert abs(harmonic - tau) < 0.15 * tau and arithmetic > 4 * tau


def _head_matters(drafter, draft_hidden, tokens, embed, lm_head) -> bool:
    final, base = teacher_forced_logits(drafter, draft_hidden, tokens, embed, lm_head)
    return bool((final.argmax(-1) != base.argmax(-1)).any())


@pytest.mark.parametrize("shift_label", [True, False])
@pytest.mark.parametrize("prefix", [0, 1, 2])
def test_teacher_forced_head_matches_inference_loop(shift_label, prefix):
    """Fed the tokens the eager correction loop drafted, the teacher-forced head picks the same tokens."""
    drafter = random_drafter(seed=3, scale=6.0, shift_label=shift_label, pure_draft_prefix_len=prefix)
    g = torch.Generator().manual_seed(7)
    v, h, b = drafter.config.vocab_size, drafter.config.hidden_size, drafter.config.block_size
    embed, lm_head = torch.randn(v, h, generator=g), torch.randn(v, h, generator=g) * 0.3
    draft_hidden = torch.randn(5, b, h, generator=g)
    bonus = torch.randint(0, v, (5,), generator=g)
    z = proposal_hidden(draft_hidden, shift_label)
    with torch.no_grad():
        drafts, _ = correction_loop_eager(F.linear(z, lm_head), z, bonus, embed, drafter.head_weights(), prefix)
        block_tokens = torch.cat((bonus[:, None], drafts), dim=1)  # x[a .. a+B-1] when the drafts are right
        final, _ = teacher_forced_logits(drafter, draft_hidden, block_tokens, embed, lm_head)
        assert _head_matters(drafter, draft_hidden, block_tokens, embed, lm_head)
    proposal_slots = slice(0, b - 1) if shift_label else slice(1, b)
    assert torch.equal(final[:, proposal_slots].argmax(-1), drafts)


@pytest.mark.parametrize("shift_label", [True, False])
@pytest.mark.parametrize("use_head", [True, False])
def test_domino_loss_matches_dense_reference(shift_label, use_head):
    """The row-selected loss equals the dense formula over every slot (final/base share weights and normaliser)."""
    overrides = {"shift_label": shift_label}
    if not use_head:
        overrides.update(projector_type=None, gru_hidden_dim=None, emb_dim=None, pure_draft_prefix_len=0)
    drafter = random_drafter(seed=1, **overrides)
    cfg = drafter.config
    g = torch.Generator().manual_seed(2)
    n, w, b, h, v = 2, 3, cfg.block_size, cfg.hidden_size, cfg.vocab_size
    embed, lm_head = torch.randn(v, h, generator=g), torch.randn(v, h, generator=g) * 0.2
    hidden = torch.randn(n, w, b, h, generator=g).requires_grad_()
    labels = torch.randint(0, v, (n, w, b), generator=g)
    valid = torch.rand(n, w, b, generator=g) > 0.3
    valid[1, 2] = False  # an unused block
    if not shift_label:
        valid[..., 0] = False
    prefix = torch.randint(0, v, (n, w, b), generator=g)
    gamma, lam = 4.0, 0.3
    loss, metrics = domino_loss(drafter, hidden, labels, valid, prefix, embed, lm_head, lam=lam, gamma=gamma)

    final, base = teacher_forced_logits(drafter, hidden.detach().reshape(n * w, b, h), prefix.reshape(n * w, b), embed,
                                        lm_head)
    wts = (valid.float() * slot_weights(b, shift_label, gamma)).reshape(-1)
    y = labels.reshape(-1)
    ce_f = F.cross_entropy(final.reshape(-1, v), y, reduction="none")
    ce_b = F.cross_entropy(base.reshape(-1, v), y, reduction="none")
    den = wts.sum() + 1e-6
    expected = (1 - lam) * (ce_f * wts).sum() / den + lam * (ce_b * wts).sum() / den
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    assert metrics["lambda"] == lam
    vm = valid.reshape(-1)
    hits = (final.reshape(-1, v).argmax(-1) == y)[vm].float().mean().item()
    assert metrics["accuracy"] == pytest.approx(hits)
    per_block = accept_length((final.argmax(-1) == labels.reshape(n * w, b)), valid.reshape(n * w, b))
    has = valid.reshape(n * w, b).any(-1)
    assert metrics["accept_len"] == pytest.approx(float((per_block + 1)[has].mean()))
    assert metrics["inv_accept_len"] == pytest.approx(float((per_block + 1)[has].reciprocal().mean()))
    loss.backward()  # gradients reach the backbone output and the head
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    if use_head:
        assert drafter.embed_proj[2].weight.grad is not None
        assert drafter.prefix_gru.weight_ih_l0.grad is not None


@pytest.mark.parametrize("shift_label", [True, False])
def test_loss_vocab_is_the_dense_loss_over_those_columns(shift_label):
    """--loss-vocab data: the same loss with every logit row cut to the chosen token columns (labels remapped);
    the full vocabulary as the loss vocabulary gives exactly the full loss; a label outside is an error."""
    drafter = random_drafter(seed=3, shift_label=shift_label)
    cfg = drafter.config
    g = torch.Generator().manual_seed(4)
    n, w, b, h, v = 2, 2, cfg.block_size, cfg.hidden_size, cfg.vocab_size
    embed, lm_head = torch.randn(v, h, generator=g), torch.randn(v, h, generator=g) * 0.2
    hidden = torch.randn(n, w, b, h, generator=g)
    vocab = LossVocab.from_token_ids(torch.tensor([3, 7, 7, 11, 20, 41, 42, 60, 95]), v)
    assert vocab.ids.tolist() == [3, 7, 11, 20, 41, 42, 60, 95] and int(vocab.remap[41]) == 4
    labels = vocab.ids[torch.randint(0, len(vocab), (n, w, b), generator=g)]
    valid = torch.rand(n, w, b, generator=g) > 0.2
    if not shift_label:
        valid[..., 0] = False
    prefix = torch.randint(0, v, (n, w, b), generator=g)
    kw = dict(lam=0.4, gamma=5.0)
    loss, metrics = domino_loss(drafter, hidden, labels, valid, prefix, embed, lm_head, loss_vocab=vocab, **kw)

    final, base = teacher_forced_logits(drafter, hidden.reshape(n * w, b, h), prefix.reshape(n * w, b), embed, lm_head)
    cols = vocab.ids
    wts = (valid.float() * slot_weights(b, shift_label, kw["gamma"])).reshape(-1)
    y = vocab.remap[labels.reshape(-1)]
    ce_f = F.cross_entropy(final.reshape(-1, v)[:, cols], y, reduction="none")
    ce_b = F.cross_entropy(base.reshape(-1, v)[:, cols], y, reduction="none")
    den = wts.sum() + 1e-6
    expected = 0.6 * (ce_f * wts).sum() / den + 0.4 * (ce_b * wts).sum() / den
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    hits = (final.reshape(-1, v)[:, cols].argmax(-1) == y)[valid.reshape(-1)].float().mean().item()
    assert metrics["accuracy"] == pytest.approx(hits)

    everything = LossVocab.from_token_ids(torch.arange(v), v)
    full, _ = domino_loss(drafter, hidden, labels, valid, prefix, embed, lm_head, **kw)
    same, _ = domino_loss(drafter, hidden, labels, valid, prefix, embed, lm_head, loss_vocab=everything, **kw)
    torch.testing.assert_close(same, full)
    outside = labels.clone()
    outside[valid.nonzero()[0].unbind()] = 0  # token 0 is not in the loss vocabulary
    with pytest.raises(ValueError, match="outside the loss vocabulary"):
        domino_loss(drafter, hidden, outside, valid, prefix, embed, lm_head, loss_vocab=vocab, **kw)


def test_teacher_hidden_for_slots_is_the_position_before_each_label():
    """The target's distribution over a slot's label x[a+k+shift] comes from its hidden state at a+k+shift−1."""
    n, t, b = 2, 20, 4
    positions = torch.arange(t, dtype=torch.float32)[None, :, None].expand(n, t, 3)  # hidden = its own position
    ids = torch.arange(t).expand(n, t)  # token = its position
    anchors = torch.tensor([[2, 9], [5, 14]])
    keep = torch.ones(n, 2, dtype=torch.bool)
    for shift in (True, False):
        labels, _ = gather_labels(ids, torch.ones(n, t), torch.tensor([t, t]), anchors, keep, b, shift)
        got = teacher_hidden_for_slots(positions, anchors, b, shift)
        assert got.shape == (n, 2, b, 3)
        inside = labels < t - 1
        assert torch.equal(got[..., 0][inside] + 1, labels[inside].float())
    clamped = teacher_hidden_for_slots(positions, torch.tensor([[0, 18]]).expand(n, 2), b, False)
    assert float(clamped[0, 0, 0, 0]) == 0.0 and float(clamped[0, 1, 3, 0]) == t - 1  # never out of range


@pytest.mark.parametrize("with_vocab", [False, True])
def test_distill_weight_mixes_the_teacher_distribution_into_the_targets(with_vocab):
    """α > 0: CE against (1 − α)·one-hot + α·softmax(teacher logits) over the loss vocabulary, for the final and
    the base term alike; α = 0 (or no teacher) is exactly the hard-label loss."""
    drafter = random_drafter(seed=5, shift_label=False)
    cfg = drafter.config
    g = torch.Generator().manual_seed(6)
    n, w, b, h, v = 2, 2, cfg.block_size, cfg.hidden_size, cfg.vocab_size
    embed, lm_head = torch.randn(v, h, generator=g), torch.randn(v, h, generator=g) * 0.2
    hidden = torch.randn(n, w, b, h, generator=g)
    teacher = torch.randn(n, w, b, h, generator=g)
    vocab = LossVocab.from_token_ids(torch.randperm(v, generator=g)[: v // 2], v) if with_vocab else None
    pool = vocab.ids if with_vocab else torch.arange(v)
    labels = pool[torch.randint(0, pool.numel(), (n, w, b), generator=g)]
    valid = torch.rand(n, w, b, generator=g) > 0.2
    valid[..., 0] = False
    prefix = torch.randint(0, v, (n, w, b), generator=g)
    kw = dict(lam=0.3, gamma=5.0, loss_vocab=vocab)
    alpha = 0.4
    loss, _ = domino_loss(drafter, hidden, labels, valid, prefix, embed, lm_head, teacher_hidden=teacher,
                          distill_weight=alpha, **kw)

    final, base = teacher_forced_logits(drafter, hidden.reshape(n * w, b, h), prefix.reshape(n * w, b), embed, lm_head)
    cols = pool
    y = labels.reshape(-1)
    y_local = vocab.remap[y] if with_vocab else y
    q = (1 - alpha) * F.one_hot(y_local, cols.numel()).float() + alpha * (
        teacher.reshape(-1, h) @ lm_head[cols].T).softmax(-1)
    ce_f = -(q * final.reshape(-1, v)[:, cols].log_softmax(-1)).sum(-1)
    ce_b = -(q * base.reshape(-1, v)[:, cols].log_softmax(-1)).sum(-1)
    wts = (valid.float() * slot_weights(b, False, kw["gamma"])).reshape(-1)
    den = wts.sum() + 1e-6
    expected = 0.7 * (ce_f * wts).sum() / den + 0.3 * (ce_b * wts).sum() / den
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)

    hard, _ = domino_loss(drafter, hidden, labels, valid, prefix, embed, lm_head, **kw)
    off, _ = domino_loss(drafter, hidden, labels, valid, prefix, embed, lm_head, teacher_hidden=teacher,
                         distill_weight=0.0, **kw)
    torch.testing.assert_close(off, hard)
    assert not torch.allclose(loss, hard)
