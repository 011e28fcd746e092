"""Exact Domino drafting over a vocabulary-parallel target head (tensor parallelism, ``--tp-size T``).

Under tensor parallelism SGLang shards the target's ``lm_head`` and input embedding by vocabulary rows
(``VocabParallelEmbedding``): rank t holds the rows ``[start, start + rows)`` of the padded vocabulary, ids at or
above the real vocabulary size are padding. The drafter's backbone output z and the Domino head's GRU and W1 are
the same on every rank; W2 [V, r] is sharded here exactly like ``lm_head`` (:meth:`VocabShard.local_rows`), so each
rank computes the corrected logits of its own vocabulary rows only, bit for bit the columns a single rank would
compute.

Per draft slot, :meth:`VocabShard.greedy` selects the token with one all-gather of N (max, global id) pairs
(ties to the lowest global id, as ``torch.argmax`` over the full vocabulary: shards are ascending and
``torch.max`` keeps the first maximum), and :meth:`VocabShard.embed` gives every rank the token's embedding row (the
owning rank's row, the others' zeros, all-reduced: exact in any dtype). No rank ever holds ``[N, V]`` logits on the
greedy path. Sampled drafts need the draft probabilities over the whole vocabulary for verification (SGLang's
target logits arrive gathered), so :meth:`VocabShard.gather` all-gathers the slot's corrected logits; the draw is
then broadcast from rank 0 (:meth:`VocabShard.same_tokens`) so every rank's GRU consumes the same token whatever
its random state. ``benchmarks/tp_comm_model.py`` counts the bytes.

``group`` is anything with SGLang's ``GroupCoordinator`` collectives (``world_size``, ``rank_in_group``,
``all_gather_into_tensor``, ``all_reduce``, ``broadcast``); :class:`TorchDistributedGroup` adapts a plain
``torch.distributed`` process group (tests, offline use).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol

import torch
import torch.nn.functional as F


class Collectives(Protocol):
    """The collectives :class:`VocabShard` uses (SGLang's ``GroupCoordinator`` has them)."""

    world_size: int
    rank_in_group: int

    def all_gather_into_tensor(self, output: torch.Tensor, input: torch.Tensor) -> None: ...  # noqa: A002
    def all_reduce(self, input_: torch.Tensor) -> torch.Tensor: ...
    def broadcast(self, input_: torch.Tensor, src: int = 0) -> torch.Tensor: ...


class TorchDistributedGroup:
    """:class:`Collectives` over a ``torch.distributed`` process group (None = the default group)."""

    def __init__(self, group: Any = None) -> None:
        import torch.distributed as dist

        self._dist, self._group = dist, group
        self.world_size = dist.get_world_size(group)
        self.rank_in_group = dist.get_rank(group)

    def all_gather_into_tensor(self, output: torch.Tensor, input: torch.Tensor) -> None:  # noqa: A002
        self._dist.all_gather_into_tensor(output, input.contiguous(), group=self._group)

    def all_reduce(self, input_: torch.Tensor) -> torch.Tensor:
        self._dist.all_reduce(input_, group=self._group)
        return input_

    def broadcast(self, input_: torch.Tensor, src: int = 0) -> torch.Tensor:
        self._dist.broadcast(input_, src=self._dist.get_global_rank(self._group, src) if self._group else src,
                             group=self._group)
        return input_


@dataclass(frozen=True)
class VocabShard:
    """This rank's rows of a vocabulary-parallel head.

    group: the tensor-parallel group; start: the global id of local row 0; rows: the local rows (the padded
    shard, equal on every rank); vocab_size: the real vocabulary (global ids at or above it are padding).
    """

    group: Collectives
    start: int
    rows: int
    vocab_size: int

    @classmethod
    def even(cls, group: Collectives, padded_vocab: int, vocab_size: int) -> "VocabShard":
        """The shard of rank ``group.rank_in_group`` when ``padded_vocab`` rows are split evenly and in order
        (SGLang's layout for a head without added vocabulary)."""
        if padded_vocab % group.world_size or padded_vocab < vocab_size:
            raise ValueError(f"a padded vocabulary of {padded_vocab} rows cannot hold {vocab_size} ids in "
                             f"{group.world_size} equal shards")
        rows = padded_vocab // group.world_size
        return cls(group, group.rank_in_group * rows, rows, vocab_size)

    @property
    def valid_rows(self) -> int:
        """Local rows that are real vocabulary ids (the rest of the shard is padding)."""
        return max(0, min(self.rows, self.vocab_size - self.start))

    def local_rows(self, full: torch.Tensor) -> torch.Tensor:
        """``full`` [V, ...] (a replicated per-token table such as W2) -> this shard's rows [rows, ...], zero
        past the real vocabulary."""
        if full.shape[0] != self.vocab_size:
            raise ValueError(f"expected {self.vocab_size} rows, got {tuple(full.shape)}")
        out = full.new_zeros((self.rows, *full.shape[1:]))
        out[: self.valid_rows] = full[self.start : self.start + self.valid_rows]
        return out

    def mask_padding_(self, local_logits: torch.Tensor) -> torch.Tensor:
        """Set the logits of padding ids in ``local_logits`` [..., rows] to -inf (in place), so no rank drafts
        an id the tokenizer does not have."""
        if self.valid_rows < self.rows:
            local_logits[..., self.valid_rows :] = float("-inf")
        return local_logits

    def embed(self, tokens: torch.Tensor, local_embed: torch.Tensor) -> torch.Tensor:
        """Rows of the full embedding table for ``tokens`` [N] (global ids), from the local rows
        ``local_embed`` [rows, H] of every rank: [N, H], the same on every rank."""
        local = tokens.to(torch.int64) - self.start
        owned = (local >= 0) & (local < self.valid_rows)
        rows = F.embedding(local.clamp(0, self.rows - 1), local_embed).masked_fill(~owned[:, None], 0)
        return self.group.all_reduce(rows.contiguous())

    def greedy(self, local_logits: torch.Tensor) -> torch.Tensor:
        """argmax over the full vocabulary of logits held as shards ``local_logits`` [N, rows]: [N] global ids,
        ties to the lowest id. One all-gather of N (value, id) float32 pairs; ids are exact in float32 below
        2^24."""
        values, index = local_logits.max(dim=-1)  # the first maximum of this shard
        mine = torch.stack((values.to(torch.float32), (index + self.start).to(torch.float32)), dim=-1)
        world, n = self.group.world_size, mine.shape[0]
        gathered = mine.new_empty((world * n, 2))
        self.group.all_gather_into_tensor(gathered, mine.contiguous())
        gathered = gathered.view(world, n, 2)
        best_rank = gathered[..., 0].argmax(dim=0)  # the first maximum: the lowest rank, the lowest ids
        return gathered[best_rank, torch.arange(n, device=gathered.device), 1].to(torch.int64)

    def gather(self, local_logits: torch.Tensor) -> torch.Tensor:
        """The full-vocabulary logits [N, V] from every rank's ``local_logits`` [N, rows] (padding dropped)."""
        world, (n, rows) = self.group.world_size, local_logits.shape
        gathered = local_logits.new_empty((world * n, rows))
        self.group.all_gather_into_tensor(gathered, local_logits.contiguous())
        return gathered.view(world, n, rows).permute(1, 0, 2).reshape(n, world * rows)[:, : self.vocab_size]

    def same_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` as rank 0 drew them, on every rank (a draw depends on each rank's random state)."""
        return self.group.broadcast(tokens.contiguous(), src=0)


def shard_of(group: Optional[Collectives], padded_vocab: int, vocab_size: int) -> Optional[VocabShard]:
    """The :class:`VocabShard` of this rank, or None without tensor parallelism."""
    if group is None or int(group.world_size) == 1:
        return None
    return VocabShard.even(group, padded_vocab, vocab_size)


__all__ = ["Collectives", "TorchDistributedGroup", "VocabShard", "shard_of"]
