"""Checkpoint I/O in the published format: round trip, upstream/SpecForge compatibility, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import random_drafter
from safetensors.torch import load_file, save_file

from sglang_domino import CheckpointError, load_drafter, save_drafter, validate_checkpoint
from sglang_domino.checkpoint import expected_shapes


@pytest.fixture
def saved(tmp_path):
    model = random_drafter(seed=0)
    save_drafter(model, tmp_path / "ckpt")
    return model, tmp_path / "ckpt"


def test_round_trip_identical_tensors(saved) -> None:
    model, path = saved
    loaded = load_drafter(path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert set(load_file(str(path / "model.safetensors"))) == set(expected_shapes(model.config))


def test_published_names_exactly(saved) -> None:
    _, path = saved
    names = set(load_file(str(path / "model.safetensors")))
    assert {"fc.weight", "hidden_norm.weight", "norm.weight", "prefix_gru.weight_ih_l0", "prefix_gru.weight_hh_l0",
            "embed_proj.0.weight", "embed_proj.2.weight", "layers.0.self_attn.q_proj.weight",
            "layers.1.mlp.down_proj.weight", "layers.0.self_attn.k_norm.weight"} <= names
    assert not any(n.startswith(("model.", "logit_head.")) for n in names)


def test_bf16_export_and_load(tmp_path) -> None:
    model = random_drafter(seed=1)
    save_drafter(model, tmp_path, dtype=torch.bfloat16)
    assert all(t.dtype == torch.bfloat16 for t in load_file(str(tmp_path / "model.safetensors")).values())
    assert load_drafter(tmp_path).fc.weight.dtype == torch.bfloat16
    assert load_drafter(tmp_path, dtype=torch.float32).fc.weight.dtype == torch.float32


def test_upstream_sglang_parses_our_config(saved) -> None:
    from sglang.srt.speculative.dflash_utils import parse_dflash_draft_config

    model, path = saved
    parsed = parse_dflash_draft_config(draft_hf_config=json.loads((path / "config.json").read_text()))
    cfg = model.config
    assert parsed.is_domino
    assert (parsed.block_size, parsed.target_layer_ids, parsed.mask_token_id) == (
        cfg.block_size, cfg.target_layer_ids, cfg.mask_token_id)
    assert (parsed.shift_label, parsed.pure_draft_prefix_len, parsed.emb_dim, parsed.gru_hidden_dim) == (
        cfg.shift_label, cfg.pure_draft_prefix_len, cfg.emb_dim, cfg.gru_hidden_dim)
    assert parsed.num_hidden_layers == cfg.num_hidden_layers and parsed.num_target_layers == cfg.num_target_layers


@pytest.mark.parametrize("legacy_head_prefix", [False, True])
def test_specforge_layout_loads_identical_tensors(tmp_path, legacy_head_prefix: bool) -> None:
    """SpecForge writes config.json via transformers' Qwen3Config.save_pretrained (block_size, num_target_layers
    and dflash_config as extra attributes) and the state dict with unprefixed names; early Domino runs kept the
    head under ``logit_head.``."""
    from transformers import Qwen3Config

    model = random_drafter(seed=2)
    cfg = model.config
    Qwen3Config(
        hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim, vocab_size=cfg.vocab_size, rope_theta=cfg.rope_theta, architectures=["DFlashDraftModel"],
        block_size=cfg.block_size, num_target_layers=cfg.num_target_layers,
        dflash_config={"mask_token_id": cfg.mask_token_id, "target_layer_ids": cfg.target_layer_ids,
                       "projector_type": "domino", "pure_draft_prefix_len": 1, "emb_dim": cfg.emb_dim,
                       "gru_hidden_dim": cfg.gru_hidden_dim, "shift_label": True},
    ).save_pretrained(tmp_path)
    state = {
        (f"logit_head.{k}" if legacy_head_prefix and k.startswith(("prefix_gru.", "embed_proj.")) else k): v.clone()
        for k, v in model.state_dict().items()
    }
    save_file(state, str(tmp_path / "model.safetensors"))
    loaded = load_drafter(tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert loaded.config.target_layer_ids == cfg.target_layer_ids and loaded.config.has_head


def test_backbone_only_load(saved) -> None:
    _, path = saved
    bare = load_drafter(path, use_head=False)
    assert bare.head_weights() is None and not bare.config.has_head


# ------------------------------------------------------------------ one test per error path


def _rewrite(path, mutate) -> None:
    tensors = load_file(str(path / "model.safetensors"))
    mutate(tensors)
    save_file(tensors, str(path / "model.safetensors"))


def test_error_missing_tensor(saved) -> None:
    _, path = saved
    _rewrite(path, lambda t: t.pop("embed_proj.2.weight"))
    with pytest.raises(CheckpointError, match="missing tensors: embed_proj.2.weight"):
        load_drafter(path)


def test_error_unexpected_tensor(saved) -> None:
    _, path = saved
    _rewrite(path, lambda t: t.__setitem__("layers.9.mlp.up_proj.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError, match="unexpected tensors: layers.9.mlp.up_proj.weight"):
        load_drafter(path)


def test_error_head_tensors_without_domino_config(saved) -> None:
    _, path = saved
    raw = json.loads((path / "config.json").read_text())
    raw["dflash_config"].pop("projector_type")
    (path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="Domino head tensors but projector_type is not 'domino'"):
        validate_checkpoint(path)


def test_error_wrong_shape(saved) -> None:
    _, path = saved
    _rewrite(path, lambda t: t.__setitem__("fc.weight", torch.zeros(64, 64)))
    with pytest.raises(CheckpointError, match=r"wrongly shaped tensors: fc.weight \(64, 64\) \(expected \(64, 128\)\)"):
        load_drafter(path)


def test_error_non_float_tensor(saved) -> None:
    _, path = saved
    _rewrite(path, lambda t: t.__setitem__("norm.weight", torch.zeros(64, dtype=torch.int32)))
    with pytest.raises(CheckpointError, match="non-floating-point tensors: norm.weight I32"):
        load_drafter(path)


def test_error_truncated_file(saved) -> None:
    _, path = saved
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated safetensors file"):
        load_drafter(path)


def test_error_no_weights(saved) -> None:
    _, path = saved
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_drafter(path)


def test_error_no_directory(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_drafter(tmp_path / "nope")
