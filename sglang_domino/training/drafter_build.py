"""The drafter a run trains: a fresh one shaped for the target (or ``--init-from`` a checkpoint), its MASK
token and the starting gain of its final norm."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from torch import nn

from sglang_domino.config import DominoConfig, default_target_layer_ids
from sglang_domino.modeling import DominoDrafter
from sglang_domino.training.errors import TrainingError
from sglang_domino.training.tokenization import tokenizer_loader

logger = logging.getLogger("sglang_domino.train")


def text_config(cfg):
    return cfg.gettext_config() if hasattr(cfg, "gettext_config") else cfg


def _rope_theta(cfg) -> float:
    theta = getattr(cfg, "rope_theta", None)
    if theta is None:
        params = getattr(cfg, "rope_parameters", None) or {}
        theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(theta or 10000.0)


def resolve_mask_token_id(args: argparse.Namespace, target_dir: Path, vocab_size: int) -> int:
    """--mask-token-id, else the prepared target's record, else the tokenizer's mask token, else the embedded default."""
    if args.mask_token_id is not None:
        return int(args.mask_token_id)
    try:
        from sglang_domino.embedded.target import DEFAULT_MASK_TOKEN_ID, MARKER
    except ImportError:  # pragma: no cover - the embedded module ships with the package
        DEFAULT_MASK_TOKEN_ID, MARKER = 4, ".sglang-domino-prepared.json"
    marker = target_dir / MARKER
    if marker.is_file():
        try:
            return int(json.loads(marker.read_text())["mask_token_id"])
        except (ValueError, KeyError, TypeError):
            pass
    if (target_dir / "tokenizer_config.json").is_file() or (target_dir / "tokenizer.json").is_file():
        try:
            tok_mask = getattr(tokenizer_loader(target_dir)(), "mask_token_id", None)
        except Exception:  # noqa: BLE001 - a tokenizer that cannot load just has no mask token to offer
            tok_mask = None
        if tok_mask is not None:
            return int(tok_mask)
    if DEFAULT_MASK_TOKEN_ID >= vocab_size:
        raise TrainingError("no mask token known for this target: pass --mask-token-id")
    logger.warning("no mask token recorded for %s; using the embedded default id %d (pass --mask-token-id to "
                   "choose)", target_dir, DEFAULT_MASK_TOKEN_ID)
    return DEFAULT_MASK_TOKEN_ID


def build_drafter_config(args: argparse.Namespace, target_cfg, mask_token_id: int) -> DominoConfig:
    cfg = text_config(target_cfg)
    hidden, heads = int(cfg.hidden_size), int(cfg.num_attention_heads)
    num_target_layers = int(cfg.num_hidden_layers)
    layer_ids = args.target_layer_ids or default_target_layer_ids(num_target_layers, args.num_layers)
    head = not args.no_head
    return DominoConfig(
        hidden_size=hidden,
        intermediate_size=int(args.intermediate_size or cfg.intermediate_size),
        num_hidden_layers=int(args.num_layers),
        num_attention_heads=heads,
        num_key_value_heads=int(getattr(cfg, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(cfg, "head_dim", None) or hidden // heads),
        vocab_size=int(cfg.vocab_size),
        block_size=int(args.block_size),
        target_layer_ids=list(layer_ids),
        num_target_layers=num_target_layers,
        mask_token_id=mask_token_id,
        rope_theta=_rope_theta(cfg),
        rms_norm_eps=float(getattr(cfg, "rms_norm_eps", 1e-6)),
        max_position_embeddings=int(getattr(cfg, "max_position_embeddings", 32768)),
        projector_type="domino" if head else None,
        shift_label=bool(args.shift_label),
        pure_draft_prefix_len=int(args.pure_draft_prefix_len) if head else 0,
        gru_hidden_dim=int(args.gru_hidden_dim or hidden) if head else None,
        emb_dim=int(args.emb_dim) if head else None,
    )


def build_drafter(args: argparse.Namespace, target_cfg, mask_token_id: int) -> DominoDrafter:
    """A fresh drafter, or ``--init-from`` a checkpoint (adding a fresh head to a head-less one unless --no-head)."""
    if not args.init_from:
        torch.manual_seed(args.seed)
        return DominoDrafter(build_drafter_config(args, target_cfg, mask_token_id))
    from sglang_domino.checkpoint import load_drafter

    src = load_drafter(args.init_from, dtype=torch.float32)
    if args.no_head:
        if src.use_head:
            src.drop_head()
        return src.train()
    if src.use_head:
        return src.train()
    d = src.config.to_dict()
    d["dflash_config"].update(
        projector_type="domino", pure_draft_prefix_len=int(args.pure_draft_prefix_len),
        emb_dim=int(args.emb_dim), gru_hidden_dim=int(args.gru_hidden_dim or src.config.hidden_size),
        shift_label=bool(src.config.shift_label),
    )
    torch.manual_seed(args.seed)
    model = DominoDrafter(DominoConfig.from_dict(d))
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("prefix_gru.", "embed_proj.")) for k in missing), (missing, unexpected)
    return model.train()


def init_output_norm_from_target(drafter: DominoDrafter, target: nn.Module) -> None:
    """Start the drafter's final RMSNorm gain at the target's final-norm gain.

    Why: the drafter's output goes through the target's frozen lm_head, which was trained on hidden states
    scaled by that gain (SmolLM2's averages 1.8 per channel, not 1); starting from it leaves the drafter only the
    direction of the hidden state to learn."""
    decoder = target.get_decoder() if hasattr(target, "get_decoder") else getattr(target, "model", None)
    norm = getattr(decoder, "norm", None)
    weight = getattr(norm, "weight", None)
    if weight is None or tuple(weight.shape) != tuple(drafter.norm.weight.shape):
        logger.warning("warning: the target has no final norm of shape %s; the drafter's norm starts at ones",
                       tuple(drafter.norm.weight.shape))
        return
    with torch.no_grad():
        drafter.norm.weight.copy_(weight.float())


__all__ = [
    "build_drafter",
    "build_drafter_config",
    "init_output_norm_from_target",
    "resolve_mask_token_id",
    "text_config",
]
