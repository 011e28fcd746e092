"""The one chain-verification rule (greedy and lossless speculative sampling).

A block proposes draft tokens d_0..d_{P−1}; the target, run over [bonus, d_0..d_{P−1}], gives P+1 rows of
logits where row j predicts the token that d_j claims to be and row P the token after a fully accepted block.

* greedy: accept while d_j == argmax(target_j); the new bonus is argmax(target_a) at the first mismatch a
  (or row P if everything matched).
* sampling (Leviathan et al. / Chen et al.): accept d_j with probability min(1, p_j(d_j) / q_j(d_j));
  at the first rejection draw the bonus from norm(max(p_j − q_j, 0)); if all are accepted draw it from p_P.
  p is the target's filtered distribution (temperature, top-k, top-p, min-p), q the draft's.
  The emitted sequence is then distributed exactly as the target's own sampling.

* seeded (requests with ``sampling_seed``): the target's token at each row is fixed by the seed and the
  position, ``x_j = argmax(log p_j + G(seed, t_j))`` (:func:`sglang_domino.sampling.seeded_choice`), so
  the greedy rule applies to x: accept while d_j == x_j, the bonus is x at the first mismatch. The output is the
  target's own seeded sample whatever was drafted (drafts only change how many tokens one step emits).

Each verify step emits accept_len + 1 tokens: the accepted drafts and the bonus.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from sglang_domino.sampling import SamplingParams, filtered_probs, sample_from, seeded_choice


@dataclass
class VerifyResult:
    """accept_len [N] accepted drafts per row; bonus [N] the token emitted after them."""

    accept_len: torch.Tensor
    bonus: torch.Tensor

    def emitted(self, draft_tokens: torch.Tensor) -> list[list[int]]:
        """Per row: the accepted drafts followed by the bonus (accept_len + 1 tokens)."""
        return [
            draft_tokens[i, : int(a)].tolist() + [int(b)]
            for i, (a, b) in enumerate(zip(self.accept_len.tolist(), self.bonus.tolist()))
        ]


def _check_shapes(draft_tokens: torch.Tensor, target_logits: torch.Tensor) -> None:
    if draft_tokens.ndim != 2 or target_logits.ndim != 3:
        raise ValueError(
            f"expected draft_tokens [N, P] and target_logits [N, P+1, V], got {tuple(draft_tokens.shape)} "
            f"and {tuple(target_logits.shape)}"
        )
    n, p = draft_tokens.shape
    if target_logits.shape[:2] != (n, p + 1):
        raise ValueError(f"target_logits must be [{n}, {p + 1}, V] for {p} drafts, got {tuple(target_logits.shape)}")


def accepted_prefix_len(accepted: torch.Tensor) -> torch.Tensor:
    """Length of the leading run of True per row: [N, P] bool -> [N] int64."""
    return accepted.to(torch.int64).cumprod(dim=1).sum(dim=1)


def verify_greedy(draft_tokens: torch.Tensor, target_logits: torch.Tensor) -> VerifyResult:
    """draft_tokens [N, P]; target_logits [N, P+1, V] -> accept while the draft equals the target argmax."""
    _check_shapes(draft_tokens, target_logits)
    target_argmax = torch.argmax(target_logits, dim=-1)  # [N, P+1]
    accept_len = accepted_prefix_len(draft_tokens == target_argmax[:, :-1])
    bonus = target_argmax.gather(1, accept_len[:, None]).squeeze(1)
    return VerifyResult(accept_len, bonus)


def target_distributions(target_logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """target_logits [N, P+1, V] -> the target's filtered distributions [N, P+1, V] (each row's own parameters)."""
    n, rows, vocab = target_logits.shape
    probs = filtered_probs(target_logits.reshape(n * rows, vocab), params.repeat_interleave(rows))
    return probs.view(n, rows, vocab)


def block_positions(first_position: torch.Tensor, num_rows: int) -> torch.Tensor:
    """[N] absolute position of the token row 0 decides -> [N, num_rows] positions of every row."""
    return first_position.to(torch.int64)[:, None] + torch.arange(num_rows, device=first_position.device)


def verify_seeded(draft_tokens: torch.Tensor, target_logits: torch.Tensor, params: SamplingParams,
                  seeds: torch.Tensor, first_position: torch.Tensor) -> VerifyResult:
    """Seeded rows: draft_tokens [N, P]; target_logits [N, P+1, V]; seeds [N]; first_position [N] the absolute
    position of the token row 0 decides (the one after the bonus the block was drafted behind)."""
    _check_shapes(draft_tokens, target_logits)
    p_len = draft_tokens.shape[1]
    chosen = seeded_choice(target_distributions(target_logits, params), seeds, block_positions(first_position, p_len + 1))
    accept_len = accepted_prefix_len(draft_tokens == chosen[:, :-1])
    return VerifyResult(accept_len, chosen.gather(1, accept_len[:, None]).squeeze(1))


def verify_sampling(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor,
    target_logits: torch.Tensor,
    params: SamplingParams,
    generator: Optional[torch.Generator] = None,
) -> VerifyResult:
    """Lossless speculative sampling over a chain.

    draft_tokens [N, P]; draft_probs [N, P, V] the distributions the drafts were drawn from;
    target_logits [N, P+1, V]; params: per-row sampling parameters (greedy rows work too: p and q are one-hot).
    """
    _check_shapes(draft_tokens, target_logits)
    n, p_len = draft_tokens.shape
    vocab = target_logits.shape[-1]
    if draft_probs.shape != (n, p_len, vocab):
        raise ValueError(f"draft_probs must be [{n}, {p_len}, {vocab}], got {tuple(draft_probs.shape)}")
    target_probs = target_distributions(target_logits, params)
    q = draft_probs.to(torch.float32)

    idx = draft_tokens[..., None]
    p_of_d = target_probs[:, :p_len].gather(2, idx).squeeze(2)
    q_of_d = q.gather(2, idx).squeeze(2)
    coins = torch.rand((n, p_len), generator=generator, device=target_logits.device)
    # u < p/q  <=>  u·q < p ; q(d) > 0 since d was drawn from q.
    accepted = coins * q_of_d < p_of_d
    accept_len = accepted_prefix_len(accepted)

    rows = torch.arange(n, device=target_logits.device)
    p_at = target_probs[rows, accept_len]  # [N, V] target distribution at the stopping row
    # Row P (everything accepted, or P == 0 on a plain-width step): nothing to subtract. new_zeros, not
    # zeros_like(q[:, :1]): with P == 0 that slice has no row at all.
    q_padded = torch.cat((q, q.new_zeros((n, 1, vocab))), dim=1)
    residual = (p_at - q_padded[rows, accept_len]).clamp_min(0.0)
    mass = residual.sum(dim=-1, keepdim=True)
    # p == q exactly leaves no residual mass; the rejection then had probability 0, so p itself is correct.
    residual = torch.where(mass > 0, residual / mass.clamp_min(1e-30), p_at)
    bonus = sample_from(residual, generator)
    return VerifyResult(accept_len, bonus)
