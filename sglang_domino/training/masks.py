"""Block layout for Domino/DFlash training: anchors, block inputs, positions, labels and the attention mask.

One training sequence of length ``T`` carries up to ``W`` blocks of ``B`` slots. Block ``b`` is anchored at a
position ``a_b`` (a loss-masked token, so an assistant token) and stands for one drafting step at inference:

* input: the target's embeddings of ``[x[a], MASK × (B−1)]`` at absolute positions ``a .. a+B−1``;
* context: the target features of positions ``< a`` (strictly before the anchor: at inference the bonus
  token's own features are not available yet);
* labels: ``shift_label=True`` -> slot ``k`` predicts ``x[a+k+1]``; ``False`` (DFlash) -> slot ``k`` predicts
  ``x[a+k]`` and slot 0 (the anchor itself) is not a prediction.

All blocks of a sequence run in one backbone forward: queries ``[W·B]`` against keys ``[T (context) + W·B]``
with a bool visibility predicate (True = visible): :func:`build_block_mask` materialises it densely for SDPA (the
CPU path), :func:`build_flex_block_mask` encodes the same predicate as a flex-attention ``BlockMask`` (sparse:
the fully masked tiles -- other blocks, context after the anchor -- are skipped; the trainer's choice on CUDA).
"""

from __future__ import annotations

from typing import Optional

import torch


def valid_anchor_mask(loss_mask: torch.Tensor, lengths: torch.Tensor, block_size: int) -> torch.Tensor:
    """Positions that may anchor a block -> bool [N, T].

    ``a`` is valid when ``x[a]`` and ``x[a+1]`` are both loss-masked (the anchor is a response token and the
    first prediction is supervised) and the whole block fits in the sequence (``a <= length − B``).
    """
    lm = loss_mask.bool()
    n, t = lm.shape
    nxt = torch.zeros_like(lm)
    nxt[:, :-1] = lm[:, 1:]
    pos = torch.arange(t, device=lm.device)
    return lm & nxt & (pos[None, :] <= (lengths.to(lm.device)[:, None] - block_size))


def sample_anchors(
    loss_mask: torch.Tensor,
    lengths: torch.Tensor,
    block_size: int,
    max_blocks: int,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw up to ``max_blocks`` distinct anchors per sequence, uniformly among the valid ones.

    Returns ``anchors`` [N, W] (sorted; 0 where unused) and ``keep`` [N, W] bool, with
    ``W = min(max_blocks, most valid anchors of any sequence)``; W == 0 means the batch has no valid anchor.
    """
    valid = valid_anchor_mask(loss_mask, lengths, block_size)
    n, t = valid.shape
    counts = valid.sum(dim=1)
    width = min(int(max_blocks), int(counts.max().item()) if n else 0)
    if width <= 0:
        empty = torch.zeros(n, 0, dtype=torch.long, device=valid.device)
        return empty, empty.bool()
    scores = torch.rand(valid.shape, generator=generator, device="cpu").to(valid.device)
    scores = scores.masked_fill(~valid, 2.0)
    candidates = scores.argsort(dim=1, stable=True)[:, :width]
    keep = torch.arange(width, device=valid.device)[None, :] < counts.clamp(max=width)[:, None]
    anchors = torch.where(keep, candidates, torch.full_like(candidates, t)).sort(dim=1).values
    keep = anchors < t
    return torch.where(keep, anchors, torch.zeros_like(anchors)), keep


def block_positions(anchors: torch.Tensor, block_size: int) -> torch.Tensor:
    """Absolute positions of every slot: anchors [N, W] -> [N, W·B]."""
    offsets = torch.arange(block_size, device=anchors.device)
    return (anchors[:, :, None] + offsets).reshape(anchors.shape[0], -1)


def block_input_ids(input_ids: torch.Tensor, anchors: torch.Tensor, block_size: int, mask_token_id: int) -> torch.Tensor:
    """``[x[a], MASK × (B−1)]`` per block -> [N, W·B]."""
    n, w = anchors.shape
    ids = torch.full((n, w, block_size), mask_token_id, dtype=torch.long, device=input_ids.device)
    ids[:, :, 0] = torch.gather(input_ids, 1, anchors)
    return ids.reshape(n, w * block_size)


def build_block_mask(anchors: torch.Tensor, keep: torch.Tensor, context_len: int, block_size: int) -> torch.Tensor:
    """Dense visibility mask [N, W·B, context_len + W·B] (True = visible).

    Query slot of block ``b`` sees context key ``j`` iff the block is kept and ``j < anchor_b``, and sees every
    slot of block ``b`` itself (bidirectional inside the block) and nothing of the other blocks. An unused
    block (keep False) sees only itself, so no attention row is empty (an all-masked SDPA row is NaN).
    """
    n, w = anchors.shape
    q_len = w * block_size
    device = anchors.device
    q_anchor = anchors.repeat_interleave(block_size, dim=1)  # [N, Q]
    q_keep = keep.repeat_interleave(block_size, dim=1)
    ctx = torch.arange(context_len, device=device)[None, None, :] < q_anchor[:, :, None]
    ctx = ctx & q_keep[:, :, None]
    block_id = torch.arange(q_len, device=device) // block_size
    own = (block_id[:, None] == block_id[None, :]).expand(n, q_len, q_len)
    return torch.cat((ctx, own), dim=2)


def build_flex_block_mask(anchors: torch.Tensor, keep: torch.Tensor, context_len: int, block_size: int):
    """:func:`build_block_mask`'s predicate as a flex-attention ``BlockMask`` over [N, W·B] x [context_len + W·B].

    Raises RuntimeError when this torch has no flex attention."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask
    except ImportError as exc:  # torch < 2.5
        raise RuntimeError("flex attention needs torch >= 2.5; use the SDPA dense mask") from exc
    n, w = anchors.shape
    q_len = w * block_size

    def visible(b, h, q_idx, kv_idx):
        block = q_idx // block_size
        in_context = (kv_idx < context_len) & (kv_idx < anchors[b, block]) & keep[b, block]
        own_block = (kv_idx >= context_len) & ((kv_idx - context_len) // block_size == block)
        return in_context | own_block

    return create_block_mask(visible, B=n, H=None, Q_LEN=q_len, KV_LEN=context_len + q_len,
                             device=anchors.device)


def slot_positions(anchors: torch.Tensor, block_size: int, offset: int = 0) -> torch.Tensor:
    """Sequence position ``a + k + offset`` of every slot k of every anchored block -> [N, W, B]."""
    return anchors[:, :, None] + torch.arange(block_size, device=anchors.device) + offset


def gather_labels(
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    lengths: torch.Tensor,
    anchors: torch.Tensor,
    keep: torch.Tensor,
    block_size: int,
    shift_label: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels [N, W, B] and their validity [N, W, B] bool.

    A slot is valid when its block is kept, its label position lies inside the sequence and is loss-masked,
    and (shift_label False) it is not slot 0.
    """
    n, t = input_ids.shape
    w = anchors.shape[1]
    shift = 1 if shift_label else 0
    idx = slot_positions(anchors, block_size, shift)  # [N, W, B]
    inside = idx < lengths.to(idx.device)[:, None, None]
    safe = idx.clamp(max=t - 1).reshape(n, w * block_size)
    labels = torch.gather(input_ids, 1, safe).reshape(n, w, block_size)
    supervised = torch.gather(loss_mask.bool(), 1, safe).reshape(n, w, block_size)
    valid = inside & supervised & keep[:, :, None]
    if not shift_label:
        valid[:, :, 0] = False
    return labels, valid


def block_prefix_ids(input_ids: torch.Tensor, anchors: torch.Tensor, block_size: int) -> torch.Tensor:
    """The real tokens ``x[a .. a+B−1]`` of every block -> [N, W, B] (the head's teacher-forced GRU inputs)."""
    n, t = input_ids.shape
    w = anchors.shape[1]
    idx = slot_positions(anchors, block_size).clamp(max=t - 1)
    return torch.gather(input_ids, 1, idx.reshape(n, w * block_size)).reshape(n, w, block_size)


def teacher_hidden_for_slots(
    teacher_hidden: torch.Tensor, anchors: torch.Tensor, block_size: int, shift_label: bool
) -> torch.Tensor:
    """The target's final hidden state that predicts each slot's label -> [N, W, B, H].

    teacher_hidden [N, T, H] (the lm_head input at every position); a slot's label sits at ``a + k + shift``
    (:func:`gather_labels`), so the target's distribution over it comes from position ``a + k + shift − 1``.
    Positions outside the sequence are clamped (their slots are not valid, so they never count).
    """
    n, t, h = teacher_hidden.shape
    w = anchors.shape[1]
    shift = 1 if shift_label else 0
    idx = slot_positions(anchors, block_size, shift - 1).clamp(0, t - 1)
    gathered = torch.gather(teacher_hidden, 1, idx.reshape(n, w * block_size, 1).expand(n, w * block_size, h))
    return gathered.view(n, w, block_size, h)


__all__ = [
    "block_input_ids",
    "block_positions",
    "block_prefix_ids",
    "build_block_mask",
    "build_flex_block_mask",
    "gather_labels",
    "sample_anchors",
    "slot_positions",
    "teacher_hidden_for_slots",
    "valid_anchor_mask",
]
