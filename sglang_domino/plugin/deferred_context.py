"""The drafter's context KV of plain-width steps, written late and in bulk.

Why: a plain-width step (the width rule's choice where drafting does not pay; on CPU from about four requests up)
verifies only the bonus, yet upstream's step still writes the drafter's context KV for it at once: the drafter's
``fc`` projection of the target's hidden states, then a K/V projection, k-norm and rope per draft layer, a dozen
small ops per step. Timed inside the schedulers (2026-12-07, AMD EPYC 2 cores, one request, 128-token greedy
requests, never-drafting Domino servers beside a plain one): the target forward took 29.0-29.1 ms per step in all
three, the whole step 29.75 ms in plain decoding, 31.11 ms with the write in every step (0.98 ms of it the write)
and 30.29 ms with this stash. Here a plain-width step only copies the hidden states of its committed tokens (one
row per request) into a stash; the next drafting step, or a full stash, writes them all with one batched append --
the same projections over many rows, which is what the prefill does anyway.

Correctness does not depend on when the writes happen, only on every committed slot being written, with the
state it was committed with, before a draft forward reads it. The stash keeps, per entry, the draft-pool slot,
its position and the target's hidden states; ``owner[slot]`` names the entry that slot's latest commit made, so
an entry whose slot was written since (an immediate append, a later plain-width commit after the slot was freed
and reused) is dead and never written. Entries of finished requests are still written at the next flush: their
slots may sit in the radix cache, and a later request reusing that prefix must find the drafter's KV there, as it
would have without the stash. Outputs cannot change (drafts are verified); drafts equal those of the immediate
append up to float rounding of a batched product (tests/server/test_plain_width_steps.py compares them with the
offline rollout).

Plain PyTorch; no SGLang import. The worker (:mod:`.worker`) decides when to stash and when to flush.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

# Stash rows. At one request per step this is ~17 minutes of plain-width steps at ~30 ms before a forced flush;
# a flush of this many rows is one batched GEMM chain (milliseconds). 7 MB for SmolLM2-135M's three captured
# layers in float32.
DEFAULT_CAPACITY = 1024

Append = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]
"""``append(hidden [n, D], slots [n], positions [n])``: write the drafter's context KV of n committed tokens."""


class DeferredContext:
    """Pending drafter-context writes of plain-width steps (see the module docstring)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"deferred context capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.pending = 0  # live-or-dead entries since the last flush
        self._hidden: Optional[torch.Tensor] = None  # [capacity, D], allocated on first use
        self._slots: Optional[torch.Tensor] = None  # [capacity] int64
        self._positions: Optional[torch.Tensor] = None  # [capacity] int64
        self._owner: Optional[torch.Tensor] = None  # [pool slots] int64: entry index of the slot's last commit, or -1

    def _ensure(self, hidden: torch.Tensor, max_slot: int) -> None:
        if self._hidden is None or self._hidden.shape[1] != hidden.shape[1] or self._hidden.dtype != hidden.dtype:
            if self.pending:
                raise RuntimeError("deferred context: the hidden-state width or dtype changed with writes pending")
            self._hidden = hidden.new_empty((self.capacity, hidden.shape[1]))
            self._slots = torch.empty(self.capacity, dtype=torch.int64, device=hidden.device)
            self._positions = torch.empty(self.capacity, dtype=torch.int64, device=hidden.device)
        if self._owner is None or self._owner.numel() <= max_slot:
            size = max(max_slot + 1, 2 * (0 if self._owner is None else self._owner.numel()))
            owner = torch.full((size,), -1, dtype=torch.int64, device=hidden.device)
            if self._owner is not None:
                owner[: self._owner.numel()] = self._owner
            self._owner = owner

    def defer(self, hidden: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor, append: Append) -> None:
        """Stash the context of tokens just committed at ``slots`` / ``positions`` (hidden [n, D]); a full stash is
        flushed through ``append`` first."""
        n = int(slots.numel())
        if n == 0:
            return
        if hidden.shape[0] != n or positions.numel() != n:
            raise ValueError(f"deferred context: {hidden.shape[0]} hidden rows, {n} slots, {positions.numel()} "
                             "positions")
        if n > self.capacity:  # more rows than the stash holds: nothing gained by stashing
            self.written(slots)
            append(hidden, slots, positions)
            return
        if self.pending + n > self.capacity:
            self.flush(append)
        slots = slots.to(torch.int64)
        self._ensure(hidden, int(slots.max()))
        start, end = self.pending, self.pending + n
        self._hidden[start:end] = hidden
        self._slots[start:end] = slots
        self._positions[start:end] = positions
        # A slot repeated within one call cannot happen (one new token per request); the last write wins anyway.
        self._owner[slots] = torch.arange(start, end, dtype=torch.int64, device=slots.device)
        self.pending = end

    def written(self, slots: torch.Tensor) -> None:
        """``slots`` were just written directly (prefill, a drafting step's commit): pending entries for them die."""
        if self.pending and self._owner is not None and slots.numel():
            slots = slots.to(torch.int64)
            inside = slots[slots < self._owner.numel()]
            self._owner[inside] = -1

    def flush(self, append: Append) -> int:
        """Write every live pending entry through ``append`` (one call); returns how many rows it wrote."""
        if not self.pending:
            return 0
        n, self.pending = self.pending, 0
        slots = self._slots[:n]
        live = (self._owner[slots] == torch.arange(n, dtype=torch.int64, device=slots.device)).nonzero().squeeze(1)
        self._owner[slots] = -1
        rows = int(live.numel())
        if rows:
            append(self._hidden[live], slots[live], self._positions[live])
        return rows

    def clear(self) -> None:
        """Forget everything pending (the KV pool was reset)."""
        if self._owner is not None and self.pending:
            self._owner[self._slots[: self.pending]] = -1
        self.pending = 0


__all__ = ["DEFAULT_CAPACITY", "DeferredContext"]
