"""The target's side of training: :class:`TargetFeatureExtractor` (its hidden states at the feature layers,
running only the layers needed), :class:`FeatureCache` (those features computed once per sequence, keyed by
content, in memory-mapped shards) and :class:`FeatureShardWriter` (which fills the cache; self-distillation
uses it too)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from sglang_domino.training.batching import Example
from sglang_domino.training.errors import TrainingError

FEATURE_CACHE_FORMAT = 2  # 2: content-keyed shards + index.jsonl (grows with the data)


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
            bar = progress_bar(total=len(missing), desc="feature cache", unit="seq", enabled=progress)
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


def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool = True, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=not enabled, dynamic_ncols=True,
                file=sys.stderr)


__all__ = [
    "FEATURE_CACHE_FORMAT",
    "FeatureCache",
    "FeatureShardWriter",
    "TargetFeatureExtractor",
    "progress_bar",
]
