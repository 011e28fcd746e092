"""validate_server_args: every bad drafter / server configuration is refused with one line naming the problem."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from conftest import random_drafter
from safetensors.torch import load_file, save_file

from sglang_domino import save_drafter
from sglang_domino.plugin.validate import DominoServerArgsError, validate_server_args

TARGET = dict(hidden_size=64, vocab_size=96, num_hidden_layers=4, intermediate_size=128, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=512)


def write_target(path: Path, **overrides) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "rms_norm_eps": 1e-6,
           "rope_theta": 10000.0, "torch_dtype": "float32", **TARGET, **overrides}
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def args(target: Path, draft, **overrides) -> argparse.Namespace:
    base = dict(model_path=str(target), speculative_draft_model_path=None if draft is None else str(draft),
                trust_remote_code=False, revision=None, context_length=None, speculative_num_draft_tokens=None,
                speculative_dflash_block_size=None, tp_size=1, pp_size=1, enable_dp_attention=False,
                speculative_draft_window_size=None)
    base.update(overrides)
    return argparse.Namespace(**base)


@pytest.fixture
def pair(tmp_path):
    draft = save_drafter(random_drafter(seed=0), tmp_path / "draft")
    return write_target(tmp_path / "target"), draft


def refused(ns) -> str:
    with pytest.raises(DominoServerArgsError) as info:
        validate_server_args(ns)
    message = str(info.value)
    assert message.startswith("sglang-domino: ") and "\n" not in message
    return message


def _edit_tensors(draft: Path, fn) -> None:
    tensors = load_file(str(draft / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(draft / "model.safetensors"))


def _edit_config(draft: Path, fn) -> None:
    cfg = json.loads((draft / "config.json").read_text())
    fn(cfg)
    (draft / "config.json").write_text(json.dumps(cfg))


def test_good_pair_passes(pair) -> None:
    target, draft = pair
    config = validate_server_args(args(target, draft))
    assert config.block_size == 8 and config.has_head


def test_missing_draft_path(pair) -> None:
    target, _ = pair
    assert "--speculative-draft-model-path" in refused(args(target, None))


def test_missing_checkpoint(pair, tmp_path) -> None:
    target, _ = pair
    assert "does not exist" in refused(args(target, tmp_path / "nowhere"))


def test_partial_checkpoint(pair) -> None:
    target, draft = pair
    _edit_tensors(draft, lambda t: t.pop("embed_proj.2.weight"))
    assert "missing tensors: embed_proj.2.weight" in refused(args(target, draft))


def test_no_weights_at_all(pair) -> None:
    target, draft = pair
    (draft / "model.safetensors").unlink()
    assert "no model.safetensors" in refused(args(target, draft))


def test_wrong_shapes(pair) -> None:
    target, draft = pair
    _edit_tensors(draft, lambda t: t.__setitem__("fc.weight", torch.zeros(64, 64)))
    assert "wrongly shaped tensors: fc.weight (64, 64) (expected (64, 128))" in refused(args(target, draft))


def test_vocab_mismatch(pair, tmp_path) -> None:
    _, draft = pair
    target = write_target(tmp_path / "t2", vocab_size=128)
    assert "vocab_size mismatch: drafter vocab_size=96, target vocab_size=128" in refused(args(target, draft))


def test_hidden_size_mismatch(pair, tmp_path) -> None:
    _, draft = pair
    target = write_target(tmp_path / "t3", hidden_size=32, head_dim=8)
    assert "hidden_size mismatch" in refused(args(target, draft))


def test_target_layer_ids_out_of_range(pair, tmp_path) -> None:
    _, draft = pair
    target = write_target(tmp_path / "t4", num_hidden_layers=2)  # drafter reads layer 2
    assert "target_layer_ids[1]=2 is outside the target's 2 layers" in refused(args(target, draft))


def test_target_layer_id_equal_to_last_layer_is_never_captured(pair, tmp_path) -> None:
    _, draft = pair
    target = write_target(tmp_path / "t5", num_hidden_layers=3)  # layer 2 is now the last one
    assert "last layer" in refused(args(target, draft))


def test_unknown_projector_type(pair) -> None:
    target, draft = pair
    _edit_config(draft, lambda c: c["dflash_config"].__setitem__("projector_type", "medusa"))
    assert "projector_type='medusa' is unknown" in refused(args(target, draft))


def test_block_cannot_fit_context(pair) -> None:
    target, draft = pair
    assert "cannot fit the context length 8" in refused(args(target, draft, context_length=8))


def test_drafter_shorter_than_context(pair) -> None:
    target, draft = pair
    _edit_config(draft, lambda c: c.__setitem__("max_position_embeddings", 256))
    assert "max_position_embeddings=256" in refused(args(target, draft))


def test_block_of_one_drafts_nothing(pair) -> None:
    target, draft = pair
    assert "drafts nothing" in refused(args(target, draft, speculative_num_draft_tokens=1))


def test_unsupported_parallelism(pair) -> None:
    target, draft = pair
    assert "dp-attention" in refused(args(target, draft, enable_dp_attention=True, tp_size=2))
    assert "pipeline parallelism" in refused(args(target, draft, pp_size=2))


def test_failed_contract_check_refuses_domino(pair, monkeypatch) -> None:
    from sglang_domino.plugin import contract
    from sglang_domino.plugin.contract import ContractError

    target, draft = pair
    monkeypatch.setattr(contract, "_failure", ContractError(
        "SGLang contract check failed: sglang.srt.x.Y is missing (needed); pinned"))
    assert "sglang.srt.x.Y is missing" in refused(args(target, draft))


@pytest.mark.parametrize("env, value, expected", [
    ("SGLANG_DOMINO_DRAFT_LOGITS_DTYPE", "fp8", "SGLANG_DOMINO_DRAFT_LOGITS_DTYPE='fp8'"),
    ("SGLANG_DOMINO_DRAFT_TEMPERATURE_SCALE", "sharp", "SGLANG_DOMINO_DRAFT_TEMPERATURE_SCALE='sharp'"),
    ("SGLANG_DOMINO_DRAFT_TEMPERATURE_SCALE", "0", "SGLANG_DOMINO_DRAFT_TEMPERATURE_SCALE='0': expected a finite number > 0"),
    ("SGLANG_DOMINO_CPU_FAST_PATHS", "maybe", "SGLANG_DOMINO_CPU_FAST_PATHS='maybe'"),
    ("SGLANG_DOMINO_MAX_SPECULATIVE_BATCH", "-1", "SGLANG_DOMINO_MAX_SPECULATIVE_BATCH='-1'"),
])
def test_bad_drafting_env_refused_at_launch(pair, monkeypatch, env: str, value: str, expected: str) -> None:
    target, draft = pair
    monkeypatch.setenv(env, value)
    assert expected in refused(args(target, draft))


# --- tensor parallelism (issue 27): what a TP drafter needs, each its own line
def test_tensor_parallel_sizes_that_fit_pass(pair) -> None:
    """The tiny drafter (4 heads, 2 KV heads, vocabulary 96 -> 128 padded) fits TP 2 and 4."""
    target, draft = pair
    for tp in (2, 4):
        assert validate_server_args(args(target, draft, tp_size=tp)).has_head


def test_tensor_parallel_size_must_divide_attention_heads(pair) -> None:
    target, draft = pair
    assert "--tp-size 3 does not divide the drafter's 4 attention heads" in refused(args(target, draft, tp_size=3))
    assert "--tp-size 8 does not divide the drafter's 4 attention heads" in refused(args(target, draft, tp_size=8))


def test_tensor_parallel_refusal_lists_the_sizes_the_drafter_fits() -> None:
    """The embedded drafter's geometry (9 heads, 3 KV heads, vocabulary 49,152): TP 2 is refused, naming 1 and 3."""
    from conftest import tiny_config

    from sglang_domino.plugin.validate import check_tensor_parallel

    embedded_like = tiny_config(num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, mask_token_id=12)
    check_tensor_parallel(embedded_like, 3)
    with pytest.raises(DominoServerArgsError, match=r"9 attention heads; this drafter fits --tp-size 1, 3 \(up to 16\)"):
        check_tensor_parallel(embedded_like, 2)


def test_tensor_parallel_checks_by_field() -> None:
    from conftest import tiny_config

    from sglang_domino.plugin.validate import check_tensor_parallel

    check_tensor_parallel(tiny_config(), 1)  # TP 1: nothing to check
    with pytest.raises(DominoServerArgsError, match="does not fit the drafter's 3 KV heads"):
        check_tensor_parallel(tiny_config(num_attention_heads=6, num_key_value_heads=3), 2)
    # 4 KV heads replicated over TP 8 fit (SGLang's DFlash attention rule); 8 heads divide; 128 padded divides
    check_tensor_parallel(tiny_config(num_attention_heads=8, num_key_value_heads=4, head_dim=8), 8)
    with pytest.raises(DominoServerArgsError, match=r"padded vocabulary \(96 padded to a multiple of 64: 128\)"):
        check_tensor_parallel(tiny_config(num_attention_heads=6, num_key_value_heads=3), 3)
    with pytest.raises(DominoServerArgsError, match="must be at least 1"):
        check_tensor_parallel(tiny_config(), 0)
