"""DominoConfig: the one description of a drafter, read from every published ``config.json`` variant.

Published layouts (SpecForge, z-lab and Model-Optimizer DFlash/Domino exports) that all parse to the same object:

* SpecForge / z-lab ``DFlashDraftModel``: Qwen3 dims at top level, ``block_size`` and
  ``num_target_layers`` at top level, Domino fields inside ``dflash_config``.
* SpecForge HEAD ``DominoDraftModel``: same, ``projector_type`` may be omitted (the architecture implies it).
* Model-Optimizer export: the DFlash/Domino fields may stand at top level or inside ``dflash_config``.
* ``emb_dim`` nested in ``dflash_config`` or at top level (both present must agree).
* plain DFlash: no Domino keys at all (``projector_type`` absent) -> backbone only.

Every validation error is a :class:`DominoConfigError` whose message names the offending field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

DOMINO_ARCHITECTURES = ("DFlashDraftModel", "DominoDraftModel")
# "causal_v5" is the name early Domino checkpoints used for the same head.
_PROJECTOR_ALIASES = {"domino": "domino", "causal_v5": "domino"}


class DominoConfigError(ValueError):
    """A drafter config.json that cannot describe a working drafter."""


def default_target_layer_ids(num_target_layers: int, num_draft_layers: int) -> list[int]:
    """DFlash's default feature layers: ``round(1 + i·(T−4)/(L−1))``; a single draft layer takes ``T // 2``."""
    if num_draft_layers == 1:
        return [num_target_layers // 2]
    span = num_target_layers - 4
    if span < 0:
        raise DominoConfigError(
            f"num_target_layers={num_target_layers}: default target_layer_ids need at least 4 target layers"
        )
    return [int(round(1 + i * span / (num_draft_layers - 1))) for i in range(num_draft_layers)]


def _int_field(name: str, value: Any, *, minimum: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise DominoConfigError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise DominoConfigError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


@dataclass
class DominoConfig:
    """Backbone (Qwen3-style DFlash layers) + optional Domino head, as one validated record."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    block_size: int
    target_layer_ids: list[int]
    mask_token_id: int
    head_dim: Optional[int] = None
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    num_target_layers: Optional[int] = None
    # Domino head. projector_type None = plain DFlash backbone.
    projector_type: Optional[str] = None
    shift_label: bool = False
    pure_draft_prefix_len: int = 0
    gru_hidden_dim: Optional[int] = None
    emb_dim: Optional[int] = None
    architecture: str = "DFlashDraftModel"
    # Unknown keys of the source file, kept so a round trip loses nothing.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        self.validate()

    # ---------------------------------------------------------------- derived
    @property
    def has_head(self) -> bool:
        return self.projector_type == "domino"

    @property
    def num_proposals(self) -> int:
        """Tokens drafted per block: block_size − 1 (slot 0 carries the bonus token), as SGLang verifies."""
        return self.block_size - 1

    @property
    def num_context_features(self) -> int:
        return len(self.target_layer_ids)

    # ------------------------------------------------------------- validation
    def validate(self) -> None:
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "vocab_size", "head_dim", "max_position_embeddings"):
            setattr(self, name, _int_field(name, getattr(self, name), minimum=1))
        self.block_size = _int_field("block_size", self.block_size)
        if self.block_size <= 1:
            raise DominoConfigError(f"block_size must be > 1 (slot 0 is the bonus token), got {self.block_size}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise DominoConfigError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if not isinstance(self.target_layer_ids, (list, tuple)) or not self.target_layer_ids:
            raise DominoConfigError(f"target_layer_ids must be a non-empty list of ints, got {self.target_layer_ids!r}")
        self.target_layer_ids = [_int_field("target_layer_ids[]", i, minimum=0) for i in self.target_layer_ids]
        if self.num_target_layers is not None:
            self.num_target_layers = _int_field("num_target_layers", self.num_target_layers, minimum=1)
            self._check_layer_ids(self.num_target_layers)
        self.mask_token_id = _int_field("mask_token_id", self.mask_token_id, minimum=0)
        if self.mask_token_id >= self.vocab_size:
            raise DominoConfigError(
                f"mask_token_id={self.mask_token_id} is outside the vocabulary (vocab_size={self.vocab_size})"
            )
        if self.projector_type is not None:
            if self.projector_type not in _PROJECTOR_ALIASES:
                raise DominoConfigError(
                    f"projector_type={self.projector_type!r} is unknown; expected one of "
                    f"{sorted(_PROJECTOR_ALIASES)} or absent (plain DFlash)"
                )
            self.projector_type = _PROJECTOR_ALIASES[self.projector_type]
        if not isinstance(self.shift_label, bool):
            raise DominoConfigError(f"shift_label must be true or false, got {self.shift_label!r}")
        self.pure_draft_prefix_len = _int_field("pure_draft_prefix_len", self.pure_draft_prefix_len, minimum=0)
        if self.has_head:
            if self.pure_draft_prefix_len >= self.num_proposals:
                raise DominoConfigError(
                    f"pure_draft_prefix_len={self.pure_draft_prefix_len} leaves no corrected slot: it must be "
                    f"< block_size - 1 = {self.num_proposals}"
                )
            if self.gru_hidden_dim is None:
                raise DominoConfigError("gru_hidden_dim is required when projector_type is 'domino'")
            if self.emb_dim is None:
                raise DominoConfigError("emb_dim is required when projector_type is 'domino'")
            self.gru_hidden_dim = _int_field("gru_hidden_dim", self.gru_hidden_dim, minimum=1)
            self.emb_dim = _int_field("emb_dim", self.emb_dim, minimum=1)
        if not (isinstance(self.rope_theta, (int, float)) and self.rope_theta > 0 and math.isfinite(self.rope_theta)):
            raise DominoConfigError(f"rope_theta must be a positive number, got {self.rope_theta!r}")

    def _check_layer_ids(self, num_target_layers: int) -> None:
        for i, layer_id in enumerate(self.target_layer_ids):
            if not 0 <= layer_id < num_target_layers:
                raise DominoConfigError(
                    f"target_layer_ids[{i}]={layer_id} is outside the target's {num_target_layers} layers "
                    f"(valid: 0..{num_target_layers - 1})"
                )

    def validate_for_target(
        self,
        *,
        num_target_layers: int,
        hidden_size: int,
        vocab_size: int,
        serving: bool = False,
    ) -> None:
        """Check this drafter fits a target model; raise DominoConfigError naming the mismatch.

        ``serving=True`` adds SGLang's capture rule: hidden states are captured *before* layer ``id + 1``,
        so a feature layer equal to the target's last layer is never captured there.
        """
        if hidden_size != self.hidden_size:
            raise DominoConfigError(
                f"hidden_size mismatch: drafter hidden_size={self.hidden_size}, target hidden_size={hidden_size}"
            )
        if vocab_size != self.vocab_size:
            raise DominoConfigError(
                f"vocab_size mismatch: drafter vocab_size={self.vocab_size}, target vocab_size={vocab_size}"
            )
        self._check_layer_ids(num_target_layers)
        if serving and num_target_layers - 1 in self.target_layer_ids:
            raise DominoConfigError(
                f"target_layer_ids contains the target's last layer ({num_target_layers - 1}); SGLang captures "
                "hidden states before layer id+1, which does not exist for the last layer"
            )

    # -------------------------------------------------------------------- I/O
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "DominoConfig":
        """Parse any published drafter config.json layout (see module docstring)."""
        if not isinstance(raw, dict):
            raise DominoConfigError(f"config must be a JSON object, got {type(raw).__name__}")
        raw = dict(raw)
        nested = raw.pop("dflash_config", None) or {}
        if not isinstance(nested, dict):
            raise DominoConfigError(f"dflash_config must be an object, got {type(nested).__name__}")

        def pick(name: str, default: Any = None) -> Any:
            # dflash_config wins where both exist (SGLang reads it first), except emb_dim checked below.
            if name in nested:
                return nested[name]
            return raw.get(name, default)

        architectures = raw.get("architectures") or ["DFlashDraftModel"]
        architecture = architectures[0] if isinstance(architectures, list) and architectures else "DFlashDraftModel"
        projector_type = pick("projector_type")
        if projector_type is None and architecture == "DominoDraftModel":
            projector_type = "domino"

        nested_emb, top_emb = nested.get("emb_dim"), raw.get("emb_dim")
        if nested_emb is not None and top_emb is not None and nested_emb != top_emb:
            raise DominoConfigError(
                f"emb_dim differs between dflash_config ({nested_emb}) and the top level ({top_emb})"
            )
        emb_dim = nested_emb if nested_emb is not None else top_emb

        required = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        missing = [name for name in required if raw.get(name) is None]
        if missing:
            raise DominoConfigError(f"config is missing required field(s): {', '.join(missing)}")
        block_size = pick("block_size")
        if block_size is None:
            raise DominoConfigError("config is missing block_size (top level or dflash_config)")
        mask_token_id = pick("mask_token_id")
        if mask_token_id is None:
            raise DominoConfigError("config is missing mask_token_id (dflash_config or top level)")
        rope_scaling = raw.get("rope_scaling")
        if rope_scaling not in (None, {}) and (rope_scaling.get("rope_type") or rope_scaling.get("type")) != "default":
            raise DominoConfigError(f"rope_scaling={rope_scaling!r} is not supported (plain RoPE only)")

        num_target_layers = pick("num_target_layers")
        target_layer_ids = pick("target_layer_ids")
        if target_layer_ids is None:
            if num_target_layers is None:
                raise DominoConfigError("config has neither target_layer_ids nor num_target_layers")
            target_layer_ids = default_target_layer_ids(
                _int_field("num_target_layers", num_target_layers, minimum=1),
                _int_field("num_hidden_layers", raw["num_hidden_layers"], minimum=1),
            )

        known = set(required) | {
            "num_key_value_heads", "head_dim", "rope_theta", "rms_norm_eps", "max_position_embeddings",
            "block_size", "num_target_layers", "target_layer_ids", "mask_token_id", "projector_type",
            "shift_label", "pure_draft_prefix_len", "gru_hidden_dim", "emb_dim", "architectures", "rope_scaling",
        }
        extra = {k: v for k, v in raw.items() if k not in known}
        if nested:
            extra["_dflash_config_extra"] = {
                k: v for k, v in nested.items() if k not in known
            }
        return cls(
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=raw["num_attention_heads"],
            num_key_value_heads=raw.get("num_key_value_heads") or raw["num_attention_heads"],
            vocab_size=raw["vocab_size"],
            head_dim=raw.get("head_dim"),
            rope_theta=raw.get("rope_theta", 1_000_000.0),
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            max_position_embeddings=raw.get("max_position_embeddings", 32768),
            block_size=block_size,
            num_target_layers=num_target_layers,
            target_layer_ids=list(target_layer_ids) if isinstance(target_layer_ids, (list, tuple)) else target_layer_ids,
            mask_token_id=mask_token_id,
            projector_type=projector_type,
            shift_label=pick("shift_label", False),
            pure_draft_prefix_len=pick("pure_draft_prefix_len", 0),
            gru_hidden_dim=pick("gru_hidden_dim"),
            emb_dim=emb_dim,
            architecture=architecture,
            extra=extra,
        )

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "DominoConfig":
        """Read ``<path>/config.json`` (or a config.json path)."""
        path = Path(path)
        config_path = path / "config.json" if path.is_dir() else path
        if not config_path.is_file():
            raise DominoConfigError(f"no config.json at {config_path}")
        try:
            raw = json.loads(config_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DominoConfigError(f"unreadable config.json at {config_path}: {exc}") from exc
        return cls.from_dict(raw)

    def to_dict(self) -> dict[str, Any]:
        """The published layout (SpecForge / z-lab ``DFlashDraftModel``), which upstream SGLang parses."""
        extra = dict(self.extra)
        nested_extra = extra.pop("_dflash_config_extra", {})
        dflash_config: dict[str, Any] = {
            "mask_token_id": self.mask_token_id,
            "target_layer_ids": list(self.target_layer_ids),
            **nested_extra,
        }
        if self.has_head:
            dflash_config.update(
                projector_type="domino",
                pure_draft_prefix_len=self.pure_draft_prefix_len,
                emb_dim=self.emb_dim,
                gru_hidden_dim=self.gru_hidden_dim,
            )
        if self.has_head or self.shift_label:
            # A head-less backbone trained with shifted labels still drafts from slots 0..B-2.
            dflash_config["shift_label"] = self.shift_label
        out: dict[str, Any] = {
            **extra,
            "architectures": [self.architecture],
            "model_type": extra.get("model_type", "qwen3"),
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "vocab_size": self.vocab_size,
            "block_size": self.block_size,
            "hidden_act": "silu",
            "attention_bias": False,
            "tie_word_embeddings": False,
            "dflash_config": dflash_config,
        }
        if self.num_target_layers is not None:
            out["num_target_layers"] = self.num_target_layers
        return out

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def without_head(self) -> "DominoConfig":
        """The same backbone with the Domino head switched off (plain DFlash), for equal-footing comparisons."""
        d = self.to_dict()
        for key in ("projector_type", "pure_draft_prefix_len", "emb_dim", "gru_hidden_dim"):
            d["dflash_config"].pop(key, None)
        return DominoConfig.from_dict(d)
