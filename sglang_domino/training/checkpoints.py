"""What a run writes besides metrics: resumable checkpoints (``OUT/ckpt/step_*.pt``: model, optimizer,
scheduler, RNG states, step, data position) and the best drafter by validation decode τ (``OUT/best_drafter``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch

from sglang_domino.modeling import DominoDrafter
from sglang_domino.training.batching import BatchStream
from sglang_domino.training.trainer import DominoTrainer

CKPT_FORMAT = 1


def latest_checkpoint(ckpt_dir: Path) -> Optional[Path]:
    found = sorted(ckpt_dir.glob("step_*.pt"))
    return found[-1] if found else None


def save_checkpoint(ckpt_dir: Path, trainer: DominoTrainer, stream: BatchStream, keep: int, run_info: dict) -> Path:
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


def read_best(out: Path) -> Optional[dict]:
    path = out / "best_drafter" / "best.json"
    return json.loads(path.read_text()) if path.exists() else None


def keep_best(out: Path, drafter: DominoDrafter, step: int, metrics: dict, best: Optional[dict],
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


def trim_metrics(path: Path, step: int) -> None:
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


__all__ = [
    "BEST_METRIC",
    "CKPT_FORMAT",
    "keep_best",
    "latest_checkpoint",
    "read_best",
    "save_checkpoint",
    "trim_metrics",
]
