"""Server-argument checks for ``--speculative-algorithm domino``, run by SGLang before any process starts.

SGLang calls the registered ``validate_server_args`` while it resolves the server arguments in the launcher
(``arg_groups/speculative_hook.py``), i.e. before the scheduler spawns and before any weight is loaded. Every
problem raises :class:`DominoServerArgsError` whose message is one line naming the problem, so a bad drafter
refuses the server start up front instead of surfacing as a shape error inside a scheduler process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

from sglang_domino.checkpoint import CheckpointError
from sglang_domino.config import DominoConfig, DominoConfigError
from sglang_domino.settings import EnvSettings, drafter_config

logger = logging.getLogger(__name__)

PREFIX = "sglang-domino"


class DominoServerArgsError(ValueError):
    """A server configuration Domino cannot serve; the message is a single line."""

    def __init__(self, message: str) -> None:
        super().__init__(f"{PREFIX}: {' '.join(str(message).split())}")


@dataclass
class TargetInfo:
    num_layers: int
    hidden_size: int
    vocab_size: int
    max_position_embeddings: Optional[int]


def _get(args: Any, name: str, default: Any = None) -> Any:
    return getattr(args, name, default)


def load_target_info(args: Any) -> Optional[TargetInfo]:
    """Dimensions of the target model (text config), or None when its config cannot be read here."""
    try:
        from sglang.srt.utils.hf_transformers_utils import get_config

        cfg = get_config(_get(args, "model_path"), trust_remote_code=bool(_get(args, "trust_remote_code", False)),
                         revision=_get(args, "revision"))
    except Exception as exc:  # noqa: BLE001 - SGLang reports an unreadable target itself, with its own message
        logger.warning("%s: could not read the target config to cross-check the drafter (%s)", PREFIX, exc)
        return None
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    try:
        return TargetInfo(
            num_layers=int(text.num_hidden_layers),
            hidden_size=int(text.hidden_size),
            vocab_size=int(text.vocab_size),
            max_position_embeddings=getattr(text, "max_position_embeddings", None),
        )
    except (AttributeError, TypeError, ValueError):
        return None


def resolve_block_size(args: Any, config: DominoConfig) -> int:
    """The verify width SGLang will use: an explicit --speculative-num-draft-tokens / -dflash-block-size, else the drafter's."""
    for name in ("speculative_num_draft_tokens", "speculative_dflash_block_size"):
        value = _get(args, name)
        if value is not None:
            return int(value)
    return int(config.block_size)


def check_drafter_checkpoint(draft_path: Optional[str]) -> DominoConfig:
    """The drafter checkpoint on its own: present, complete, shapes consistent with its config (read once per
    process: :func:`sglang_domino.settings.drafter_config`)."""
    if not draft_path:
        raise DominoServerArgsError("--speculative-algorithm domino requires --speculative-draft-model-path")
    try:
        return drafter_config(draft_path)
    except (CheckpointError, DominoConfigError) as exc:
        raise DominoServerArgsError(f"drafter {draft_path}: {exc}") from None


def check_environment(device_type: str = "cpu") -> EnvSettings:
    """Every ``SGLANG_DOMINO_*`` variable (:mod:`sglang_domino.settings`), checked before any process starts so a
    typo is one line at launch, not a scheduler traceback; also what this device cannot do with them."""
    from sglang_domino.plugin.draft_width import resolve_max_speculative_batch

    try:
        env = EnvSettings.from_environ()
        resolve_max_speculative_batch(device_type, env.max_speculative_batch)
    except ValueError as exc:
        raise DominoServerArgsError(str(exc)) from None
    return env


# SGLang's vocabulary-parallel layers pad the vocabulary to a multiple of this before sharding it
# (``layers/vocab_parallel_embedding.DEFAULT_VOCAB_PADDING_SIZE``).
VOCAB_PADDING = 64


def tensor_parallel_problem(config: DominoConfig, tp_size: int) -> Optional[str]:
    """Why ``tp_size`` cannot shard this drafter (None if it can): SGLang's DFlash attention's rules for heads and
    KV heads (the backbone is sharded by upstream), and an equal vocabulary shard per rank for the drafting head
    (:mod:`sglang_domino.vocab_parallel`)."""
    if tp_size < 1:
        return f"--tp-size {tp_size} must be at least 1"
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    if heads % tp_size:
        return f"--tp-size {tp_size} does not divide the drafter's {heads} attention heads"
    if (kv_heads % tp_size) if kv_heads >= tp_size else (tp_size % kv_heads):
        return (f"--tp-size {tp_size} does not fit the drafter's {kv_heads} KV heads (it must divide them, or be a "
                f"multiple of them so that each is replicated)")
    padded = -(-config.vocab_size // VOCAB_PADDING) * VOCAB_PADDING
    if padded % tp_size:
        return (f"--tp-size {tp_size} does not divide the drafter's padded vocabulary ({config.vocab_size} padded "
                f"to a multiple of {VOCAB_PADDING}: {padded})")
    return None


def check_tensor_parallel(config: DominoConfig, tp_size: int) -> None:
    """``--tp-size`` for Domino: refused with one line naming the rule it breaks and the sizes this drafter fits."""
    problem = tensor_parallel_problem(config, tp_size)
    if problem is not None:
        fits = [n for n in range(1, 17) if tensor_parallel_problem(config, n) is None]
        raise DominoServerArgsError(f"{problem}; this drafter fits --tp-size {', '.join(map(str, fits))} (up to 16), "
                                    f"the target alone any size (sglang-domino serve --no-speculation)")


def validate_server_args(args: Any) -> DominoConfig:
    """All checks; returns the drafter config. ``args`` is SGLang's ServerArgs (or its resolving stand-in)."""
    from sglang_domino.plugin.contract import contract_error

    err = contract_error()
    if err is not None:
        raise DominoServerArgsError(str(err))

    import torch

    device = str(_get(args, "device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    check_environment(device.split(":")[0])
    draft_path = _get(args, "speculative_draft_model_path")
    config = check_drafter_checkpoint(draft_path)

    block_size = resolve_block_size(args, config)
    if block_size < 2:
        raise DominoServerArgsError(f"block size {block_size} drafts nothing: a Domino block needs at least 2 slots")

    target = load_target_info(args)
    if target is not None:
        try:
            config.validate_for_target(num_target_layers=target.num_layers, hidden_size=target.hidden_size,
                                       vocab_size=target.vocab_size, serving=True)
        except DominoConfigError as exc:
            raise DominoServerArgsError(f"drafter {draft_path} does not fit target {_get(args, 'model_path')}: "
                                        f"{exc}") from None
        if config.num_target_layers is not None and config.num_target_layers != target.num_layers:
            logger.warning("%s: drafter was trained for a %d-layer target, %s has %d layers", PREFIX,
                           config.num_target_layers, _get(args, "model_path"), target.num_layers)

    context_length = _get(args, "context_length")
    if context_length is None and target is not None:
        context_length = target.max_position_embeddings
    if context_length is not None:
        context_length = int(context_length)
        if block_size + 1 > context_length:
            raise DominoServerArgsError(
                f"a block of {block_size} tokens cannot fit the context length {context_length} "
                f"(need at least one prompt token plus the block)")
        # The draft runs at the target's absolute positions.
        if config.max_position_embeddings < context_length:
            raise DominoServerArgsError(
                f"drafter max_position_embeddings={config.max_position_embeddings} is shorter than the context "
                f"length {context_length}; pass --context-length {config.max_position_embeddings} or less")

    check_tensor_parallel(config, int(_get(args, "tp_size", 1) or 1))
    if int(_get(args, "pp_size", 1) or 1) != 1:
        raise DominoServerArgsError("pipeline parallelism (--pp-size > 1) is not supported with speculative decoding")
    if bool(_get(args, "enable_dp_attention", False)):
        raise DominoServerArgsError("--enable-dp-attention is not supported by the Domino worker")
    if _get(args, "speculative_draft_window_size") is not None:
        raise DominoServerArgsError("--speculative-draft-window-size is not supported by the Domino worker")
    return config


__all__ = ["DominoServerArgsError", "VOCAB_PADDING", "check_drafter_checkpoint", "check_tensor_parallel",
           "check_environment", "TargetInfo", "load_target_info", "resolve_block_size", "validate_server_args"]
