"""JSONL (and JSONL.gz) files of the training data: read tolerating a torn last line, written atomically."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path
from typing import Any, Iterable, Iterator

log = logging.getLogger(__name__)


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` of a JSONL or JSONL.gz file, blank lines skipped.

    A torn last line (a writer such as :func:`~sglang_domino.training.distill.self_distill` killed mid-line, or
    still writing) is skipped with a warning; a malformed line anywhere else raises ValueError naming the file
    and line."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        lines = [(n, line) for n, line in enumerate(fh, 1) if line.strip()]
    for i, (lineno, line) in enumerate(lines):
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            if i == len(lines) - 1 and not line.endswith("\n"):
                log.warning("%s:%d: torn last line skipped", path, lineno)
                continue
            raise ValueError(f"{path}:{lineno}: not JSON ({exc})") from exc


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)  # readers never see a half-written file
    return n


def load_conversations(path: Path, *, drop_truncated: bool = False) -> list[dict[str, Any]]:
    """Self-distilled conversations from ``path`` (JSONL or JSONL.gz; see :func:`read_jsonl`)."""
    return [item for _, item in read_jsonl(path)
            if not (drop_truncated and item.get("finish_reason") == "length")]


__all__ = [
    "load_conversations",
    "read_jsonl",
    "write_jsonl",
]
