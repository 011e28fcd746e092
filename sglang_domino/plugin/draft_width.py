"""Automatic switch-off: decode batches above a size run plain-width steps (no drafts), smaller ones draft.

Why: on a CPU the target's verify forward is compute-bound once a few requests share a step, so verifying B
tokens per request costs nearly B times a plain step while the drafts win back only τ: above a small batch size
speculation loses to plain decoding (see the README's serving results). A *plain-width* step verifies one
token per request -- the bonus, i.e. exactly a plain decode step -- and still feeds the drafter's context KV
with the target's hidden states of the committed tokens, so drafting resumes at full width, with nothing
missing from its context, as soon as the batch shrinks again.

Mechanism (the analogue of upstream EAGLE's adaptive runtime states, without graphs to rebuild on CPU):
every attribute of ``DFlashWorkerV2`` whose shape follows the block width (:data:`WIDTH_ATTRS`) is kept per width
in a :class:`WidthStates` and swapped in before a step. Nothing carried from one step to the next depends on the
width (``DFlashDraftInputV2`` holds the bonus tokens and lengths; the drafter-KV append happens inside the step),
and the scheduler reads each result's own ``speculative_num_draft_tokens``, so consecutive steps may differ.
Every emitted token is still the target's own (width 1 emits the target's bonus), so the switch cannot change
outputs, only speed.

``$SGLANG_DOMINO_MAX_SPECULATIVE_BATCH``: ``auto`` (default: :data:`CPU_DEFAULT_MAX_SPECULATIVE_BATCH` on CPU, no
limit on GPUs, whose verify is cheap at these batch sizes), ``none`` (always draft), or N >= 1 (draft while the
decode batch has at most N requests).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

MAX_SPECULATIVE_BATCH_ENV = "SGLANG_DOMINO_MAX_SPECULATIVE_BATCH"
# Measured on this project's 2-core CPU machine kind (README, serving results): Domino beats plain decoding at
# concurrency 1, ties at 2 and loses from 4 on.
CPU_DEFAULT_MAX_SPECULATIVE_BATCH = 2

# DFlashWorkerV2 (sglang 0.5.23) attributes whose shape follows the block width: the width itself, the block
# position offsets [B], the draft block's spec info (draft_token_num = B) and the [cap, B] / [cap] block buffers
# (allocated lazily by _ensure_draft_block_buffers, which only checks the capacity, hence one set per width).
WIDTH_ATTRS: tuple[str, ...] = (
    "block_size",
    "speculative_num_draft_tokens",
    "_block_pos_offsets",
    "_draft_block_spec_info",
    "_draft_block_ids_buf",
    "_draft_block_positions_buf",
    "_draft_block_tokens_buf",
    "_draft_verify_out_cache_loc_buf",
    "_draft_block_end_buf",
    "_draft_seq_lens_cpu_buf",
)


def resolve_max_speculative_batch(device_type: str, raw: Optional[str] = None) -> Optional[int]:
    """The largest decode batch that drafts (None = no limit), from ``raw`` or ``$SGLANG_DOMINO_MAX_SPECULATIVE_BATCH``.

    Raises ValueError naming the variable on anything but ``auto``, ``none`` or an integer >= 1."""
    value = (raw if raw is not None else os.environ.get(MAX_SPECULATIVE_BATCH_ENV, "")).strip().lower()
    if value in ("", "auto"):
        return CPU_DEFAULT_MAX_SPECULATIVE_BATCH if device_type == "cpu" else None
    if value == "none":
        return None
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ValueError(f"{MAX_SPECULATIVE_BATCH_ENV}={value!r}: expected auto, none or an integer >= 1 "
                         "(the largest decode batch that drafts)")
    return limit


def step_width(batch_size: int, block_size: int, max_speculative_batch: Optional[int]) -> int:
    """The block width of a decode step of ``batch_size`` requests: ``block_size``, or 1 above the limit."""
    if max_speculative_batch is not None and batch_size > max_speculative_batch:
        return 1
    return block_size


class WidthStates:
    """One set of :data:`WIDTH_ATTRS` per block width; :meth:`use` swaps a worker to another width.

    ``make_state(width)`` returns the fresh attribute values of a width not seen yet (buffers None: the worker
    allocates them lazily). The worker's attributes are the live state of ``current``; switching stores them
    back first, so buffers grown at one width are kept for the next step at that width."""

    def __init__(self, worker: Any, make_state: Callable[[int], dict[str, Any]]) -> None:
        # vars(), not hasattr: DFlashWorkerV2.__getattr__ forwards unknown names to the target worker.
        missing = [name for name in WIDTH_ATTRS if name not in vars(worker)]
        if missing:
            raise RuntimeError(f"Domino: the DFlash worker has no {', '.join(missing)}; the width switch was written "
                               "for sglang 0.5.23")
        self._worker = worker
        self._make_state = make_state
        self.full_width = int(worker.block_size)  # the configured width, the one between steps
        self.current = self.full_width
        self._saved: dict[int, dict[str, Any]] = {}

    def use(self, width: int) -> None:
        width = int(width)
        if width == self.current:
            return
        worker = self._worker
        self._saved[self.current] = {name: getattr(worker, name) for name in WIDTH_ATTRS}
        state = self._saved.pop(width, None)
        if state is None:
            state = self._make_state(width)
        for name in WIDTH_ATTRS:
            setattr(worker, name, state[name])
        self.current = width


__all__ = [
    "CPU_DEFAULT_MAX_SPECULATIVE_BATCH",
    "MAX_SPECULATIVE_BATCH_ENV",
    "WIDTH_ATTRS",
    "WidthStates",
    "resolve_max_speculative_batch",
    "step_width",
]
