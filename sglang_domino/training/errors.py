"""The error a training run raises on purpose (``sglang-domino train`` prints its message and exits 2)."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """A training run that cannot start or continue; the message says why."""


__all__ = [
    "TrainingError",
]
