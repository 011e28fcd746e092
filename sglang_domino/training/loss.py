"""The Domino training objective: teacher-forced head, decayed per-slot weights, base/final mix.

For every supervised slot ``k`` of a block (see :mod:`sglang_domino.training.masks`):

    base_k  = lm_head(z_k)                                   (frozen target lm_head)
    final_k = base_k + embed_proj([z_k | s_k])               for k >= first corrected slot, base_k before
    s_k     = GRU state over the REAL tokens of the block:
                shift_label=True : x[a .. a+k]     (GRU over x[a..a+B−1], state k -> slot k)
                shift_label=False: x[a .. a+k−1]   (GRU over x[a..a+B−2], state k−1 -> slot k)
    w_k     = exp(−(k − offset)/γ)                           offset 0 (shift) / 1 (no shift)
    loss    = (1 − λ)·Σ w·CE(final)/(Σw + 1e-6) + λ·Σ w·CE(base)/(Σw + 1e-6)

CE's target is the label ``x[a+k]`` (one-hot), or with distillation weight α the mix
(1 − α)·one-hot + α·p_target, p_target = softmax(lm_head(target final hidden at a+k−1)): the target's whole
next-token distribution, of which the label is the argmax (self-distilled data). It tells the drafter which
tokens the target nearly chose, which one-hot labels from a small corpus cannot.

The first corrected slot is ``pure_draft_prefix_len`` (shift) or ``1 + pure_draft_prefix_len`` (no shift),
the same slots :func:`sglang_domino.kernels.correction_loop` corrects at inference, with the same GRU states
when the drafted tokens equal the real ones (checked by the tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

# Paper / SpecForge recipe values of the loss-decay γ.
_KNOWN_GAMMAS = ((8, 4.0), (10, 5.0), (16, 7.0))


def default_decay_gamma(block_size: int) -> float:
    """γ for the per-slot weights: 7 for B=16, 5 for B=10, 4 for B=8 (the published recipes).

    Other block sizes: piecewise-linear interpolation through those three points, extended linearly beyond
    them with the end slopes (0.5 per slot below 8, 1/3 per slot above 16), and never below 1.
    """
    b = float(block_size)
    pts = _KNOWN_GAMMAS
    if b <= pts[0][0]:
        (x0, y0), (x1, y1) = pts[0], pts[1]
    elif b >= pts[-1][0]:
        (x0, y0), (x1, y1) = pts[-2], pts[-1]
    else:
        i = max(j for j in range(len(pts) - 1) if pts[j][0] <= b)
        (x0, y0), (x1, y1) = pts[i], pts[i + 1]
    return max(1.0, y0 + (y1 - y0) * (b - x0) / (x1 - x0))


def slot_weights(block_size: int, shift_label: bool, gamma: float, device=None) -> torch.Tensor:
    """w_k = exp(−(k − offset)/γ) -> [B] float32; slot 0 gets 0 when it is not a prediction (shift False)."""
    offset = 0 if shift_label else 1
    k = torch.arange(block_size, dtype=torch.float32, device=device)
    w = torch.exp(-(k - offset).clamp(min=0) / float(gamma))
    if not shift_label:
        w[0] = 0.0
    return w


def lambda_schedule(step: int, total_steps: int, decay_ratio: float = 0.5, lambda0: float = 1.0) -> float:
    """λ = clamp(λ0·(1 − min(step / (total·decay_ratio), 1)), 0, 1); a non-positive horizon gives 0."""
    horizon = float(total_steps) * float(decay_ratio)
    if horizon <= 0:
        return 0.0
    value = float(lambda0) * (1.0 - min(float(step) / horizon, 1.0))
    return min(max(value, 0.0), 1.0)


def first_corrected_slot(shift_label: bool, pure_draft_prefix_len: int) -> int:
    return pure_draft_prefix_len if shift_label else 1 + pure_draft_prefix_len


def gru_slot_states(gru: nn.GRU, prefix_embeds: torch.Tensor, shift_label: bool) -> torch.Tensor:
    """Teacher-forced GRU state used by each slot: prefix_embeds [R, B, H] (embeddings of x[a..a+B−1]) -> [R, B, G].

    shift_label True: slot k uses the state after x[a..a+k]. False: slot k uses the state after x[a..a+k−1]
    (slot 0 gets zeros; it is never corrected).
    """
    r, b, _ = prefix_embeds.shape
    dtype = gru.weight_ih_l0.dtype
    with torch.autocast(prefix_embeds.device.type, enabled=False):
        if shift_label:
            return gru(prefix_embeds.to(dtype))[0]
        out = gru(prefix_embeds[:, : b - 1].to(dtype))[0]
        return torch.cat((out.new_zeros(r, 1, out.shape[-1]), out), dim=1)


def head_correction(embed_proj: nn.Module, z: torch.Tensor, states: torch.Tensor,
                    vocab_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """embed_proj([z | s]) -> [..., V], or only the columns ``vocab_ids`` [V'] -> [..., V']."""
    x = torch.cat((z, states.to(z.dtype)), dim=-1)
    if vocab_ids is None:
        return embed_proj(x)
    low_rank = embed_proj[1](embed_proj[0](x))
    return F.linear(low_rank, embed_proj[2].weight.index_select(0, vocab_ids))


@dataclass(frozen=True)
class LossVocab:
    """The vocabulary the training loss is computed over: ``ids`` [V'] sorted token ids, ``remap`` [V] the
    position of every token id in ``ids`` (−1 outside).

    Why: on CPU the vocabulary-sized work (lm_head GEMM, log-softmax, their backward, argmax, dtype casts)
    is most of a training step, and self-distilled data uses a small part of the 49k vocabulary. The model
    itself is unchanged and serves over the full vocabulary; tokens outside ``ids`` simply get no gradient
    (SpecForge's EAGLE-3 recipe goes further and drafts from a reduced vocabulary only)."""

    ids: torch.Tensor
    remap: torch.Tensor

    @classmethod
    def from_token_ids(cls, token_ids: torch.Tensor, vocab_size: int) -> "LossVocab":
        ids = torch.unique(token_ids.reshape(-1).to(torch.int64))
        if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
            raise ValueError(f"loss vocabulary ids must be in [0, {vocab_size}), got {ids.numel()} ids")
        remap = torch.full((vocab_size,), -1, dtype=torch.int64)
        remap[ids] = torch.arange(ids.numel())
        return cls(ids, remap)

    def __len__(self) -> int:
        return int(self.ids.numel())


def teacher_forced_logits(
    drafter,
    draft_hidden: torch.Tensor,
    block_tokens: torch.Tensor,
    embed_weight: torch.Tensor,
    lm_head_weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Final and base logits of every slot of R blocks, with the head fed the real tokens.

    draft_hidden [R, B, H]; block_tokens [R, B] = x[a .. a+B−1] -> (final [R, B, V], base [R, B, V]).
    Slots before the first corrected slot (and every slot of a head-less drafter) have final == base.
    """
    base = F.linear(draft_hidden, lm_head_weight.to(draft_hidden.dtype))
    if not drafter.use_head:
        return base, base
    cfg = drafter.config
    start = first_corrected_slot(cfg.shift_label, cfg.pure_draft_prefix_len)
    states = gru_slot_states(drafter.prefix_gru, F.embedding(block_tokens, embed_weight), cfg.shift_label)
    corr = head_correction(drafter.embed_proj, draft_hidden[:, start:], states[:, start:])
    final = torch.cat((base[:, :start], base[:, start:] + corr.to(base.dtype)), dim=1)
    return final, base


def soft_label_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, teacher_probs: Optional[torch.Tensor],
                             distill_weight: float) -> torch.Tensor:
    """Per-row CE of logits [R, V] against (1 − α)·one-hot(labels [R]) + α·teacher_probs [R, V] -> [R].

    α = 0 (or no teacher) is ``F.cross_entropy``. With α > 0 the minimum is the teacher's entropy, not 0."""
    if teacher_probs is None or distill_weight <= 0:
        return F.cross_entropy(logits, labels, reduction="none")
    log_probs = logits.log_softmax(dim=-1)
    hard = -log_probs.gather(1, labels[:, None]).squeeze(1)
    soft = -(teacher_probs * log_probs).sum(dim=-1)
    return (1.0 - distill_weight) * hard + distill_weight * soft


def accept_length(correct: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Consecutive correct predictions from the first slot, per block: [R, B] bool x2 -> [R] float.

    Slots that are not valid (slot 0 without shift, unsupervised labels) neither count nor break the run
    (SpecForge's ``compute_accept_len``).
    """
    run = (correct | ~valid).long().cumprod(dim=1) * valid.long()
    return run.sum(dim=1).float()


def domino_loss(
    drafter,
    draft_hidden: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor,
    prefix_ids: torch.Tensor,
    embed_weight: torch.Tensor,
    lm_head_weight: torch.Tensor,
    *,
    lam: float,
    gamma: float,
    loss_vocab: Optional[LossVocab] = None,
    teacher_hidden: Optional[torch.Tensor] = None,
    distill_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted base/final CE of all supervised slots, plus metrics.

    Args:
        draft_hidden: [N, W, B, H] backbone output per block slot.
        labels, valid: [N, W, B] from :func:`~sglang_domino.training.masks.gather_labels`.
        prefix_ids: [N, W, B] the real tokens x[a .. a+B−1] (teacher-forced GRU inputs).
        embed_weight, lm_head_weight: the frozen target's [V, H] matrices (lm_head may be a bf16 copy).
        lam: the base-loss weight λ; gamma: loss-decay γ.
        loss_vocab: compute the softmaxes over these tokens only (every label must be one of them); then
            ``lm_head_weight`` is the full [V, H] matrix and only its ``loss_vocab.ids`` rows are used, and the
            accuracy metrics are argmaxes over that vocabulary.
        teacher_hidden: [N, W, B, H] the target's final hidden state predicting each slot's label
            (:func:`~sglang_domino.training.masks.teacher_hidden_for_slots`); with ``distill_weight`` α > 0 the
            CE targets become (1 − α)·one-hot + α·softmax(teacher logits) over the same vocabulary.

    Only the supervised slots go through the vocabulary projections (the dominant cost). Metrics:
    ``accept_len``/``base_accept_len`` are mean (consecutive correct + 1) over blocks with a supervised slot,
    i.e. tokens per verify step including the bonus, like SpecForge. That mean over uniformly placed anchors
    overstates the τ of decoding, which starts a block wherever the last one stopped and so spends its steps in
    the hard stretches (a stretch of length L accepted a tokens at a time costs L/a steps): decoding's τ is
    about the *harmonic* mean, 1 / ``inv_accept_len`` (``base_inv_accept_len`` without the head).
    """
    n, w, b, h = draft_hidden.shape
    cfg = drafter.config
    device = draft_hidden.device
    weights = valid.float() * slot_weights(b, cfg.shift_label, gamma, device=device)
    # Rows = supervised slots, uncorrected ones first, then corrected ones: each group gets its own GEMMs, so no
    # index/scatter op ever touches a vocabulary-sized tensor (those are slow on CPU).
    start = first_corrected_slot(cfg.shift_label, cfg.pure_draft_prefix_len) if drafter.use_head else b
    slot = torch.arange(b, device=device).repeat(n * w)
    flat_valid = valid.reshape(-1)
    rows_u = (flat_valid & (slot < start)).nonzero().squeeze(1)
    rows_c = (flat_valid & (slot >= start)).nonzero().squeeze(1)
    rows = torch.cat((rows_u, rows_c))
    nu = rows_u.numel()
    flat_hidden = draft_hidden.reshape(-1, h)
    z_u, z_c = flat_hidden.index_select(0, rows_u), flat_hidden.index_select(0, rows_c)
    y = labels.reshape(-1).index_select(0, rows)
    vocab_ids = None
    if loss_vocab is not None:
        vocab_ids = loss_vocab.ids.to(device)
        lm_head_weight = lm_head_weight.index_select(0, vocab_ids)
        y = loss_vocab.remap.to(device).index_select(0, y)
        if bool((y < 0).any()):
            raise ValueError("a label is outside the loss vocabulary (build it from the training tokens)")
    wt = weights.reshape(-1).index_select(0, rows)
    probs_u = probs_c = None
    if teacher_hidden is not None and distill_weight > 0:
        with torch.no_grad():
            th = teacher_hidden.reshape(-1, teacher_hidden.shape[-1]).index_select(0, rows)
            teacher_probs = F.linear(th.to(z_u.dtype), lm_head_weight).float().softmax(dim=-1)
            probs_u, probs_c = teacher_probs[:nu], teacher_probs[nu:]
    base_u = F.linear(z_u, lm_head_weight).float()
    base_c = F.linear(z_c, lm_head_weight).float()
    ce_base_u = soft_label_cross_entropy(base_u, y[:nu], probs_u, distill_weight)
    ce_base_c = soft_label_cross_entropy(base_c, y[nu:], probs_c, distill_weight)
    final_c = base_c
    ce_final_c = ce_base_c
    if drafter.use_head and rows_c.numel():
        states = gru_slot_states(
            drafter.prefix_gru, F.embedding(prefix_ids.reshape(n * w, b), embed_weight), cfg.shift_label
        )
        s_c = states.reshape(-1, states.shape[-1]).index_select(0, rows_c)
        final_c = base_c + head_correction(drafter.embed_proj, z_c, s_c, vocab_ids).float()
        ce_final_c = soft_label_cross_entropy(final_c, y[nu:], probs_c, distill_weight)
    ce_base = torch.cat((ce_base_u, ce_base_c))
    ce_final = torch.cat((ce_base_u, ce_final_c))
    den = wt.sum() + 1e-6
    base_loss = (ce_base * wt).sum() / den
    final_loss = (ce_final * wt).sum() / den
    loss = (1.0 - lam) * final_loss + lam * base_loss

    with torch.no_grad():
        count = float(rows.numel())
        base_pred_u = base_u.argmax(-1)
        pred = torch.cat((base_pred_u, final_c.argmax(-1)))
        base_pred = torch.cat((base_pred_u, base_c.argmax(-1)))
        hit, base_hit = pred == y, base_pred == y
        blocks_valid = valid.reshape(n * w, b)
        has_slot = blocks_valid.any(dim=1)
        num_blocks = max(int(has_slot.sum()), 1)

        def tokens_per_step(hits: torch.Tensor) -> torch.Tensor:
            correct = torch.ones(n * w * b, dtype=torch.bool, device=device)
            correct[rows] = hits
            return accept_length(correct.view(n * w, b), blocks_valid) + 1.0

        def block_mean(per_block: torch.Tensor) -> float:
            return float((per_block * has_slot).sum()) / num_blocks

        steps, base_steps = tokens_per_step(hit), tokens_per_step(base_hit)

        metrics = {
            "loss": float(loss.detach()),
            "final_loss": float(final_loss.detach()),
            "base_loss": float(base_loss.detach()),
            "accuracy": float(hit.sum()) / max(count, 1.0),
            "base_accuracy": float(base_hit.sum()) / max(count, 1.0),
            "accept_len": block_mean(steps),
            "base_accept_len": block_mean(base_steps),
            "inv_accept_len": block_mean(steps.reciprocal()),
            "base_inv_accept_len": block_mean(base_steps.reciprocal()),
            "lambda": float(lam),
            "num_slots": count,
            "num_blocks": float(has_slot.sum()),
        }
    return loss, metrics


__all__ = [
    "LossVocab",
    "accept_length",
    "default_decay_gamma",
    "domino_loss",
    "first_corrected_slot",
    "gru_slot_states",
    "head_correction",
    "lambda_schedule",
    "slot_weights",
    "soft_label_cross_entropy",
    "teacher_forced_logits",
]
