"""What produced a result file: the drafter's weights (sha256), the target, the git commit, the machine, the time.

Every JSON writer in ``benchmarks/`` and ``sglang-domino eval`` stores ``provenance(draft, target)`` under a
``"provenance"`` key, so a published number names the exact weights it measured (the embedded drafter's sha256
is the shipped file's). Standard library only, and torch / sglang are not imported: their versions come from
the installed distributions.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
EMBEDDED_DRAFTER = REPO / "sglang_domino" / "embedded" / "drafter"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
# A target's weights are hashed up to this size (the embedded 135M target: 0.5 GB, about a second);
# above it only the file sizes are recorded.
MAX_HASH_BYTES = 2 << 30


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def weight_files(path: Path) -> list[Path]:
    """The weights of a checkpoint: the file itself, or a directory's safetensors (else other weight) files."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    files = sorted(path.glob("*.safetensors")) or sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    return files


def checkpoint_record(path: str | Path, max_hash_bytes: Optional[int] = None) -> dict[str, Any]:
    """Path, weight files with size and sha256 (``None`` above ``max_hash_bytes`` in total), config.json sha256."""
    p = Path(path)
    record: dict[str, Any] = {"path": str(path), "exists": p.exists()}
    try:
        record["resolved"] = str(p.resolve())
    except OSError:
        pass
    files = weight_files(p)
    total = sum(f.stat().st_size for f in files)
    hash_them = max_hash_bytes is None or total <= max_hash_bytes
    record["weights"] = {f.name: {"bytes": f.stat().st_size, "sha256": sha256_file(f) if hash_them else None}
                         for f in files}
    config = p / "config.json"
    if config.is_file():
        record["config_sha256"] = sha256_file(config)
    return record


def git_state(repo: Path = REPO) -> dict[str, Any]:
    """Commit and whether tracked files differ from it (untracked files do not count)."""
    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine(cpuinfo: str = "/proc/cpuinfo") -> dict[str, Any]:
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        text = ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                 platform.processor() or None)
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    record = {"cpu": model, "cores": os.cpu_count(), "cores_usable": usable,
              "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags, "avx2": "avx2" in flags,
              "platform": platform.platform(), "python": platform.python_version(),
              "torch": _version("torch"), "sglang": _version("sglang"), "sglang_domino": _version("sglang-domino")}
    torch = sys.modules.get("torch")  # only if the writer already imported it
    if torch is not None:
        try:
            if torch.cuda.is_available():
                record["gpu"] = torch.cuda.get_device_name(0)
        except Exception:  # noqa: BLE001 -- a provenance record must not fail the run it describes
            pass
    return record


def provenance(drafter: str | Path | None, target: str | Path | None) -> dict[str, Any]:
    """The record stored under ``"provenance"``; ``drafter`` / ``target`` are checkpoint paths (or hub names)."""
    record: dict[str, Any] = {"time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "argv": list(sys.argv), "git": git_state(), "machine": machine()}
    if drafter is not None:
        record["drafter"] = checkpoint_record(drafter)
        record["drafter"]["embedded"] = _same_path(drafter, EMBEDDED_DRAFTER)
    if target is not None:
        record["target"] = checkpoint_record(target, MAX_HASH_BYTES)
    return record


def write_model_json(path: str | Path, data: dict[str, Any], indent: int = 1) -> Path:
    """Write an arithmetic model's results (``benchmarks/*_model.py``, ``kernel_cost.py``) to ``path`` as JSON, with
    the provenance of a model: no weights, the commit and the machine. Returns the path."""
    import json

    path = Path(path)
    data["provenance"] = provenance(None, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent) + "\n")
    return path


def _same_path(a: str | Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == b.resolve()
    except OSError:
        return False


if __name__ == "__main__":
    import json

    print(json.dumps(provenance(sys.argv[1] if len(sys.argv) > 1 else EMBEDDED_DRAFTER,
                                sys.argv[2] if len(sys.argv) > 2 else None), indent=1))
