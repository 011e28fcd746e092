"""Plain-width steps above a batch size: the setting, the width rule and the per-width state swap."""

from __future__ import annotations

import pytest

from sglang_domino.plugin.draft_width import (
    CPU_DEFAULT_MAX_SPECULATIVE_BATCH,
    MAX_SPECULATIVE_BATCH_ENV,
    WIDTH_ATTRS,
    WidthStates,
    resolve_max_speculative_batch,
    step_width,
)


def test_setting_values_and_device_default(monkeypatch):
    monkeypatch.delenv(MAX_SPECULATIVE_BATCH_ENV, raising=False)
    assert resolve_max_speculative_batch("cpu") == CPU_DEFAULT_MAX_SPECULATIVE_BATCH
    assert resolve_max_speculative_batch("cuda") is None  # GPUs: always draft
    assert resolve_max_speculative_batch("cpu", "none") is None
    assert resolve_max_speculative_batch("cuda", " 8 ") == 8
    monkeypatch.setenv(MAX_SPECULATIVE_BATCH_ENV, "AUTO")
    assert resolve_max_speculative_batch("cpu") == CPU_DEFAULT_MAX_SPECULATIVE_BATCH
    monkeypatch.setenv(MAX_SPECULATIVE_BATCH_ENV, "3")
    assert resolve_max_speculative_batch("cpu") == 3
    for bad in ("0", "-2", "two", "1.5"):
        monkeypatch.setenv(MAX_SPECULATIVE_BATCH_ENV, bad)
        with pytest.raises(ValueError, match=MAX_SPECULATIVE_BATCH_ENV):
            resolve_max_speculative_batch("cpu")


def test_step_width():
    assert step_width(1, 4, 2) == 4 and step_width(2, 4, 2) == 4
    assert step_width(3, 4, 2) == 1 and step_width(64, 16, 2) == 1
    assert step_width(64, 16, None) == 16


class _Worker:
    """The width-shaped attributes of a DFlash worker, plus one that must never move."""

    def __init__(self, block_size: int) -> None:
        for name in WIDTH_ATTRS:
            setattr(self, name, None)
        self.block_size = self.speculative_num_draft_tokens = block_size
        self._block_pos_offsets = list(range(block_size))
        self.unrelated = "kept"


def test_width_states_swap_and_keep_grown_buffers():
    worker = _Worker(4)
    made: list[int] = []

    def fresh(width: int) -> dict:
        made.append(width)
        return {name: None for name in WIDTH_ATTRS} | {
            "block_size": width, "speculative_num_draft_tokens": width, "_block_pos_offsets": list(range(width))}

    states = WidthStates(worker, fresh)
    worker._draft_block_ids_buf = "full-width buffer"  # allocated lazily by a full-width step
    states.use(1)
    assert worker.block_size == 1 and worker._block_pos_offsets == [0] and worker._draft_block_ids_buf is None
    worker._draft_block_ids_buf = "plain-width buffer"
    states.use(4)
    assert worker.block_size == 4 and worker._block_pos_offsets == [0, 1, 2, 3]
    assert worker._draft_block_ids_buf == "full-width buffer"
    states.use(4)  # no-op
    states.use(1)
    assert worker._draft_block_ids_buf == "plain-width buffer" and made == [1]  # built once, then kept
    assert worker.unrelated == "kept"


def test_width_states_refuse_a_worker_without_the_attributes():
    worker = _Worker(4)
    del worker._draft_block_spec_info
    with pytest.raises(RuntimeError, match="_draft_block_spec_info"):
        WidthStates(worker, lambda w: {})
