"""Train a Domino drafter (or a plain DFlash backbone) against a frozen Hugging Face target, on CPU or GPU.

    sglang-domino train --target PATH --data FILE.jsonl [FILE.jsonl.gz ...] --out DIR [--feature-cache DIR] [...]

Pipeline:

1. Data: JSONL lines ``{"messages": [...]}`` (tokenised with the target's tokenizer by
   :func:`sglang_domino.training.data.tokenize_conversation`; loss mask = assistant tokens) or pre-tokenised
   ``{"input_ids": [...], "loss_mask": [...]}``. Sequences without a single valid anchor are dropped (counted).
2. Target features: the target's hidden states at ``target_layer_ids`` (HF ``hidden_states[id + 1]``, exactly
   what :func:`sglang_domino.offline.target_features` feeds the drafter at inference). Only the layers up to
   ``max(id) + 1`` run and the target's lm_head never does. ``--feature-cache DIR`` computes them once per
   sequence into memory-mapped fp16/bf16 shards keyed by the sequence's tokens (the target forward otherwise
   dominates every step); a cache reused with more data runs the target on the new sequences only.
3. Step: sample ``--blocks-per-seq`` anchors per sequence, one backbone forward for all blocks (dense SDPA
   mask on CPU, flex-attention block mask on CUDA, :mod:`~sglang_domino.training.masks`), the objective of :mod:`~sglang_domino.training.loss`,
   AdamW + warmup/cosine|linear LR + grad clip, optional bf16 autocast.
4. Checkpoints every ``--save-every`` steps in ``OUT/ckpt/`` (model, optimizer, scheduler, RNG states,
   step, data position): ``--resume`` continues exactly (the next step's loss equals an uninterrupted run's).
   Metrics: ``OUT/metrics.jsonl`` (one line per step) and a tqdm bar. Export: ``OUT/drafter`` in the
   published format (:func:`sglang_domino.checkpoint.save_drafter`).

The target is never updated; the drafter shares its (frozen) input embedding and lm_head.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sglang_domino.config import DominoConfig, DominoConfigError, default_target_layer_ids
from sglang_domino.modeling import DominoDrafter
from sglang_domino.training.data import read_jsonl, tokenize_conversation
from sglang_domino.training.loss import LossVocab, default_decay_gamma, domino_loss, lambda_schedule
from sglang_domino.training.masks import (
    block_input_ids,
    block_positions,
    block_prefix_ids,
    build_block_mask,
    build_flex_block_mask,
    gather_labels,
    sample_anchors,
    teacher_hidden_for_slots,
    valid_anchor_mask,
)

logger = logging.getLogger("sglang_domino.train")

CKPT_FORMAT = 1
FEATURE_CACHE_FORMAT = 2  # 2: content-keyed shards + index.jsonl (grows with the data)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TrainingError(RuntimeError):
    """A training run that cannot start or continue; the message says why."""


# --------------------------------------------------------------------------------------------------- data
@dataclass
class Example:
    input_ids: torch.Tensor  # [T] int64
    loss_mask: torch.Tensor  # [T] bool

    def __len__(self) -> int:
        return int(self.input_ids.numel())


def _tokenizer_loader(target_dir: Path) -> Callable[[], object]:
    cache: dict[str, object] = {}

    def get():
        if "tok" not in cache:
            from transformers import AutoTokenizer

            cache["tok"] = AutoTokenizer.from_pretrained(str(target_dir))
        return cache["tok"]

    return get


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


# ----------------------------------------------------------------------------------------- target side
class TargetFeatureExtractor:
    """``hidden_states[id + 1]`` at ``layer_ids`` of a HF causal LM, running only the layers needed.

    HF replaces the last entry of ``hidden_states`` by the final-normed output, so we keep ``max(id) + 2``
    layers (or all of them when the last layer is requested), which leaves every requested entry identical to
    the full model's (what :func:`sglang_domino.offline.target_features` reads at inference).

    ``with_teacher``: run every layer and append the final-normed hidden state (the lm_head's input, H more
    columns), from which the training loss recomputes the target's next-token distribution (``--distill-weight``).
    """

    def __init__(self, model: nn.Module, layer_ids: Sequence[int], with_teacher: bool = False) -> None:
        self.model = model.eval()
        self.layer_ids = list(layer_ids)
        self.with_teacher = bool(with_teacher)
        self.decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
        layers = getattr(self.decoder, "layers", None)
        total = len(layers) if layers is not None else None
        self.keep = None if total is None else min(total, max(self.layer_ids) + 2)
        if self.keep == total or self.with_teacher:
            self.keep = None

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[N, T] token ids (any device) -> [N, T, n·H] (+H with ``with_teacher``) on the model's device."""
        device = next(self.model.parameters()).device
        input_ids = input_ids.to(device)
        attention_mask = attention_mask.to(device) if attention_mask is not None else None
        layers = self.decoder.layers
        if self.keep is not None:
            self.decoder.layers = nn.ModuleList(list(layers)[: self.keep])
        try:
            out = self.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                               output_hidden_states=True)
        finally:
            self.decoder.layers = layers
        parts = [out.hidden_states[i + 1] for i in self.layer_ids]
        if self.with_teacher:
            parts.append(out.last_hidden_state)
        return torch.cat(parts, dim=-1)

    def batched(self, sequences: Sequence[torch.Tensor], batch_tokens: int = 4096) -> list[torch.Tensor]:
        """Features of many sequences (length-sorted, right-padded sub-batches) -> one [T_i, n·H] each."""
        order = sorted(range(len(sequences)), key=lambda i: -sequences[i].numel())
        out: list[Optional[torch.Tensor]] = [None] * len(sequences)
        i = 0
        while i < len(order):
            longest = sequences[order[i]].numel()
            size = max(1, batch_tokens // max(longest, 1))
            chunk = order[i : i + size]
            ids = torch.zeros(len(chunk), longest, dtype=torch.long)
            att = torch.zeros(len(chunk), longest, dtype=torch.long)
            for row, j in enumerate(chunk):
                ids[row, : sequences[j].numel()] = sequences[j]
                att[row, : sequences[j].numel()] = 1
            feats = self(ids, att).cpu()
            for row, j in enumerate(chunk):
                out[j] = feats[row, : sequences[j].numel()]
            i += len(chunk)
        return out  # type: ignore[return-value]


@dataclass
class FrozenTarget:
    """The target's input embedding and lm_head, frozen (the drafter owns neither)."""

    embed_weight: torch.Tensor  # [V, H] float32
    lm_head_weight: torch.Tensor  # [V, H] float32
    lm_head_bf16: Optional[torch.Tensor] = None

    @classmethod
    def from_model(cls, model: nn.Module, bf16: bool = False) -> "FrozenTarget":
        emb = model.get_input_embeddings().weight
        head = model.get_output_embeddings().weight
        embed_weight = emb.detach().float().clone()
        lm_head = embed_weight if head.data_ptr() == emb.data_ptr() else head.detach().float().clone()
        return cls(embed_weight, lm_head, lm_head.to(torch.bfloat16) if bf16 else None)

    def head_for(self, bf16: bool) -> torch.Tensor:
        return self.lm_head_bf16 if (bf16 and self.lm_head_bf16 is not None) else self.lm_head_weight


class FeatureCache:
    """Target features of training sequences, computed once and keyed by content.

    Layout: ``DIR/meta.json`` (a fingerprint of the target, the feature layers and the dtypes -- not of the
    data), ``DIR/shard_XXXXX.pt`` (dict ``key -> [T_i, n·H]`` in fp16/bf16, memory-mapped on read) and
    ``DIR/index.jsonl`` (one line per finished shard listing its keys, appended only after the shard file is in
    place). A sequence's key is the SHA-1 of its token ids, so the cache grows with the data: adding
    conversations to ``--data`` runs the target on the new sequences only, and reordering or dropping rows
    costs nothing. A crash mid-build loses at most the shard being written. A cache built for another target,
    other ``target_layer_ids`` or another dtype is refused, not misread. A cache built ``with_teacher`` (for
    ``--distill-weight``) stores the target's final hidden state after the features (``[T_i, n·H + H]``,
    ``meta.json`` says so) and serves runs with or without distillation; one built without it cannot serve
    distillation.
    """

    def __init__(self, root: Path, meta: dict, keys: list[str], where: dict[str, str]) -> None:
        self.root, self.meta = root, meta
        self._keys = keys  # example index -> content key
        self._where = where  # content key -> shard file name
        self._shards: dict[str, dict[str, torch.Tensor]] = {}

    @staticmethod
    def fingerprint(target_dir: Path, layer_ids: Sequence[int], dtype: str, target_dtype: str) -> str:
        h = hashlib.sha256()
        cfg = target_dir / "config.json"
        h.update(cfg.read_bytes() if cfg.is_file() else str(target_dir).encode())
        for f in sorted(target_dir.glob("*.safetensors")) + sorted(target_dir.glob("*.bin")):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
        h.update(json.dumps({"layers": list(layer_ids), "dtype": dtype, "target_dtype": target_dtype}).encode())
        return h.hexdigest()

    @staticmethod
    def stores_teacher_hidden(root: str | Path) -> bool:
        """Whether the cache at ``root`` (if any) was built with the target's final hidden state."""
        meta_path = Path(root) / "meta.json"
        return meta_path.is_file() and bool(json.loads(meta_path.read_text()).get("teacher_hidden", False))

    @staticmethod
    def sequence_key(input_ids: torch.Tensor) -> str:
        return hashlib.sha1(input_ids.to(torch.int32).numpy().tobytes()).hexdigest()

    @staticmethod
    def _read_index(root: Path) -> dict[str, str]:
        where: dict[str, str] = {}
        index = root / "index.jsonl"
        if not index.is_file():
            return where
        for line in index.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a torn last line: that shard is rebuilt
                continue
            if (root / entry["shard"]).is_file():
                where.update((k, entry["shard"]) for k in entry["keys"])
        return where

    @staticmethod
    def prepare(root: Path, fingerprint: str, dtype: torch.dtype, *, with_teacher: bool = False) -> dict:
        """Create ``root`` with its ``meta.json``, or check that an existing cache there was built for the same
        target, layers and dtypes (and with the teacher columns iff ``with_teacher``); returns the meta."""
        root.mkdir(parents=True, exist_ok=True)
        meta_path = root / "meta.json"
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            if meta.get("fingerprint") != fingerprint or meta.get("format") != FEATURE_CACHE_FORMAT:
                raise TrainingError(
                    f"--feature-cache {root} was built for another target, other target_layer_ids, another dtype "
                    "or by an older version; point --feature-cache at a new directory (or delete this one)"
                )
            if bool(meta.get("teacher_hidden", False)) != bool(with_teacher):
                raise TrainingError(
                    f"--feature-cache {root} was built without the target's final hidden state that "
                    "--distill-weight needs; point --feature-cache at a new directory" if with_teacher else
                    f"--feature-cache {root} stores the target's final hidden state: open it with_teacher=True"
                )
            return meta
        meta = {"format": FEATURE_CACHE_FORMAT, "fingerprint": fingerprint,
                "dtype": str(dtype).removeprefix("torch."), "teacher_hidden": bool(with_teacher)}
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        return meta

    @classmethod
    def open(
        cls,
        root: str | Path,
        examples: Sequence[Example],
        fingerprint: str,
        dtype: torch.dtype,
        extractor: Callable[[], TargetFeatureExtractor],
        *,
        shard_size: int = 64,
        batch_tokens: int = 4096,
        progress: bool = True,
        with_teacher: bool = False,
    ) -> "FeatureCache":
        root = Path(root)
        meta = cls.prepare(root, fingerprint, dtype, with_teacher=with_teacher)
        keys = [cls.sequence_key(e.input_ids) for e in examples]
        where = cls._read_index(root)
        first_of: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k not in where:
                first_of.setdefault(k, i)
        missing = list(first_of.values())
        if missing:
            ext = extractor()
            bar = _progress(total=len(missing), desc="feature cache", unit="seq", enabled=progress)
            with FeatureShardWriter(root, dtype, shard_size) as writer:
                for i in range(0, len(missing), shard_size):
                    chunk = missing[i : i + shard_size]
                    feats = ext.batched([examples[j].input_ids for j in chunk], batch_tokens=batch_tokens)
                    for j, f in zip(chunk, feats):
                        writer.add(keys[j], f)
                    writer.flush()
                    bar.update(len(chunk))
            where.update(writer.written)
            bar.close()
        return cls(root, meta, keys, where)

    def shard_names(self, count: int) -> list[str]:
        """The shard file of each of the first ``count`` examples (for :class:`BatchStream`'s locality order)."""
        return [self._where[self._keys[i]] for i in range(count)]

    def get(self, index: int) -> torch.Tensor:
        """Features of example ``index``: ``[T, n·H]`` in the cache dtype."""
        key = self._keys[index]
        name = self._where[key]
        if name not in self._shards:
            self._shards[name] = torch.load(self.root / name, mmap=True, weights_only=True)
        return self._shards[name][key]


class FeatureShardWriter:
    """Appends features to a :class:`FeatureCache` directory (set up by :meth:`FeatureCache.prepare`): ``add``
    collects ``key -> [T, n·H]``, ``flush`` writes them as the next ``shard_XXXXX.pt`` and then lists its keys
    in ``index.jsonl`` (so a crash loses at most the shard being written). ``add`` flushes by itself every
    ``shard_size`` sequences; leaving the ``with`` block flushes the rest. Also used by self-distillation, which
    captures the features while the target writes the responses (``distill --feature-cache``)."""

    def __init__(self, root: str | Path, dtype: torch.dtype, shard_size: int = 64) -> None:
        self.root, self.dtype, self.shard_size = Path(root), dtype, shard_size
        taken = [int(p.stem.split("_")[1]) for p in self.root.glob("shard_*.pt")]
        self.next_shard = max(taken, default=-1) + 1
        self.pending: dict[str, torch.Tensor] = {}
        self.written: dict[str, str] = {}  # key -> shard file, everything flushed so far

    def add(self, key: str, features: torch.Tensor) -> None:
        self.pending[key] = features.to(self.dtype).contiguous()
        if len(self.pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the pending features as one shard (its keys join ``written``)."""
        if not self.pending:
            return
        name = f"shard_{self.next_shard:05d}.pt"
        self.next_shard += 1
        torch.save(self.pending, self.root / (name + ".tmp"))
        os.replace(self.root / (name + ".tmp"), self.root / name)
        with open(self.root / "index.jsonl", "a") as index:
            index.write(json.dumps({"shard": name, "keys": list(self.pending)}) + "\n")
        self.written.update((k, name) for k in self.pending)
        self.pending = {}

    def __enter__(self) -> "FeatureShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()


# ------------------------------------------------------------------------------------------- the step
def forward_blocks(
    drafter: DominoDrafter,
    embed_weight: torch.Tensor,
    features: torch.Tensor,
    input_ids: torch.Tensor,
    anchors: torch.Tensor,
    keep: torch.Tensor,
    attention: str = "sdpa",
) -> torch.Tensor:
    """One backbone forward over every anchored block -> draft hidden [N, W, B, H].

    features [N, T, n·H] target features; anchors/keep [N, W] from
    :func:`~sglang_domino.training.masks.sample_anchors`. Context keys at or after the last anchor are never
    visible, so the context is cut there before the projections. attention: ``sdpa`` (dense bool mask) or
    ``flex`` (the same predicate as a sparse flex-attention BlockMask).
    """
    cfg, b = drafter.config, drafter.config.block_size
    n, w = anchors.shape
    context_len = int(anchors[keep].max()) if bool(keep.any()) else 0
    feats = features[:, :context_len].to(drafter.fc.weight.dtype)
    ctx = drafter.project_context(feats)
    ctx_pos = torch.arange(context_len, device=feats.device).expand(n, context_len)
    kv = drafter.context_kv(ctx, ctx_pos)
    ids = block_input_ids(input_ids, anchors, b, cfg.mask_token_id)
    embeds = F.embedding(ids, embed_weight).to(drafter.fc.weight.dtype)
    if attention == "flex":
        mask = build_flex_block_mask(anchors, keep, context_len, b)
    else:
        mask = build_block_mask(anchors, keep, context_len, b)
    hidden = drafter(embeds, block_positions(anchors, b), kv, mask)
    return hidden.view(n, w, b, -1)


class DominoTrainer:
    """One optimiser step at a time over :class:`TrainBatch` es; carries everything a checkpoint must restore."""

    def __init__(
        self,
        drafter: DominoDrafter,
        frozen: FrozenTarget,
        *,
        total_steps: int,
        lr: float = 6e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 0,
        lr_scheduler: str = "cosine",
        min_lr_ratio: float = 0.0,
        grad_clip: float = 1.0,
        blocks_per_seq: int = 4,
        gamma: Optional[float] = None,
        lambda0: float = 1.0,
        lambda_decay_ratio: float = 0.5,
        bf16: bool = False,
        freeze_backbone: bool = False,
        seed: int = 0,
        loss_vocab: Optional[LossVocab] = None,
        attention: str = "sdpa",
        distill_weight: float = 0.0,
    ) -> None:
        self.drafter, self.frozen = drafter, frozen
        if not 0.0 <= float(distill_weight) <= 1.0:
            raise TrainingError(f"--distill-weight must be in [0, 1], got {distill_weight}")
        self.distill_weight = float(distill_weight)
        self.attention = attention
        self.loss_vocab = loss_vocab
        self.config = drafter.config
        self.total_steps = int(total_steps)
        self.blocks_per_seq = int(blocks_per_seq)
        if gamma is None:
            self.gamma = default_decay_gamma(self.config.block_size)
        else:  # <= 0: no decay (uniform slot weights), as in SpecForge
            self.gamma = float(gamma) if gamma > 0 else math.inf
        self.lambda0, self.lambda_decay_ratio = float(lambda0), float(lambda_decay_ratio)
        self.grad_clip, self.bf16 = float(grad_clip), bool(bf16)
        self.freeze_backbone = bool(freeze_backbone)
        if freeze_backbone and not drafter.use_head:
            raise TrainingError("--freeze-backbone trains the Domino head only, but this drafter has no head")
        for name, p in drafter.named_parameters():
            p.requires_grad_(not freeze_backbone or name.startswith(("prefix_gru.", "embed_proj.")))
        self.params = [p for p in drafter.parameters() if p.requires_grad]
        try:  # the fused kernel is ~8x faster than the per-tensor loop on CPU
            self.optimizer = torch.optim.AdamW(self.params, lr=lr, betas=betas, weight_decay=weight_decay, fused=True)
        except (RuntimeError, TypeError, ValueError):
            self.optimizer = torch.optim.AdamW(self.params, lr=lr, betas=betas, weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda_fn(lr_scheduler, self.total_steps, warmup_steps, min_lr_ratio)
        )
        self.generator = torch.Generator().manual_seed(int(seed))
        self.step = 0
        self.skipped_batches = 0

    # -- forward
    def lambda_at(self, step: int) -> float:
        return lambda_schedule(step, self.total_steps, self.lambda_decay_ratio, self.lambda0)

    def compute_loss(self, batch: TrainBatch, lam: float) -> Optional[tuple[torch.Tensor, dict]]:
        """Sample blocks, run the backbone once over all of them, return (loss, metrics); None = no valid anchor."""
        cfg, b = self.config, self.config.block_size
        anchors, keep = sample_anchors(batch.loss_mask, batch.lengths, b, self.blocks_per_seq, self.generator)
        if anchors.shape[1] == 0 or not bool(keep.any()):
            return None
        labels, valid = gather_labels(batch.input_ids, batch.loss_mask, batch.lengths, anchors, keep, b,
                                      cfg.shift_label)
        if not bool(valid.any()):
            return None
        teacher = None
        if self.distill_weight > 0:
            if batch.teacher_hidden is None:
                raise TrainingError("--distill-weight needs the target's final hidden states in the batch")
            teacher = teacher_hidden_for_slots(batch.teacher_hidden, anchors, b, cfg.shift_label)
        device_type = batch.features.device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.bf16):
            with torch.no_grad() if self.freeze_backbone else torch.enable_grad():
                hidden = forward_blocks(self.drafter, self.frozen.embed_weight, batch.features, batch.input_ids,
                                        anchors, keep, self.attention)
            prefix = block_prefix_ids(batch.input_ids, anchors, b)
            loss, metrics = domino_loss(
                self.drafter, hidden, labels, valid, prefix, self.frozen.embed_weight,
                self.frozen.head_for(self.bf16), lam=lam, gamma=self.gamma, loss_vocab=self.loss_vocab,
                teacher_hidden=teacher, distill_weight=self.distill_weight,
            )
        return loss, metrics

    @torch.no_grad()
    def validate(self, batches: Sequence[TrainBatch], seed: int = 0) -> dict:
        """Teacher-forced metrics on held-out batches: ``val_``-prefixed means over ``batches``.

        The anchors come from a generator seeded with ``seed`` (the same blocks every time, and the training
        anchor RNG is untouched, so resume stays exact) and the softmaxes span the full vocabulary, as drafting
        does (``--loss-vocab data`` only speeds up training). The losses are cross-entropies with the data's
        tokens, with or without ``--distill-weight``, so runs stay comparable."""
        saved = self.generator, self.loss_vocab, self.drafter.training, self.distill_weight
        self.generator, self.loss_vocab = torch.Generator().manual_seed(int(seed)), None
        self.distill_weight = 0.0
        self.drafter.eval()
        totals: dict[str, float] = {}
        blocks = 0.0
        try:
            for batch in batches:
                out = self.compute_loss(batch, self.lambda_at(self.step))
                if out is None:
                    continue
                metrics = out[1]
                weight = metrics["num_blocks"]
                blocks += weight
                for key in ("loss", "final_loss", "base_loss", "accuracy", "base_accuracy", "accept_len",
                            "base_accept_len", "inv_accept_len", "base_inv_accept_len"):
                    totals[key] = totals.get(key, 0.0) + metrics[key] * weight
        finally:
            self.generator, self.loss_vocab = saved[0], saved[1]
            self.drafter.train(saved[2])
            self.distill_weight = saved[3]
        out = {f"val_{k}": v / max(blocks, 1.0) for k, v in totals.items()} | {"val_blocks": blocks}
        if blocks:  # the τ decoding would see: harmonic mean of tokens per step (see domino_loss)
            out["val_decode_tau"] = 1.0 / out["val_inv_accept_len"]
            out["val_base_decode_tau"] = 1.0 / out["val_base_inv_accept_len"]
        return out

    def train_step(self, batch: TrainBatch) -> Optional[dict]:
        """One optimiser step; returns its metrics, or None (and counts it) when the batch has no valid anchor."""
        lam = self.lambda_at(self.step)
        self.drafter.train()
        out = self.compute_loss(batch, lam)
        if out is None:
            self.skipped_batches += 1
            return None
        loss, metrics = out
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip))
        else:
            grad_norm = float(torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in self.params if p.grad is not None])))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        metrics.update(step=self.step, lr=lr, grad_norm=grad_norm, skipped_batches=self.skipped_batches)
        return metrics

    # -- state
    def state_dict(self) -> dict:
        return {
            "model": self.drafter.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "skipped_batches": self.skipped_batches,
            "anchor_rng": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["config"] != self.config.to_dict():
            raise TrainingError("cannot resume: the checkpoint's drafter config differs from this run's")
        self.drafter.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.skipped_batches = int(state["skipped_batches"])
        self.generator.set_state(state["anchor_rng"])
        torch.set_rng_state(state["torch_rng"])


def resolve_attention(choice: str, device: torch.device) -> str:
    """``auto`` -> flex attention on CUDA (sparse block mask), the SDPA dense mask elsewhere. Both give the same
    hidden states (tested on CPU, forward only: torch's flex attention has no backward pass on CPU)."""
    if choice == "flex" and device.type == "cpu":
        raise TrainingError("--attention flex: torch's flex attention has no backward pass on CPU; use sdpa")
    if choice != "auto":
        return choice
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return "sdpa"
    return "flex" if device.type == "cuda" else "sdpa"


def lr_lambda_fn(kind: str, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> Callable[[int], float]:
    """Linear warmup to 1, then cosine / linear decay to ``min_lr_ratio`` (or constant)."""
    if kind not in ("cosine", "linear", "constant"):
        raise TrainingError(f"--lr-scheduler {kind!r}: expected cosine, linear or constant")

    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if kind == "cosine":
            return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - progress)

    return fn


# -------------------------------------------------------------------------------------------- set-up
def _text_config(cfg):
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def _rope_theta(cfg) -> float:
    theta = getattr(cfg, "rope_theta", None)
    if theta is None:
        params = getattr(cfg, "rope_parameters", None) or {}
        theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(theta or 10000.0)


def resolve_mask_token_id(args: argparse.Namespace, target_dir: Path, vocab_size: int) -> int:
    """--mask-token-id, else the prepared target's record, else the tokenizer's mask token, else the embedded default."""
    if args.mask_token_id is not None:
        return int(args.mask_token_id)
    try:
        from sglang_domino.embedded.target import DEFAULT_MASK_TOKEN_ID, MARKER
    except ImportError:  # pragma: no cover - the embedded module ships with the package
        DEFAULT_MASK_TOKEN_ID, MARKER = 4, ".sglang-domino-prepared.json"
    marker = target_dir / MARKER
    if marker.is_file():
        try:
            return int(json.loads(marker.read_text())["mask_token_id"])
        except (ValueError, KeyError, TypeError):
            pass
    if (target_dir / "tokenizer_config.json").is_file() or (target_dir / "tokenizer.json").is_file():
        try:
            tok_mask = getattr(_tokenizer_loader(target_dir)(), "mask_token_id", None)
        except Exception:  # noqa: BLE001 - a tokenizer that cannot load just has no mask token to offer
            tok_mask = None
        if tok_mask is not None:
            return int(tok_mask)
    if DEFAULT_MASK_TOKEN_ID >= vocab_size:
        raise TrainingError("no mask token known for this target: pass --mask-token-id")
    logger.warning("no mask token recorded for %s; using the embedded default id %d (pass --mask-token-id to "
                   "choose)", target_dir, DEFAULT_MASK_TOKEN_ID)
    return DEFAULT_MASK_TOKEN_ID


def build_drafter_config(args: argparse.Namespace, target_cfg, mask_token_id: int) -> DominoConfig:
    cfg = _text_config(target_cfg)
    hidden, heads = int(cfg.hidden_size), int(cfg.num_attention_heads)
    num_target_layers = int(cfg.num_hidden_layers)
    layer_ids = args.target_layer_ids or default_target_layer_ids(num_target_layers, args.num_layers)
    head = not args.no_head
    return DominoConfig(
        hidden_size=hidden,
        intermediate_size=int(args.intermediate_size or cfg.intermediate_size),
        num_hidden_layers=int(args.num_layers),
        num_attention_heads=heads,
        num_key_value_heads=int(getattr(cfg, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(cfg, "head_dim", None) or hidden // heads),
        vocab_size=int(cfg.vocab_size),
        block_size=int(args.block_size),
        target_layer_ids=list(layer_ids),
        num_target_layers=num_target_layers,
        mask_token_id=mask_token_id,
        rope_theta=_rope_theta(cfg),
        rms_norm_eps=float(getattr(cfg, "rms_norm_eps", 1e-6)),
        max_position_embeddings=int(getattr(cfg, "max_position_embeddings", 32768)),
        projector_type="domino" if head else None,
        shift_label=bool(args.shift_label),
        pure_draft_prefix_len=int(args.pure_draft_prefix_len) if head else 0,
        gru_hidden_dim=int(args.gru_hidden_dim or hidden) if head else None,
        emb_dim=int(args.emb_dim) if head else None,
    )


def build_drafter(args: argparse.Namespace, target_cfg, mask_token_id: int) -> DominoDrafter:
    """A fresh drafter, or ``--init-from`` a checkpoint (adding a fresh head to a head-less one unless --no-head)."""
    if not args.init_from:
        torch.manual_seed(args.seed)
        return DominoDrafter(build_drafter_config(args, target_cfg, mask_token_id))
    from sglang_domino.checkpoint import load_drafter

    src = load_drafter(args.init_from, dtype=torch.float32)
    if args.no_head:
        if src.use_head:
            src.drop_head()
        return src.train()
    if src.use_head:
        return src.train()
    d = src.config.to_dict()
    d["dflash_config"].update(
        projector_type="domino", pure_draft_prefix_len=int(args.pure_draft_prefix_len),
        emb_dim=int(args.emb_dim), gru_hidden_dim=int(args.gru_hidden_dim or src.config.hidden_size),
        shift_label=bool(src.config.shift_label),
    )
    torch.manual_seed(args.seed)
    model = DominoDrafter(DominoConfig.from_dict(d))
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("prefix_gru.", "embed_proj.")) for k in missing), (missing, unexpected)
    return model.train()


def init_output_norm_from_target(drafter: DominoDrafter, target: nn.Module) -> None:
    """Start the drafter's final RMSNorm gain at the target's final-norm gain.

    Why: the drafter's output goes through the target's frozen lm_head, which was trained on hidden states
    scaled by that gain (SmolLM2's averages 1.8 per channel, not 1); starting from it leaves the drafter only the
    direction of the hidden state to learn."""
    decoder = target.get_decoder() if hasattr(target, "get_decoder") else getattr(target, "model", None)
    norm = getattr(decoder, "norm", None)
    weight = getattr(norm, "weight", None)
    if weight is None or tuple(weight.shape) != tuple(drafter.norm.weight.shape):
        logger.warning("warning: the target has no final norm of shape %s; the drafter's norm starts at ones",
                       tuple(drafter.norm.weight.shape))
        return
    with torch.no_grad():
        drafter.norm.weight.copy_(weight.float())


def _progress(total: int, desc: str, unit: str = "it", enabled: bool = True, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=not enabled, dynamic_ncols=True,
                file=sys.stderr)


def _latest_checkpoint(ckpt_dir: Path) -> Optional[Path]:
    found = sorted(ckpt_dir.glob("step_*.pt"))
    return found[-1] if found else None


def _save_checkpoint(ckpt_dir: Path, trainer: DominoTrainer, stream: BatchStream, keep: int, run_info: dict) -> Path:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step_{trainer.step:08d}.pt"
    state = {"format": CKPT_FORMAT, "trainer": trainer.state_dict(), "stream": stream.state_dict(), "run": run_info}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    if keep > 0:
        for old in sorted(ckpt_dir.glob("step_*.pt"))[:-keep]:
            old.unlink(missing_ok=True)
    return path


BEST_METRIC = "val_decode_tau"


def _read_best(out: Path) -> Optional[dict]:
    path = out / "best_drafter" / "best.json"
    return json.loads(path.read_text()) if path.exists() else None


def _keep_best(out: Path, drafter: DominoDrafter, step: int, metrics: dict, best: Optional[dict],
               dtype: torch.dtype) -> Optional[dict]:
    """Export the drafter to ``OUT/best_drafter`` when its validation decode τ is the best of the run so far.

    Why: on this little data the drafter over-fits (v3: validation CE rising from step 750, slot accuracy
    peaking at step 1200 of 1800), so the last step is not the best one; ``val_decode_tau`` is the validation
    figure that tracks decoding τ (see :func:`sglang_domino.training.loss.domino_loss`). ``best.json`` beside
    the weights says which step it is, and survives ``--resume``."""
    value = metrics.get(BEST_METRIC)
    if value is None or (best is not None and value <= best["value"]):
        return best
    from sglang_domino.checkpoint import save_drafter

    target = save_drafter(drafter, out / "best_drafter", dtype=dtype)  # state_dict: no train/eval switch needed
    best = {"step": step, "metric": BEST_METRIC, "value": value,
            "val_base_decode_tau": metrics.get("val_base_decode_tau"), "val_accept_len": metrics.get("val_accept_len")}
    (Path(target) / "best.json").write_text(json.dumps(best, indent=2) + "\n")
    return best


def _trim_metrics(path: Path, step: int) -> None:
    """Drop metric lines past ``step`` (written by the interrupted run after its last checkpoint)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("step", 0) <= step:
            kept.append(line)
    path.write_text("".join(k + "\n" for k in kept))


# ---------------------------------------------------------------------------------------------- train
def train(args: argparse.Namespace) -> dict:
    """Run a training job described by the ``train`` parser's arguments; returns a summary dict."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.cache_only and not args.feature_cache:
        raise TrainingError("--cache-only needs --feature-cache DIR")
    if args.shard_window < 0 or (args.shard_window and not args.feature_cache):
        raise TrainingError(f"--shard-window {args.shard_window}: needs --feature-cache DIR and K >= 0")
    if args.validate_only and (not (args.val_data and args.init_from) or args.resume):
        raise TrainingError("--validate-only needs --val-data FILE and --init-from DRAFTER (the drafter to measure), "
                            "and trains nothing (no --resume)")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"--device {args.device}: CUDA is not available on this machine")
    if args.threads:
        torch.set_num_threads(int(args.threads))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.target is None:
        from sglang_domino.embedded.target import prepare_target

        target_dir = prepare_target()
    else:
        target_dir = Path(args.target)
    from transformers import AutoConfig, AutoModelForCausalLM

    target_cfg = AutoConfig.from_pretrained(str(target_dir))
    text_cfg = _text_config(target_cfg)
    mask_token_id = resolve_mask_token_id(args, target_dir, int(text_cfg.vocab_size))
    drafter = build_drafter(args, target_cfg, mask_token_id)
    config = drafter.config
    try:
        config.validate_for_target(num_target_layers=int(text_cfg.num_hidden_layers),
                                   hidden_size=int(text_cfg.hidden_size), vocab_size=int(text_cfg.vocab_size))
    except DominoConfigError as exc:
        raise TrainingError(f"the drafter does not fit the target: {exc}") from exc
    try:
        config.validate_for_target(num_target_layers=int(text_cfg.num_hidden_layers),
                                   hidden_size=int(text_cfg.hidden_size), vocab_size=int(text_cfg.vocab_size),
                                   serving=True)
    except DominoConfigError as exc:
        logger.warning("warning: %s (SGLang serving will refuse this drafter)", exc)

    if args.bf16 or args.target_dtype == "bfloat16":
        cap = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else ""
        if not torch.cuda.is_available() and "AVX512" not in cap.upper():
            logger.warning("warning: bf16 requested on a CPU without bf16 matmul units (%s): expect it to be tens "
                           "of times slower than float32 (measured 93 s vs 3.6 s per step on an AVX2 machine)", cap)

    examples_all = load_examples(args.data, _tokenizer_loader(target_dir), args.max_len, args.limit)
    examples = [e for e in examples_all if usable(e, config.block_size)]
    dropped = len(examples_all) - len(examples)
    if not examples:
        raise TrainingError(f"no sequence of --data has a valid anchor for block_size={config.block_size} "
                            "(two consecutive loss-masked tokens and a whole block inside the sequence)")
    num_tokens = sum(len(e) for e in examples)
    logger.info("data: %d sequences (%d dropped: no valid anchor), %d tokens, %d supervised",
                len(examples), dropped, num_tokens, sum(int(e.loss_mask.sum()) for e in examples))

    val_examples: list[Example] = []
    if args.val_data:
        val_examples = [e for e in load_examples(args.val_data, _tokenizer_loader(target_dir), args.max_len)
                        if usable(e, config.block_size)]
        train_keys = {FeatureCache.sequence_key(e.input_ids) for e in examples}
        overlap = sum(FeatureCache.sequence_key(e.input_ids) in train_keys for e in val_examples)
        if overlap:
            raise TrainingError(f"--val-data shares {overlap} sequences with --data; hold them out of --data")
        if not val_examples:
            raise TrainingError("--val-data has no sequence with a valid anchor")
        logger.info("validation: %d sequences, every %d steps", len(val_examples), args.val_every)

    loss_vocab = None
    if args.loss_vocab == "data":
        loss_vocab = LossVocab.from_token_ids(torch.cat([e.input_ids for e in examples]), int(text_cfg.vocab_size))
        logger.info("loss vocabulary: the %d distinct tokens of the training sequences (of %d)", len(loss_vocab),
                    int(text_cfg.vocab_size))

    target_dtype = _DTYPES[args.target_dtype]
    target = AutoModelForCausalLM.from_pretrained(str(target_dir), dtype=target_dtype).eval().to(device)
    for p in target.parameters():
        p.requires_grad_(False)
    frozen = FrozenTarget.from_model(target, bf16=args.bf16)
    if not args.init_from and args.norm_from_target:
        init_output_norm_from_target(drafter, target)
    drafter.to(device)
    distill = args.distill_weight > 0
    # A cache built for distillation serves every run; a new sequence added to it must carry the teacher too.
    teacher_columns = distill or bool(args.feature_cache and FeatureCache.stores_teacher_hidden(args.feature_cache))
    extractor = TargetFeatureExtractor(target, config.target_layer_ids, with_teacher=teacher_columns)
    cache: Optional[FeatureCache] = None
    if args.feature_cache:
        fp = FeatureCache.fingerprint(target_dir, config.target_layer_ids, args.feature_dtype, args.target_dtype)
        t0 = time.time()
        cache = FeatureCache.open(args.feature_cache, examples + val_examples, fp, _DTYPES[args.feature_dtype],
                                  lambda: extractor,
                                  batch_tokens=args.feature_batch_tokens, progress=not args.no_progress,
                                  with_teacher=teacher_columns)
        logger.info("feature cache %s ready (%.1f s)", args.feature_cache, time.time() - t0)
        if args.cache_only:
            return {"feature_cache": str(args.feature_cache), "num_sequences": len(examples)}
        # Only the frozen embedding / lm_head copies are needed from here on.
        extractor, target = None, None

    steps_per_epoch = math.ceil(len(examples) / args.batch_size)
    total_steps = args.max_steps or max(1, int(args.epochs * steps_per_epoch))
    warmup = args.warmup_steps if args.warmup_steps is not None else int(args.warmup_ratio * total_steps)
    lambda0 = args.lambda0 if args.lambda0 is not None else (0.0 if args.freeze_backbone else 1.0)
    trainer = DominoTrainer(
        drafter, frozen, total_steps=total_steps, lr=args.lr, weight_decay=args.weight_decay,
        warmup_steps=warmup, lr_scheduler=args.lr_scheduler, min_lr_ratio=args.min_lr_ratio,
        grad_clip=args.grad_clip, blocks_per_seq=args.blocks_per_seq, gamma=args.loss_decay_gamma,
        lambda0=lambda0, lambda_decay_ratio=args.lambda_decay_ratio, bf16=args.bf16,
        freeze_backbone=args.freeze_backbone, seed=args.seed, loss_vocab=loss_vocab,
        attention=resolve_attention(args.attention, device), distill_weight=args.distill_weight,
    )
    groups = cache.shard_names(len(examples)) if cache is not None and args.shard_window > 0 else None
    if cache is not None and groups is None:
        cache_bytes = sum((Path(args.feature_cache) / name).stat().st_size for name in set(cache.shard_names(len(examples))))
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if cache_bytes > 0.6 * ram:
            logger.warning("the training features take %.1f GB of this machine's %.1f GB of memory: random order will "
                           "wait on the disk; --shard-window 16 reads them a few shards at a time",
                           cache_bytes / 1e9, ram / 1e9)
    stream = BatchStream(len(examples), args.batch_size, args.seed, groups=groups, window=args.shard_window)
    n_params = sum(p.numel() for p in drafter.parameters())
    n_train = sum(p.numel() for p in trainer.params)
    logger.info("drafter: %.2f M params (%.2f M trainable), head=%s, shift_label=%s, B=%d, layers=%s, steps=%d",
                n_params / 1e6, n_train / 1e6, config.has_head, config.shift_label, config.block_size,
                config.target_layer_ids, total_steps)
    run_info = {"total_steps": total_steps, "num_examples": len(examples), "args": _jsonable(vars(args))}

    n_feat = len(config.target_layer_ids) * int(text_cfg.hidden_size)
    n_columns = n_feat + (int(text_cfg.hidden_size) if distill else 0)  # a teacher cache's extra H only if used

    def features_for(idx: list[int], ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if cache is not None:
            t = ids.shape[1]
            feats = torch.zeros(len(idx), t, n_columns, dtype=torch.float32)
            for row, i in enumerate(idx):
                f = cache.get(i)
                feats[row, : f.shape[0]] = f[:, :n_columns].float()
            return feats
        att = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
        feats = extractor(ids, att).float().cpu()
        return feats * att[:, :, None]

    def batch_of(idx: list[int]) -> TrainBatch:
        """Sequences ``idx`` of ``examples + val_examples`` (the feature cache's numbering) on the device."""
        ids, lmask, lengths = pad_batch([examples[i] if i < len(examples) else val_examples[i - len(examples)]
                                         for i in idx])
        columns = features_for(idx, ids, lengths).to(device)
        teacher = columns[..., n_feat:] if distill else None  # the target's final hidden state
        return TrainBatch(ids.to(device), lmask.to(device), lengths.to(device), columns[..., :n_feat], teacher)

    def val_batches() -> Iterator[TrainBatch]:
        offset = len(examples)
        for lo in range(0, len(val_examples), args.batch_size):
            yield batch_of(list(range(offset + lo, offset + min(lo + args.batch_size, len(val_examples)))))

    if args.validate_only:
        result = {"drafter": str(args.init_from), **trainer.validate(list(val_batches()), seed=args.seed)}
        (out / "validation.json").write_text(json.dumps(result, indent=2) + "\n")
        logger.info("validation of %s: %s", args.init_from, json.dumps(result))
        return result

    ckpt_dir = out / "ckpt"
    metrics_path = out / "metrics.jsonl"
    if args.resume:
        ckpt = _latest_checkpoint(ckpt_dir) if args.resume == "auto" else Path(args.resume)
        if ckpt is None or not ckpt.is_file():
            raise TrainingError(f"--resume: no checkpoint in {ckpt_dir}" if ckpt is None else f"--resume {ckpt}: missing")
        state = torch.load(ckpt, weights_only=True)
        if state.get("format") != CKPT_FORMAT:
            raise TrainingError(f"{ckpt}: unknown checkpoint format {state.get('format')!r}")
        if state["run"]["total_steps"] != total_steps:
            raise TrainingError(f"cannot resume: {ckpt} was written by a run of {state['run']['total_steps']} steps, "
                                f"this run has {total_steps} (λ and the LR schedule depend on it)")
        trainer.load_state_dict(state["trainer"])
        stream.load_state_dict(state["stream"])
        _trim_metrics(metrics_path, trainer.step)
        logger.info("resumed from %s at step %d", ckpt, trainer.step)
    elif metrics_path.exists():
        metrics_path.unlink()

    bar = _progress(total=total_steps, desc="train", unit="step", enabled=not args.no_progress, initial=trainer.step)
    last: dict = {}
    best = _read_best(out) if args.resume else None
    if val_examples and trainer.step == 0:  # where the run starts (e.g. the --init-from drafter)
        m0 = {"step": 0, **trainer.validate(list(val_batches()), seed=args.seed)}
        with metrics_path.open("a") as mfh:
            mfh.write(json.dumps(m0) + "\n")
        best = _keep_best(out, drafter, 0, m0, None, _DTYPES[args.export_dtype])
    consecutive_skips = 0
    t_step = time.time()
    with metrics_path.open("a") as mfh:
        while trainer.step < total_steps:
            m = trainer.train_step(batch_of(stream.next_indices()))
            if m is None:
                consecutive_skips += 1
                if consecutive_skips > 10 * steps_per_epoch + 10:
                    raise TrainingError("no batch with a valid anchor in many attempts")
                continue
            consecutive_skips = 0
            now = time.time()
            m.update(epoch=stream.epoch, step_time=round(now - t_step, 4))
            if val_examples and (trainer.step % args.val_every == 0 or trainer.step == total_steps):
                m.update(trainer.validate(list(val_batches()), seed=args.seed))
                bar.write(f"step {trainer.step}: validation decode τ {m['val_decode_tau']:.3f} "
                          f"(backbone {m['val_base_decode_tau']:.3f}), accept_len {m['val_accept_len']:.3f}, "
                          f"loss {m['val_final_loss']:.3f}")
                best = _keep_best(out, drafter, trainer.step, m, best, _DTYPES[args.export_dtype])
            t_step = time.time()
            last = m
            if trainer.step % args.log_every == 0 or trainer.step == total_steps:
                mfh.write(json.dumps(m) + "\n")
                mfh.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['accuracy']:.3f}", tau=f"{m['accept_len']:.2f}",
                            lam=f"{m['lambda']:.2f}")
            if args.save_every and (trainer.step % args.save_every == 0 or trainer.step == total_steps):
                _save_checkpoint(ckpt_dir, trainer, stream, args.keep_checkpoints, run_info)
            if args.stop_at_step and trainer.step >= args.stop_at_step and trainer.step < total_steps:
                if not args.save_every or trainer.step % args.save_every:
                    _save_checkpoint(ckpt_dir, trainer, stream, args.keep_checkpoints, run_info)
                bar.close()
                logger.info("stopped at step %d (--stop-at-step); continue with --resume", trainer.step)
                return {"stopped_at": trainer.step, "last": last, "skipped_batches": trainer.skipped_batches}
    bar.close()

    from sglang_domino.checkpoint import save_drafter

    drafter.eval()
    export = save_drafter(drafter, out / "drafter", dtype=_DTYPES[args.export_dtype])
    summary = {"drafter": str(export), "steps": trainer.step, "skipped_batches": trainer.skipped_batches,
               "dropped_sequences": dropped, "num_sequences": len(examples), "last": last,
               "best": best, "config": config.to_dict()}
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    logger.info("exported %s", export)
    return summary


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if callable(v):
            continue
        out[k] = v if isinstance(v, (int, float, str, bool, type(None), list)) else str(v)
    return out


# ------------------------------------------------------------------------------------------------ CLI
def _layer_ids(text: str) -> list[int]:
    return [int(x) for x in text.replace(",", " ").split()]


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train`` on the ``sglang-domino`` subcommands."""
    p = subparsers.add_parser("train", help="train a Domino drafter (or a plain DFlash backbone) for a target",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--target", default=None, help="HF target dir (default: the embedded SmolLM2-135M-Instruct)")
    io.add_argument("--data", required=True, nargs="+", metavar="FILE",
                    help='JSONL (or .jsonl.gz) files of {"messages": [...]} conversations or pre-tokenised '
                         '{"input_ids", "loss_mask"} rows, e.g. data/distilled/*.jsonl.gz')
    io.add_argument("--val-data", nargs="+", default=None, metavar="FILE",
                    help="held-out conversations (same formats as --data, none of them in --data): teacher-forced "
                         "val_accept_len / val_base_accept_len / val losses in metrics.jsonl every --val-every steps")
    io.add_argument("--val-every", type=int, default=100, help="steps between validations (and at the end)")
    io.add_argument("--validate-only", action="store_true",
                    help="measure the --init-from drafter on --val-data (OUT/validation.json) and exit; no training")
    io.add_argument("--out", required=True, help="output dir: ckpt/, metrics.jsonl, drafter/ (published format)")
    io.add_argument("--max-len", type=int, default=1024, help="tokens per sequence (truncated)")
    io.add_argument("--limit", type=int, default=None, help="use the first N rows of --data only")
    io.add_argument("--feature-cache", default=None, metavar="DIR",
                    help="compute the target features once per sequence into DIR (fp16/bf16 shards, memory-mapped, "
                         "keyed by the tokens: reusing DIR with more data computes the new sequences only)")
    io.add_argument("--cache-only", action="store_true",
                    help="fill --feature-cache and exit (e.g. while more data is still being distilled)")
    io.add_argument("--feature-dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    io.add_argument("--feature-batch-tokens", type=int, default=4096, help="tokens per target forward when caching")
    io.add_argument("--shard-window", type=int, default=0, metavar="K",
                    help="with --feature-cache: order each epoch K random cache shards at a time (0 = fully random); "
                         "for a cache larger than memory, where random order waits on the disk (e.g. 16)")
    io.add_argument("--target-dtype", default="float32", choices=["float32", "bfloat16"],
                    help="dtype of the target forward that produces the features (bf16 only pays on CPUs with "
                         "bf16 units or on GPU; without AVX512-BF16/AMX it is ~40x slower than fp32)")
    io.add_argument("--export-dtype", default="bfloat16", choices=["bfloat16", "float32"])

    m = p.add_argument_group("drafter shape (ignored with --init-from, which brings its own)")
    m.add_argument("--num-layers", type=int, default=2, help="draft decoder layers")
    m.add_argument("--block-size", type=int, default=16)
    m.add_argument("--target-layer-ids", type=_layer_ids, default=None,
                   help="comma-separated target layers (default: DFlash's round(1 + i(T-4)/(L-1)))")
    m.add_argument("--intermediate-size", type=int, default=None, help="draft MLP width (default: the target's)")
    m.add_argument("--no-head", action="store_true", help="train a plain DFlash backbone (projector_type None)")
    m.add_argument("--gru-hidden-dim", type=int, default=None, help="Domino GRU width (default: hidden size)")
    m.add_argument("--emb-dim", type=int, default=256, help="rank of the Domino correction (embed_proj)")
    m.add_argument("--shift-label", action=argparse.BooleanOptionalAction, default=False,
                   help="slot k predicts x[a+k+1] (default: off, DFlash's slot k predicts x[a+k])")
    m.add_argument("--pure-draft-prefix-len", type=int, default=1,
                   help="leading proposal slots left uncorrected (1 = public checkpoints, upstream SGLang)")
    m.add_argument("--mask-token-id", type=int, default=None,
                   help="MASK id (default: the prepared target's record / tokenizer mask token / embedded default)")
    m.add_argument("--init-from", default=None, metavar="CKPT", help="start from a published-format drafter")
    m.add_argument("--norm-from-target", action=argparse.BooleanOptionalAction, default=True,
                   help="a fresh drafter's final norm starts at the target's final-norm gain")
    m.add_argument("--freeze-backbone", action="store_true",
                   help="train only the Domino head (prefix_gru, embed_proj) on a frozen backbone")

    o = p.add_argument_group("optimisation")
    o.add_argument("--max-steps", type=int, default=None, help="optimiser steps (default: --epochs over the data)")
    o.add_argument("--epochs", type=float, default=1.0)
    o.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    o.add_argument("--blocks-per-seq", type=int, default=4, help="anchored blocks per sequence per step")
    o.add_argument("--lr", type=float, default=6e-4)
    o.add_argument("--weight-decay", type=float, default=0.0)
    o.add_argument("--lr-scheduler", default="cosine", choices=["cosine", "linear", "constant"])
    o.add_argument("--warmup-ratio", type=float, default=0.04)
    o.add_argument("--warmup-steps", type=int, default=None, help="overrides --warmup-ratio")
    o.add_argument("--min-lr-ratio", type=float, default=0.0)
    o.add_argument("--grad-clip", type=float, default=1.0, help="max grad norm (0 = off)")
    o.add_argument("--loss-decay-gamma", type=float, default=None,
                   help="per-slot weight exp(-(k-offset)/gamma) (default: 7 for B=16, 5 for 10, 4 for 8, "
                        "interpolated otherwise; <= 0: uniform weights). The defaults suit drafters that accept "
                        "~5+ tokens; one that accepts ~2 gained with 2 (the embedded drafter v7)")
    o.add_argument("--lambda0", type=float, default=None,
                   help="initial base-loss weight (default 1; 0 with --freeze-backbone, where the base term is constant)")
    o.add_argument("--lambda-decay-ratio", type=float, default=0.5, help="λ reaches 0 at this fraction of training")
    o.add_argument("--bf16", action="store_true",
                   help="bf16 autocast, fp32 master weights (a loss on CPUs without bf16 matmul units)")
    o.add_argument("--loss-vocab", choices=["full", "data"], default="full",
                   help="softmax over the full vocabulary, or over the tokens that occur in the training sequences "
                        "(several times cheaper on CPU; the exported drafter still drafts over the full vocabulary)")
    o.add_argument("--distill-weight", type=float, default=0.0, metavar="ALPHA",
                   help="soft-label distillation: each slot's target is (1-ALPHA)·one-hot(data token) + "
                        "ALPHA·softmax(target logits at that position), the target's whole next-token distribution "
                        "rather than its argmax only (the feature cache then also stores the target's final hidden "
                        "state; a cache built without it cannot serve this); validation losses stay hard CE")
    o.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu; CUDA is untested here)")
    o.add_argument("--attention", choices=["auto", "sdpa", "flex"], default="auto",
                   help="block-mask attention: flex (sparse BlockMask) or sdpa (dense mask); auto = flex on CUDA")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")

    r = p.add_argument_group("checkpoints and logging")
    r.add_argument("--save-every", type=int, default=200, help="checkpoint every N steps into OUT/ckpt (0 = off)")
    r.add_argument("--keep-checkpoints", type=int, default=2, help="keep the newest N checkpoints (0 = all)")
    r.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from the newest OUT/ckpt checkpoint (or the given file) exactly")
    r.add_argument("--stop-at-step", type=int, default=None, help="stop (with a checkpoint) after this step")
    r.add_argument("--log-every", type=int, default=1, help="metrics.jsonl line every N steps")
    r.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.set_defaults(func=_cmd_train)
    return p


def _cmd_train(args: argparse.Namespace) -> int:
    try:
        summary = train(args)
    except TrainingError as exc:
        print(f"sglang-domino train: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: summary[k] for k in ("drafter", "steps", "stopped_at", "feature_cache", "num_sequences")
                      if k in summary}))
    return 0


def parse_train_args(argv: Sequence[str]) -> argparse.Namespace:
    """The ``train`` arguments parsed standalone (tests, scripts)."""
    parser = argparse.ArgumentParser(prog="sglang-domino")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    return parser.parse_args(["train", *argv])


__all__ = [
    "BatchStream",
    "DominoTrainer",
    "Example",
    "FeatureCache",
    "FeatureShardWriter",
    "FrozenTarget",
    "TargetFeatureExtractor",
    "TrainBatch",
    "TrainingError",
    "add_train_parser",
    "load_examples",
    "parse_train_args",
    "train",
]
