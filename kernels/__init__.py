"""Domino correction kernels behind one small interface (eager reference in ``reference.py``)."""

from sglang_domino.kernels.reference import (
    DominoHeadWeights,
    correction_logits,
    correction_loop_eager,
    greedy_select,
    gru_cell,
)

__all__ = ["DominoHeadWeights", "correction_logits", "correction_loop_eager", "greedy_select", "gru_cell"]


def correction_loop(base_logits, z, bonus_tokens, embed_weight, head, pure_draft_prefix_len, select=greedy_select):
    """The per-block correction behind one interface (eager reference until the fused path lands)."""
    return correction_loop_eager(base_logits, z, bonus_tokens, embed_weight, head, pure_draft_prefix_len, select)
