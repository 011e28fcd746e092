"""DeferredContext: plain-width steps' drafter-context writes, stashed and written later.

The reference is a pool written at once (what upstream's step does): after any sequence of commits -- deferred
(plain-width steps), immediate (prefill, drafting steps), slots freed and reused by other requests -- and a flush,
every slot must hold what its latest commit wrote, and each flush must be one call.
"""

from __future__ import annotations

import random

import pytest
import torch

from sglang_domino.plugin.deferred_context import DeferredContext

D = 6


class Pool:
    """A drafter KV pool stand-in: slot -> (position, hidden row) of its latest write, and the append calls."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[int, list[float]]] = {}
        self.calls: list[int] = []

    def append(self, hidden: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor) -> None:
        self.calls.append(int(slots.numel()))
        for h, s, p in zip(hidden.tolist(), slots.tolist(), positions.tolist()):
            self.rows[s] = (p, h)


def commit(n: int, slots: list[int], step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    hidden = torch.arange(n * D, dtype=torch.float32).view(n, D) + 1000 * step
    return hidden, torch.tensor(slots), torch.tensor([100 * step + i for i in range(n)])


def test_flush_writes_every_pending_row_in_one_call() -> None:
    deferred, pool = DeferredContext(capacity=16), Pool()
    for step in range(3):
        deferred.defer(*commit(2, [2 * step, 2 * step + 1], step), pool.append)
    assert pool.rows == {} and deferred.pending == 6
    assert deferred.flush(pool.append) == 6
    assert pool.calls == [6]
    assert pool.rows[5] == (201, [1000 * 2 + 6 + c for c in range(D)])
    assert deferred.pending == 0 and deferred.flush(pool.append) == 0 and pool.calls == [6]


def test_a_slot_written_directly_after_a_deferred_commit_is_not_overwritten() -> None:
    deferred, pool = DeferredContext(capacity=16), Pool()
    deferred.defer(*commit(2, [7, 8], 0), pool.append)
    hidden, slots, positions = commit(1, [8], 1)  # slot 8 freed, reused, and written by a prefill
    deferred.written(slots)
    pool.append(hidden, slots, positions)
    deferred.flush(pool.append)
    assert pool.rows[8][0] == 100 and pool.rows[7][0] == 0


def test_the_latest_deferred_commit_of_a_reused_slot_wins() -> None:
    deferred, pool = DeferredContext(capacity=16), Pool()
    deferred.defer(*commit(1, [3], 0), pool.append)
    deferred.defer(*commit(1, [3], 1), pool.append)  # freed and reused while still pending
    assert deferred.flush(pool.append) == 1
    assert pool.rows[3][0] == 100


def test_a_full_stash_is_flushed_before_it_takes_more() -> None:
    deferred, pool = DeferredContext(capacity=4), Pool()
    deferred.defer(*commit(3, [0, 1, 2], 0), pool.append)
    deferred.defer(*commit(3, [3, 4, 5], 1), pool.append)
    assert pool.calls == [3] and deferred.pending == 3
    deferred.defer(*commit(9, list(range(10, 19)), 2), pool.append)  # larger than the stash: written at once
    assert pool.calls == [3, 9] and deferred.pending == 3
    deferred.flush(pool.append)
    assert sorted(pool.rows) == [0, 1, 2, 3, 4, 5] + list(range(10, 19))


def test_clear_forgets_pending_writes() -> None:
    deferred, pool = DeferredContext(capacity=8), Pool()
    deferred.defer(*commit(2, [1, 2], 0), pool.append)
    deferred.clear()
    assert deferred.flush(pool.append) == 0 and pool.rows == {}
    deferred.defer(*commit(1, [2], 1), pool.append)  # slot tables still usable after a clear
    deferred.flush(pool.append)
    assert pool.rows == {2: (100, [1000.0 + c for c in range(D)])}


def test_mismatched_rows_are_refused() -> None:
    deferred = DeferredContext(capacity=8)
    with pytest.raises(ValueError, match="hidden rows"):
        deferred.defer(torch.zeros(2, D), torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), Pool().append)
    with pytest.raises(ValueError, match="capacity"):
        DeferredContext(capacity=0)


@pytest.mark.parametrize("seed", range(5))
def test_random_traffic_matches_writing_at_once(seed: int) -> None:
    """Random interleavings of deferred commits, direct writes and flushes (slots reused at random, a small
    stash so that forced flushes happen) leave the pool as writing every commit at once does."""
    rng = random.Random(seed)
    deferred, pool, reference = DeferredContext(capacity=7), Pool(), Pool()
    for step in range(200):
        action = rng.random()
        n = rng.randint(1, 4)
        slots = rng.sample(range(40), n)  # slots in use by nobody else this step
        hidden, slot_t, positions = commit(n, slots, step)
        reference.append(hidden, slot_t, positions)
        if action < 0.6:
            deferred.defer(hidden, slot_t, positions, pool.append)
        else:
            deferred.written(slot_t)
            pool.append(hidden, slot_t, positions)
        if rng.random() < 0.1:
            deferred.flush(pool.append)
    deferred.flush(pool.append)
    assert pool.rows == reference.rows
