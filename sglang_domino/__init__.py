"""sglang-domino: Domino speculative decoding as an SGLang plugin.

Model math: :mod:`.modeling` (drafter), :mod:`.rollout` (drafting), :mod:`.verify` (chain verification),
:mod:`.sampling` (filtered distributions); checkpoint I/O: :mod:`.checkpoint`; settings: :mod:`.settings`;
SGLang glue: :mod:`.plugin`; kernels: :mod:`sglang_domino.kernels`; offline reference loop: :mod:`.offline`.

The names below are imported on first use (PEP 562), so ``import sglang_domino`` -- and the CLI's ``--help`` --
does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "CheckpointError": "checkpoint", "load_drafter": "checkpoint", "save_drafter": "checkpoint",
    "validate_checkpoint": "checkpoint",
    "DominoConfig": "config", "DominoConfigError": "config",
    "DominoDrafter": "modeling",
    "DraftBlock": "rollout", "draft_from_hidden": "rollout", "greedy_rollout": "rollout", "sampling_rollout": "rollout",
    "SamplingParams": "sampling", "filtered_probs": "sampling",
    "VerifyResult": "verify", "verify_greedy": "verify", "verify_sampling": "verify",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sglang_domino' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"sglang_domino.{module}"), name)
    globals()[name] = value
    return value


__all__ = sorted(_EXPORTS)
