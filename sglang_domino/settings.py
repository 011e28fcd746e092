"""Every setting of sglang-domino outside the SGLang command line, resolved once per process.

Two sources, one object each:

* :class:`EnvSettings` -- the ``SGLANG_DOMINO_*`` environment variables (:data:`VARIABLES` lists them all). Read
  by :func:`environment_settings` once per process; nothing else in the package reads the environment. A bad
  value raises :class:`SettingsError`, one line naming the variable: a Domino server refuses to start on it
  (``plugin.validate``), before any process is spawned.
* :class:`DominoSettings` -- what one Domino server runs with: the drafter checkpoint (validated and its config
  read once per process by :func:`server_settings`, however many SGLang hooks ask) plus the environment. The
  worker receives it whole and hands each part to the code that needs it as an argument.

This module imports neither torch nor SGLang, so the CLI and the launcher can use it cheaply.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, NamedTuple, Optional

if TYPE_CHECKING:
    from sglang_domino.config import DominoConfig


class SettingsError(ValueError):
    """A setting that cannot be used; the message is one line naming it."""


class Variable(NamedTuple):
    name: str
    default: str
    meaning: str


DRAFT_LOGITS_DTYPE_ENV = "SGLANG_DOMINO_DRAFT_LOGITS_DTYPE"
DRAFT_TEMPERATURE_SCALE_ENV = "SGLANG_DOMINO_DRAFT_TEMPERATURE_SCALE"
CPU_FAST_PATHS_ENV = "SGLANG_DOMINO_CPU_FAST_PATHS"
MAX_SPECULATIVE_BATCH_ENV = "SGLANG_DOMINO_MAX_SPECULATIVE_BATCH"
DRAFT_LOG_ENV = "SGLANG_DOMINO_DRAFT_LOG"
STEP_LOG_ENV = "SGLANG_DOMINO_STEP_LOG"
DEFERRED_CONTEXT_ENV = "SGLANG_DOMINO_DEFERRED_CONTEXT"
CACHE_ENV = "SGLANG_DOMINO_CACHE"

DRAFT_LOGITS_DTYPES = ("auto", "float32", "bfloat16")
DEFAULT_DRAFT_TEMPERATURE_SCALE = 0.6

VARIABLES: tuple[Variable, ...] = (
    Variable(DRAFT_LOGITS_DTYPE_ENV, "auto",
             "precision of the drafting lm_head GEMM: auto (bf16 for a float32 target where the device multiplies "
             "bf16 natively), float32 or bfloat16; drafts only, outputs unchanged"),
    Variable(DRAFT_TEMPERATURE_SCALE_ENV, str(DEFAULT_DRAFT_TEMPERATURE_SCALE),
             "at temperature T > 0 drafts are drawn at T x this scale and verified with their own probabilities "
             "(lossless for any value > 0)"),
    Variable(CPU_FAST_PATHS_ENV, "1",
             "1/0: the plugin's CPU kernels (small-row and oneDNN-packed float32 linears, index_select decode "
             "attention) in every SGLang process on CPU, plain servers included"),
    Variable(MAX_SPECULATIVE_BATCH_ENV, "auto",
             "step width rule: auto (adaptive on CPU, none on GPUs), adaptive (per batch size the width that "
             "measured fastest), none (always draft), N (draft while a decode batch has at most N requests; 0: never, "
             "every step at plain width)"),
    Variable(DEFERRED_CONTEXT_ENV, "1",
             "1/0: on CPU, plain-width steps stash the target hidden states of their tokens and the drafter's "
             "context KV is written for all of them in one batch when drafting resumes (0: written every step); "
             "outputs unchanged"),
    Variable(DRAFT_LOG_ENV, "",
             "path: one JSON line per verified request-block (rid, position, bonus, drafts, accepted length, "
             "sampling parameters); for tests and debugging"),
    Variable(STEP_LOG_ENV, "",
             "path: one JSON line per decode step (batch size, width, committed tokens, seconds)"),
    Variable(CACHE_ENV, "$XDG_CACHE_HOME/sglang-domino",
             "where `sglang-domino prepare` converts the embedded target (default ~/.cache/sglang-domino)"),
)


def parse_switch(name: str, value: Optional[str], default: bool = True) -> bool:
    """An on/off variable: unset/empty -> ``default``; 1/true/yes/on; 0/false/no/off; anything else refused."""
    text = (value or "").strip().lower()
    if not text:
        return default
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={value!r}: expected 1 or 0")


def parse_draft_logits_dtype(value: Optional[str]) -> str:
    text = (value or "auto").strip().lower() or "auto"
    if text not in DRAFT_LOGITS_DTYPES:
        raise SettingsError(f"{DRAFT_LOGITS_DTYPE_ENV}={value!r}: expected auto, float32 or bfloat16")
    return text


def parse_draft_temperature_scale(value: Optional[str]) -> float:
    text = (value or "").strip()
    if not text:
        return DEFAULT_DRAFT_TEMPERATURE_SCALE
    try:
        scale = float(text)
    except ValueError:
        scale = float("nan")
    if not (0.0 < scale < float("inf")):
        raise SettingsError(f"{DRAFT_TEMPERATURE_SCALE_ENV}={value!r}: expected a finite number > 0")
    return scale


def parse_max_speculative_batch(value: Optional[str]) -> str:
    """Normalised text: ``auto``, ``adaptive``, ``none`` or a decimal integer >= 0 (the device decides ``auto``:
    :func:`sglang_domino.plugin.draft_width.resolve_max_speculative_batch`; 0 = never draft, every step at plain
    width -- what a plain-width step costs against plain decoding is measured that way)."""
    text = (value or "").strip().lower() or "auto"
    if text in ("auto", "adaptive", "none"):
        return text
    try:
        limit = int(text)
    except ValueError:
        limit = -1
    if limit < 0:
        raise SettingsError(f"{MAX_SPECULATIVE_BATCH_ENV}={value!r}: expected auto, adaptive, none or an integer "
                            ">= 0 (the largest decode batch that drafts; 0: never draft)")
    return str(limit)


def default_cache_root(environ: Optional[Mapping[str, str]] = None) -> Path:
    """Where ``sglang-domino prepare`` keeps the converted embedded target: ``$SGLANG_DOMINO_CACHE``, else
    ``$XDG_CACHE_HOME/sglang-domino`` (``~/.cache/sglang-domino``). Read when asked: a path for the preparing
    command, not a server setting."""
    environ = os.environ if environ is None else environ
    value = environ.get(CACHE_ENV)
    if value:
        return Path(value).expanduser()
    xdg = environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "sglang-domino"


@dataclass(frozen=True)
class EnvSettings:
    """The ``SGLANG_DOMINO_*`` variables, parsed (defaults where unset)."""

    draft_logits_dtype: str = "auto"  # auto | float32 | bfloat16
    draft_temperature_scale: float = DEFAULT_DRAFT_TEMPERATURE_SCALE
    cpu_fast_paths: bool = True
    max_speculative_batch: str = "auto"  # auto | adaptive | none | N
    deferred_context: bool = True
    draft_log: Optional[str] = None
    step_log: Optional[str] = None

    @classmethod
    def from_environ(cls, environ: Optional[Mapping[str, str]] = None) -> "EnvSettings":
        """Parse ``environ`` (default: this process's environment); :class:`SettingsError` on the first bad value."""
        env = os.environ if environ is None else environ
        return cls(
            draft_logits_dtype=parse_draft_logits_dtype(env.get(DRAFT_LOGITS_DTYPE_ENV)),
            draft_temperature_scale=parse_draft_temperature_scale(env.get(DRAFT_TEMPERATURE_SCALE_ENV)),
            cpu_fast_paths=parse_switch(CPU_FAST_PATHS_ENV, env.get(CPU_FAST_PATHS_ENV)),
            max_speculative_batch=parse_max_speculative_batch(env.get(MAX_SPECULATIVE_BATCH_ENV)),
            deferred_context=parse_switch(DEFERRED_CONTEXT_ENV, env.get(DEFERRED_CONTEXT_ENV)),
            draft_log=env.get(DRAFT_LOG_ENV) or None,
            step_log=env.get(STEP_LOG_ENV) or None,
        )


@functools.lru_cache(maxsize=1)
def environment_settings() -> EnvSettings:
    """This process's :class:`EnvSettings`, read on first use and kept (raises :class:`SettingsError`)."""
    return EnvSettings.from_environ()


@dataclass(frozen=True)
class DominoSettings:
    """Everything a Domino server runs with beyond SGLang's own arguments."""

    draft_path: str
    drafter: "DominoConfig"  # validated against the checkpoint's tensors
    env: EnvSettings


def _checkpoint_signature(draft_path: str) -> tuple:
    """Changes when the checkpoint's files do, so a rewritten checkpoint is read again."""
    root = Path(draft_path)
    files = sorted(root.glob("*.json")) + sorted(root.glob("*.safetensors")) if root.is_dir() else []
    return tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files)


@functools.lru_cache(maxsize=8)
def _validated_drafter(draft_path: str, signature: tuple) -> "DominoConfig":
    from sglang_domino.checkpoint import validate_checkpoint

    return validate_checkpoint(draft_path)


def drafter_config(draft_path: str) -> "DominoConfig":
    """The drafter's config, the checkpoint validated against it (complete, shapes consistent); read once per
    process and checkpoint. Raises ``CheckpointError`` / ``DominoConfigError``."""
    return _validated_drafter(str(draft_path), _checkpoint_signature(str(draft_path)))


def server_settings(draft_path: str) -> DominoSettings:
    """:class:`DominoSettings` of a server drafting with ``draft_path`` (raises as :func:`drafter_config` and
    :func:`environment_settings` do)."""
    return DominoSettings(draft_path=str(draft_path), drafter=drafter_config(draft_path), env=environment_settings())


__all__ = [
    "CACHE_ENV", "CPU_FAST_PATHS_ENV", "DEFAULT_DRAFT_TEMPERATURE_SCALE", "DEFERRED_CONTEXT_ENV", "DRAFT_LOGITS_DTYPES",
    "DRAFT_LOGITS_DTYPE_ENV",
    "DRAFT_LOG_ENV", "DRAFT_TEMPERATURE_SCALE_ENV", "DominoSettings", "EnvSettings", "MAX_SPECULATIVE_BATCH_ENV",
    "STEP_LOG_ENV", "SettingsError", "VARIABLES", "Variable", "default_cache_root", "drafter_config",
    "environment_settings",
    "parse_switch", "server_settings",
]
