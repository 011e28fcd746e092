"""Checkpoint I/O in the published drafter format (SpecForge / z-lab / Model-Optimizer; what SGLang loads).

A checkpoint is a directory with ``config.json`` and ``model.safetensors`` (or sharded
``model-*.safetensors``) holding unprefixed tensor names (the SpecForge / z-lab export layout). Legacy names are accepted
on load: ``logit_head.prefix_gru.*`` / ``logit_head.embed_proj.*`` (early Domino) and a ``model.`` prefix.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sglang_domino.config import DominoConfig, DominoConfigError
from sglang_domino.modeling import DominoDrafter

_LEGACY_PREFIXES = (("logit_head.prefix_gru.", "prefix_gru."), ("logit_head.embed_proj.", "embed_proj."), ("model.", ""))
# Tensors a trainer may keep that inference never reads (rotary caches).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointError(ValueError):
    """A drafter checkpoint that cannot be loaded; the message lists what is wrong."""


def canonical_name(name: str) -> str:
    for old, new in _LEGACY_PREFIXES:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def expected_shapes(config: DominoConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name the published format has for ``config``, with its shape."""
    h, d = config.hidden_size, config.head_dim
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(config.num_hidden_layers):
        p = f"layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (config.num_attention_heads * d, h),
            p + "self_attn.k_proj.weight": (config.num_key_value_heads * d, h),
            p + "self_attn.v_proj.weight": (config.num_key_value_heads * d, h),
            p + "self_attn.o_proj.weight": (h, config.num_attention_heads * d),
            p + "self_attn.q_norm.weight": (d,),
            p + "self_attn.k_norm.weight": (d,),
            p + "mlp.gate_proj.weight": (config.intermediate_size, h),
            p + "mlp.up_proj.weight": (config.intermediate_size, h),
            p + "mlp.down_proj.weight": (h, config.intermediate_size),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        })
    shapes["norm.weight"] = (h,)
    shapes["fc.weight"] = (h, config.num_context_features * h)
    shapes["hidden_norm.weight"] = (h,)
    if config.has_head:
        g, r = config.gru_hidden_dim, config.emb_dim
        shapes["prefix_gru.weight_ih_l0"] = (3 * g, h)
        shapes["prefix_gru.weight_hh_l0"] = (3 * g, g)
        shapes["embed_proj.0.weight"] = (r, h + g)
        shapes["embed_proj.2.weight"] = (config.vocab_size, r)
    return shapes


def _weight_files(path: Path) -> list[Path]:
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, OSError) as exc:
            raise CheckpointError(f"{index}: unreadable safetensors index ({exc})") from exc
        return [path / f for f in sorted(set(weight_map.values()))]
    shards = sorted(path.glob("*.safetensors"))
    if shards:
        return shards
    raise CheckpointError(f"{path}: no model.safetensors (nor sharded *.safetensors) in the checkpoint")


def _read_header(file: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) from a safetensors header, checking the file holds every byte it promises."""
    try:
        size = file.stat().st_size
        with file.open("rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{file}: truncated safetensors file ({size} bytes)")
            (header_len,) = struct.unpack("<Q", prefix)
            if 8 + header_len > size:
                raise CheckpointError(f"{file}: truncated safetensors file (header claims {header_len} bytes)")
            header_bytes = fh.read(header_len)
    except OSError as exc:
        raise CheckpointError(f"{file}: unreadable ({exc})") from exc
    try:
        header = json.loads(header_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file}: corrupt safetensors header ({exc})") from exc
    data_len = size - 8 - header_len
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        end = info["data_offsets"][1]
        if end > data_len:
            raise CheckpointError(f"{file}: truncated safetensors file (tensor {name!r} ends past the data)")
        out[name] = (info["dtype"], tuple(info["shape"]))
    return out


_FLOAT_DTYPES = {"F32", "F16", "BF16", "F64"}


def validate_checkpoint(path: str | Path) -> DominoConfig:
    """Check a checkpoint without building the model: config, tensor names, shapes, dtypes.

    Raises DominoConfigError (config) or CheckpointError listing every missing, unexpected or wrongly
    shaped tensor. Returns the parsed config.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: drafter checkpoint directory does not exist")
    config = DominoConfig.from_pretrained(path)
    found: dict[str, tuple[str, tuple[int, ...]]] = {}
    for file in _weight_files(path):
        if not file.is_file():
            raise CheckpointError(f"{file}: listed in the index but missing")
        for name, meta in _read_header(file).items():
            found[canonical_name(name)] = meta
    expected = expected_shapes(config)
    problems = []
    missing = sorted(set(expected) - set(found))
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    unexpected = sorted(n for n in set(found) - set(expected) if not n.endswith(_IGNORED_SUFFIXES))
    if unexpected:
        hint = " (Domino head tensors but projector_type is not 'domino')" if any(
            n.startswith(("prefix_gru.", "embed_proj.")) for n in unexpected) else ""
        problems.append(f"unexpected tensors{hint}: {', '.join(unexpected)}")
    wrong = [f"{n} {found[n][1]} (expected {expected[n]})" for n in sorted(set(expected) & set(found))
             if found[n][1] != expected[n]]
    if wrong:
        problems.append(f"wrongly shaped tensors: {', '.join(wrong)}")
    bad_dtype = [f"{n} {found[n][0]}" for n in sorted(set(expected) & set(found)) if found[n][0] not in _FLOAT_DTYPES]
    if bad_dtype:
        problems.append(f"non-floating-point tensors: {', '.join(bad_dtype)}")
    if problems:
        raise CheckpointError(f"{path}: bad drafter checkpoint: " + "; ".join(problems))
    return config


def load_drafter(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: Optional[torch.dtype] = None,
    *,
    use_head: bool = True,
) -> DominoDrafter:
    """Load a drafter checkpoint (validated first). ``use_head=False`` loads the backbone only.

    dtype None keeps the stored dtype of the weights (the first floating tensor's).
    """
    path = Path(path)
    config = validate_checkpoint(path)
    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(path):
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():
                key = canonical_name(name)
                if not key.endswith(_IGNORED_SUFFIXES):
                    state[key] = f.get_tensor(name)
    if dtype is None:
        dtype = state["fc.weight"].dtype
    model = DominoDrafter(config)
    model.load_state_dict(state, strict=True)
    if not use_head:
        model.drop_head()
    return model.to(device=device, dtype=dtype).eval()


def save_drafter(model: DominoDrafter, path: str | Path, dtype: Optional[torch.dtype] = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` with exactly the published tensor names."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.config.save(path)
    tensors = {
        name: (t.detach().to(dtype) if dtype is not None else t.detach()).cpu().contiguous()
        for name, t in model.state_dict().items()
    }
    missing = set(expected_shapes(model.config)) - set(tensors)
    if missing:  # a model whose head was dropped must carry a config without it; anything else is a bug
        raise CheckpointError(f"model state lacks {sorted(missing)}")
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


__all__ = ["CheckpointError", "DominoConfigError", "expected_shapes", "load_drafter", "save_drafter", "validate_checkpoint"]
