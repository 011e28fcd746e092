"""Training examples and batches: JSONL rows -> :class:`Example` (token ids + loss mask), padded
:class:`TrainBatch` es, and :class:`BatchStream`, the shuffled order over epochs whose position checkpoints
exactly."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from sglang_domino.training.errors import TrainingError
from sglang_domino.training.jsonl import read_jsonl
from sglang_domino.training.masks import valid_anchor_mask
from sglang_domino.training.tokenization import tokenize_conversation


@dataclass
class Example:
    input_ids: torch.Tensor  # [T] int64
    loss_mask: torch.Tensor  # [T] bool

    def __len__(self) -> int:
        return int(self.input_ids.numel())


def load_examples(paths: str | Path | Sequence[str | Path], tokenizer: Callable[[], object], max_len: int,
                  limit: Optional[int] = None) -> list[Example]:
    """Read JSONL (or JSONL.gz) files of conversations (``messages``) or pre-tokenised rows
    (``input_ids`` [+ ``loss_mask``]), in order. A torn last line (a writer killed mid-line, e.g. a
    self-distillation still running) is skipped with a warning; a bad line anywhere else is an error."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    examples: list[Example] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise TrainingError(f"--data {path}: no such file")
        try:
            for lineno, row in read_jsonl(path):
                examples.append(_example_from_row(row, tokenizer, max_len, f"{path}:{lineno}"))
                if limit is not None and len(examples) >= limit:
                    return examples
        except ValueError as exc:
            raise TrainingError(str(exc)) from exc
    if not examples:
        raise TrainingError(f"--data {', '.join(map(str, paths))}: no examples")
    return examples


def _example_from_row(row: dict, tokenizer: Callable[[], object], max_len: int, where: str) -> Example:
    if "input_ids" in row:
        ids = torch.as_tensor(row["input_ids"], dtype=torch.long)[:max_len]
        mask = row.get("loss_mask")
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else torch.as_tensor(mask).bool()[:max_len]
        if mask.shape != ids.shape:
            raise TrainingError(f"{where}: loss_mask and input_ids differ in length")
        return Example(ids, mask)
    if "messages" in row:
        # A response cut at max_new_tokens has no end-of-turn token from the target: not supervised.
        ids, mask = tokenize_conversation(tokenizer(), row["messages"], max_len,
                                          final_turn_complete=row.get("finish_reason") != "length")
        return Example(torch.as_tensor(ids, dtype=torch.long), torch.as_tensor(mask).bool())
    raise TrainingError(f"{where}: expected a 'messages' or an 'input_ids' field")


def usable(example: Example, block_size: int) -> bool:
    """True when the sequence has at least one valid anchor."""
    return bool(valid_anchor_mask(example.loss_mask[None], torch.tensor([len(example)]), block_size).any())


@dataclass
class TrainBatch:
    input_ids: torch.Tensor  # [N, T] int64 (0-padded)
    loss_mask: torch.Tensor  # [N, T] bool (False on padding)
    lengths: torch.Tensor  # [N] int64
    features: torch.Tensor  # [N, T, n·H] target features (0 on padding)
    teacher_hidden: Optional[torch.Tensor] = None  # [N, T, H] the target's final-normed hidden (lm_head input)


def pad_batch(examples: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(e) for e in examples], dtype=torch.long)
    t = int(lengths.max())
    ids = torch.zeros(len(examples), t, dtype=torch.long)
    mask = torch.zeros(len(examples), t, dtype=torch.bool)
    for i, e in enumerate(examples):
        ids[i, : len(e)] = e.input_ids
        mask[i, : len(e)] = e.loss_mask
    return ids, mask, lengths


class BatchStream:
    """Shuffled batches over epochs, with a position that checkpoints exactly: (epoch, offset).

    ``groups`` + ``window``: a locality-aware order for a feature cache larger than memory. Each epoch shuffles
    the groups (the cache's shard files), takes them ``window`` at a time and shuffles the examples of each
    window, so a stretch of batches reads ``window`` shards instead of touching a new shard per sequence
    (random order over a 20 GB cache on a 24 GB machine left the trainer waiting on page faults). Every
    example is still seen once per epoch; batches mix ``window`` random shards."""

    def __init__(self, num_examples: int, batch_size: int, seed: int, *,
                 groups: Optional[Sequence[str]] = None, window: int = 0) -> None:
        if num_examples <= 0:
            raise TrainingError("no usable training examples")
        if groups is not None and len(groups) != num_examples:
            raise TrainingError(f"BatchStream: {len(groups)} groups for {num_examples} examples")
        self.n, self.batch_size, self.seed = num_examples, batch_size, seed
        self.window = int(window) if groups is not None else 0
        self._groups = list(groups) if groups is not None else None
        self.epoch, self.offset = 0, 0
        self._perm_epoch, self._perm = -1, None

    def _order(self, epoch: int) -> list[int]:
        if self._perm_epoch != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            if self.window <= 0:
                perm = torch.randperm(self.n, generator=g).tolist()
            else:
                members: dict[str, list[int]] = {}
                for i, name in enumerate(self._groups):  # type: ignore[arg-type]
                    members.setdefault(name, []).append(i)
                names = sorted(members)
                names = [names[j] for j in torch.randperm(len(names), generator=g).tolist()]
                perm = []
                for start in range(0, len(names), self.window):
                    chunk = [i for name in names[start : start + self.window] for i in members[name]]
                    perm.extend(chunk[j] for j in torch.randperm(len(chunk), generator=g).tolist())
            self._perm, self._perm_epoch = perm, epoch
        return self._perm  # type: ignore[return-value]

    def next_indices(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.batch_size:
            order = self._order(self.epoch)
            take = order[self.offset : self.offset + self.batch_size - len(out)]
            out.extend(take)
            self.offset += len(take)
            if self.offset >= self.n:
                self.epoch, self.offset = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset, "n": self.n, "batch_size": self.batch_size, "seed": self.seed,
                "window": self.window}

    def load_state_dict(self, state: dict) -> None:
        for key in ("n", "batch_size", "seed", "window"):
            if state.get(key, 0) != getattr(self, key):  # checkpoints before --shard-window have no "window"
                raise TrainingError(
                    f"cannot resume: the checkpoint's data stream has {key}={state.get(key, 0)}, this run {getattr(self, key)} "
                    "(same --data, --max-len, --limit, --batch-size, --seed and --shard-window are needed for an exact resume)"
                )
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])


__all__ = [
    "BatchStream",
    "Example",
    "TrainBatch",
    "load_examples",
    "pad_batch",
    "usable",
]
