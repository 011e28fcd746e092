"""Append-only JSONL progress files that let long evaluations and benchmarks resume after a kill.

Layout: the first line is ``{"settings": {...}}``; every later line is one finished unit of work (a prompt's
result, a concurrency level). A rerun with identical settings keeps those rows; different settings start over.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_rows(path: str | Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows finished by an earlier run with these ``settings``; [] when none (or other settings).

    A torn last line (the process was killed mid-write) is cut from the file, so new rows start cleanly."""
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        path.write_text(text)
    lines = text.splitlines()
    try:
        if not lines or json.loads(lines[0]) != {"settings": json.loads(json.dumps(settings))}:
            return []
    except json.JSONDecodeError:
        return []
    rows = []
    for line in lines[1:]:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def start_rows(path: str | Path, settings: dict[str, Any]) -> None:
    """Begin a fresh progress file for ``settings`` (replacing any other run's)."""
    Path(path).write_text(json.dumps({"settings": settings}) + "\n")


def append_row(path: str | Path, row: dict[str, Any]) -> None:
    """Record one finished unit of work (one whole line, flushed on close)."""
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")
