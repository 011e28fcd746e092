"""Domino correction kernels behind one small interface (eager reference in ``reference.py``)."""

from sglang_domino.kernels.reference import (
    DominoHeadWeights,
    correction_logits,
    correction_loop_eager,
    greedy_select,
    gru_cell,
)

__all__ = ["DominoHeadWeights", "correction_logits", "correction_loop_eager", "greedy_select", "gru_cell"]
