"""Eager PyTorch reference for the Domino correction: the oracle every kernel must match.

The Domino head corrects the backbone's base logits slot by slot:

    h      = GRU over the target embeddings of [bonus, d_0, ..., d_{k-1}]        (causal state)
    logits = base_k + W2 · SiLU(W1 · [z_k | h])                                  (low-rank correction)
    d_k    = argmax(logits)   (greedy)   or   a draw from the filtered softmax   (sampling)

Slots below ``pure_draft_prefix_len`` take base logits only; the GRU still consumes their tokens.
This module runs anywhere (CPU, CUDA); ``sglang_domino.kernels`` dispatches to fused kernels on CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DominoHeadWeights:
    """The four tensors of a Domino head, exactly as stored in the checkpoint.

    w_ih: ``prefix_gru.weight_ih_l0`` [3G, H]; w_hh: ``prefix_gru.weight_hh_l0`` [3G, G]
    (PyTorch gate order r, z, n; no biases); w1: ``embed_proj.0.weight`` [r, H+G];
    w2: ``embed_proj.2.weight`` [V, r].
    """

    w_ih: torch.Tensor
    w_hh: torch.Tensor
    w1: torch.Tensor
    w2: torch.Tensor

    @property
    def gru_hidden_dim(self) -> int:
        return int(self.w_hh.shape[1])


def gru_cell(x: torch.Tensor, h: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor) -> torch.Tensor:
    """One bias-free GRU step. x [N, H], h [N, G] -> h_new [N, G] (same math as ``nn.GRUCell(bias=False)``)."""
    return torch.ops.aten.gru_cell.default(x, h, w_ih, w_hh, None, None)


def correction_logits(z: torch.Tensor, h: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """W2 · SiLU(W1 · [z | h]). z [N, H], h [N, G] -> [N, V]."""
    return F.linear(F.silu(F.linear(torch.cat((z, h), dim=-1), w1)), w2)


# A slot selector maps corrected logits [N, V] of one slot to (tokens [N], probs [N, V] or None).
SlotSelector = Callable[[torch.Tensor, int], tuple[torch.Tensor, Optional[torch.Tensor]]]


def greedy_select(logits: torch.Tensor, slot: int) -> tuple[torch.Tensor, None]:
    """argmax, ties to the lowest id (torch.argmax's rule)."""
    return torch.argmax(logits, dim=-1), None


def correction_loop_eager(
    base_logits: torch.Tensor,
    z: torch.Tensor,
    bonus_tokens: torch.Tensor,
    embed_weight: torch.Tensor,
    head: Optional[DominoHeadWeights],
    pure_draft_prefix_len: int,
    select: SlotSelector = greedy_select,
    embed: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The whole per-block sequential correction.

    Args:
        base_logits: [N, P, V] backbone logits of the P proposal slots (lm_head of ``z``).
        z: [N, P, H] backbone hidden states of those slots.
        bonus_tokens: [N] the last verified token (block position 0).
        embed_weight: [V, H] the target's input embedding matrix.
        head: the Domino head, or None for a plain DFlash backbone (base logits only).
        pure_draft_prefix_len: slots ``< pure_draft_prefix_len`` are not corrected.
        select: greedy argmax, or a sampler returning the draft distribution.
        embed: token ids [N] -> their embedding rows [N, H]; None = rows of ``embed_weight`` (a
            vocabulary-parallel caller passes :meth:`sglang_domino.vocab_parallel.VocabShard.embed`).

    Returns:
        tokens [N, P] (int64) and, when ``select`` returns them, draft probabilities [N, P, V].
    """
    num_rows, num_proposals, _ = base_logits.shape
    if embed is None:
        embed = lambda tok: F.embedding(tok, embed_weight)  # noqa: E731
    tokens: list[torch.Tensor] = []
    probs: list[Optional[torch.Tensor]] = []
    h: Optional[torch.Tensor] = None
    prev = bonus_tokens
    for slot in range(num_proposals):
        logits = base_logits[:, slot]
        if head is not None and slot >= pure_draft_prefix_len:
            if h is None:
                # Catch up on every token before this slot: [bonus, d_0 .. d_{slot-1}].
                h = z.new_zeros(num_rows, head.gru_hidden_dim).to(head.w_hh.dtype)
                for tok in [bonus_tokens, *tokens]:
                    h = gru_cell(embed(tok).to(h.dtype), h, head.w_ih, head.w_hh)
            else:
                h = gru_cell(embed(prev).to(h.dtype), h, head.w_ih, head.w_hh)
            corr = correction_logits(z[:, slot].to(head.w1.dtype), h, head.w1, head.w2)
            logits = logits + corr.to(logits.dtype)
        tok, p = select(logits, slot)
        tok = tok.to(torch.long)
        tokens.append(tok)
        probs.append(p)
        prev = tok
    token_ids = torch.stack(tokens, dim=1)
    if probs and probs[0] is not None:
        return token_ids, torch.stack(probs, dim=1)  # type: ignore[arg-type]
    return token_ids, None
