"""DominoConfig reads every published config.json layout and names the field of every error."""

from __future__ import annotations

import json

import pytest

from sglang_domino import DominoConfig, DominoConfigError

QWEN3_DIMS = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    head_dim=16, rope_theta=1000000, rms_norm_eps=1e-6, vocab_size=100, max_position_embeddings=4096,
)


def specforge_dflash_domino() -> dict:
    """SpecForge PR #571 / z-lab layout: DFlashDraftModel, Domino fields nested."""
    return {
        "architectures": ["DFlashDraftModel"], "model_type": "qwen3", **QWEN3_DIMS,
        "block_size": 16, "num_target_layers": 8,
        "dflash_config": {"mask_token_id": 99, "target_layer_ids": [1, 5], "projector_type": "domino",
                          "pure_draft_prefix_len": 1, "emb_dim": 32, "gru_hidden_dim": 48, "shift_label": True},
    }


def specforge_head_domino() -> dict:
    """SpecForge HEAD: DominoDraftModel; projector_type implied by the architecture; defaults for the rest."""
    return {
        "architectures": ["DominoDraftModel"], "model_type": "qwen3", **QWEN3_DIMS, "block_size": 10,
        "num_target_layers": 8, "dflash_config": {"mask_token_id": 99, "target_layer_ids": [1, 5],
                                                   "emb_dim": 32, "gru_hidden_dim": 48},
    }


def modelopt_export() -> dict:
    """Model-Optimizer style: DFlash/Domino fields at top level, emb_dim top level."""
    return {
        "architectures": ["DFlashDraftModel"], **QWEN3_DIMS, "block_size": 8, "num_target_layers": 8,
        "mask_token_id": 98, "target_layer_ids": [2, 4], "projector_type": "domino", "emb_dim": 16,
        "gru_hidden_dim": 24, "shift_label": False, "pure_draft_prefix_len": 2,
    }


def plain_dflash() -> dict:
    return {"architectures": ["DFlashDraftModel"], **QWEN3_DIMS, "block_size": 16, "num_target_layers": 36,
            "dflash_config": {"mask_token_id": 99}}


def test_specforge_dflash_domino_layout() -> None:
    cfg = DominoConfig.from_dict(specforge_dflash_domino())
    assert (cfg.has_head, cfg.shift_label, cfg.pure_draft_prefix_len, cfg.emb_dim, cfg.gru_hidden_dim) == (
        True, True, 1, 32, 48)
    assert (cfg.block_size, cfg.num_proposals, cfg.target_layer_ids, cfg.mask_token_id) == (16, 15, [1, 5], 99)


def test_specforge_head_domino_layout_defaults() -> None:
    cfg = DominoConfig.from_dict(specforge_head_domino())
    assert cfg.has_head and cfg.shift_label is False and cfg.pure_draft_prefix_len == 0


def test_modelopt_top_level_layout() -> None:
    cfg = DominoConfig.from_dict(modelopt_export())
    assert cfg.has_head and cfg.emb_dim == 16 and cfg.target_layer_ids == [2, 4] and cfg.pure_draft_prefix_len == 2


def test_emb_dim_nested_and_top_level_agreeing() -> None:
    raw = specforge_dflash_domino()
    raw["emb_dim"] = 32
    assert DominoConfig.from_dict(raw).emb_dim == 32


def test_plain_dflash_has_no_head_and_default_layer_ids() -> None:
    cfg = DominoConfig.from_dict(plain_dflash())
    assert not cfg.has_head
    assert cfg.target_layer_ids == [1, 33]  # round(1 + i*(36-4)/(2-1))


def test_legacy_projector_alias() -> None:
    raw = specforge_dflash_domino()
    raw["dflash_config"]["projector_type"] = "causal_v5"
    assert DominoConfig.from_dict(raw).projector_type == "domino"


@pytest.mark.parametrize("layout", [specforge_dflash_domino, specforge_head_domino, modelopt_export, plain_dflash])
def test_round_trip_through_the_published_layout(layout, tmp_path) -> None:
    cfg = DominoConfig.from_dict(layout())
    cfg.save(tmp_path)
    again = DominoConfig.from_pretrained(tmp_path)
    assert again.to_dict() == cfg.to_dict()


def test_without_head_keeps_the_backbone() -> None:
    cfg = DominoConfig.from_dict(specforge_dflash_domino())
    bare = cfg.without_head()
    assert not bare.has_head and bare.shift_label and bare.target_layer_ids == cfg.target_layer_ids


# ------------------------------------------------------------------ one test per error path


def _mutated(path: str, value) -> dict:
    raw = specforge_dflash_domino()
    where = raw["dflash_config"] if path.startswith("dflash_config.") else raw
    where[path.split(".")[-1]] = value
    return raw


def test_error_block_size_not_above_one() -> None:
    with pytest.raises(DominoConfigError, match="block_size must be > 1"):
        DominoConfig.from_dict(_mutated("block_size", 1))


def test_error_target_layer_ids_outside_the_target() -> None:
    with pytest.raises(DominoConfigError, match=r"target_layer_ids\[1\]=8 is outside the target's 8 layers"):
        DominoConfig.from_dict(_mutated("dflash_config.target_layer_ids", [1, 8]))


def test_error_target_layer_ids_outside_a_given_target() -> None:
    cfg = DominoConfig.from_dict(specforge_dflash_domino())
    with pytest.raises(DominoConfigError, match=r"target_layer_ids\[1\]=5 is outside the target's 4 layers"):
        cfg.validate_for_target(num_target_layers=4, hidden_size=64, vocab_size=100)


def test_error_mask_token_outside_vocab() -> None:
    with pytest.raises(DominoConfigError, match=r"mask_token_id=100 is outside the vocabulary \(vocab_size=100\)"):
        DominoConfig.from_dict(_mutated("dflash_config.mask_token_id", 100))


def test_error_shift_label_not_bool() -> None:
    with pytest.raises(DominoConfigError, match="shift_label must be true or false"):
        DominoConfig.from_dict(_mutated("dflash_config.shift_label", "yes"))


@pytest.mark.parametrize("prefix_len", [0, 1, 7, 14])
def test_any_pure_draft_prefix_len_below_the_slots_is_accepted(prefix_len: int) -> None:
    assert DominoConfig.from_dict(_mutated("dflash_config.pure_draft_prefix_len", prefix_len)).pure_draft_prefix_len == prefix_len


def test_error_pure_draft_prefix_len_leaves_no_corrected_slot() -> None:
    with pytest.raises(DominoConfigError, match="pure_draft_prefix_len=15 leaves no corrected slot"):
        DominoConfig.from_dict(_mutated("dflash_config.pure_draft_prefix_len", 15))


def test_error_pure_draft_prefix_len_negative() -> None:
    with pytest.raises(DominoConfigError, match="pure_draft_prefix_len must be >= 0"):
        DominoConfig.from_dict(_mutated("dflash_config.pure_draft_prefix_len", -1))


def test_error_unknown_projector_type() -> None:
    with pytest.raises(DominoConfigError, match="projector_type='medusa' is unknown"):
        DominoConfig.from_dict(_mutated("dflash_config.projector_type", "medusa"))


def test_error_emb_dim_disagreement() -> None:
    with pytest.raises(DominoConfigError, match=r"emb_dim differs between dflash_config \(32\) and the top level \(64\)"):
        DominoConfig.from_dict(_mutated("emb_dim", 64))


def test_error_missing_head_dims() -> None:
    raw = specforge_dflash_domino()
    del raw["dflash_config"]["gru_hidden_dim"]
    with pytest.raises(DominoConfigError, match="gru_hidden_dim is required"):
        DominoConfig.from_dict(raw)


def test_error_missing_mask_token() -> None:
    raw = specforge_dflash_domino()
    del raw["dflash_config"]["mask_token_id"]
    with pytest.raises(DominoConfigError, match="missing mask_token_id"):
        DominoConfig.from_dict(raw)


def test_error_missing_dims() -> None:
    raw = specforge_dflash_domino()
    del raw["hidden_size"]
    with pytest.raises(DominoConfigError, match="missing required field.*hidden_size"):
        DominoConfig.from_dict(raw)


def test_error_hidden_and_vocab_mismatch_with_target() -> None:
    cfg = DominoConfig.from_dict(specforge_dflash_domino())
    with pytest.raises(DominoConfigError, match="hidden_size mismatch: drafter hidden_size=64, target hidden_size=576"):
        cfg.validate_for_target(num_target_layers=8, hidden_size=576, vocab_size=100)
    with pytest.raises(DominoConfigError, match="vocab_size mismatch: drafter vocab_size=100, target vocab_size=49152"):
        cfg.validate_for_target(num_target_layers=8, hidden_size=64, vocab_size=49152)


def test_error_last_target_layer_when_serving() -> None:
    cfg = DominoConfig.from_dict(_mutated("dflash_config.target_layer_ids", [1, 7]))
    cfg.validate_for_target(num_target_layers=8, hidden_size=64, vocab_size=100)  # fine offline (HF)
    with pytest.raises(DominoConfigError, match="contains the target's last layer"):
        cfg.validate_for_target(num_target_layers=8, hidden_size=64, vocab_size=100, serving=True)


def test_error_unreadable_config(tmp_path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(DominoConfigError, match="unreadable config.json"):
        DominoConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps([1, 2]))
    with pytest.raises(DominoConfigError, match="must be a JSON object"):
        DominoConfig.from_pretrained(tmp_path)


def test_error_missing_config(tmp_path) -> None:
    with pytest.raises(DominoConfigError, match="no config.json"):
        DominoConfig.from_pretrained(tmp_path)
