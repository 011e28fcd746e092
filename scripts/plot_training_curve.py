"""Plot a training run's metrics.jsonl (loss, accuracies, accept length) to a PNG for the model card.

Usage: python scripts/plot_training_curve.py runs/x/metrics.jsonl OUT.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(metrics_path: str, out_path: str) -> None:
    all_rows = [json.loads(line) for line in open(metrics_path) if line.strip()]
    rows = [r for r in all_rows if "step" in r and "loss" in r]
    val = [r for r in all_rows if "val_accept_len" in r]  # --val-data: held-out, teacher-forced
    steps = [r["step"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(steps, [r["loss"] for r in rows], label="loss (1−λ)·final + λ·base")
    ax1.set(xlabel="step", ylabel="loss", yscale="log", title="Training loss")
    ax1.legend()
    for key, label in (("accuracy", "final accuracy"), ("base_accuracy", "base accuracy"),
                       ("accept_len", "accept_len"), ("base_accept_len", "base accept_len")):
        if key in rows[0]:
            ax2.plot(steps, [r[key] for r in rows], label=label)
    if val:
        vsteps = [r["step"] for r in val]
        ax1.plot(vsteps, [r["val_final_loss"] for r in val], "o-", label="validation final loss")
        ax1.legend()
        ax2.plot(vsteps, [r["val_accept_len"] for r in val], "o-", label="validation accept_len")
        ax2.plot(vsteps, [r["val_base_accept_len"] for r in val], "s--", label="validation base accept_len")
        if all("val_decode_tau" in r for r in val):  # runs before 2026-12-03 did not log it
            ax2.plot(vsteps, [r["val_decode_tau"] for r in val], "^-", label="validation decoding τ (harmonic)")
    ax2.set(xlabel="step", title="Teacher-forced metrics")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
