"""The offline speculative loop is lossless against the target's own greedy generate()."""

from __future__ import annotations

import pytest
import torch
from conftest import random_drafter
from transformers import LlamaConfig, LlamaForCausalLM

from sglang_domino.offline import plain_generate, speculative_generate


def tiny_target(seed: int = 0, vocab: int = 96) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.3, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval().to(torch.float32)


@pytest.fixture(scope="module")
def target() -> LlamaForCausalLM:
    return tiny_target()


PROMPTS = [[5, 17, 33], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [42], [90, 3, 3, 3, 3, 7, 60, 12, 81, 9, 9, 2, 44, 50]]


@pytest.mark.parametrize("block_size", [2, 4, 16])
@pytest.mark.parametrize("shift_label", [True, False])
def test_greedy_speculation_equals_plain_generate(target, block_size: int, shift_label: bool) -> None:
    drafter = random_drafter(seed=block_size, block_size=block_size, shift_label=shift_label,
                             pure_draft_prefix_len=min(1, block_size - 2))
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        expected = plain_generate(target, ids, max_new_tokens=40)
        got = speculative_generate(target, drafter, ids, max_new_tokens=40)
        assert got.tokens == expected, f"prompt {prompt}"
        assert sum(got.accept_lengths) + 1 >= len(got.tokens)  # every token came from the prefill or a step


def test_eos_inside_an_accepted_block_stops_there(target) -> None:
    """Use the plain output's 7th token as EOS: speculation must stop right after it, like generate()."""
    ids = torch.tensor([PROMPTS[1]])
    reference = plain_generate(target, ids, max_new_tokens=30)
    eos = reference[6]
    drafter = random_drafter(seed=1, block_size=8)
    got = speculative_generate(target, drafter, ids, max_new_tokens=30, eos_token_ids=[eos])
    assert got.tokens == plain_generate(target, ids, max_new_tokens=30, eos_token_ids=[eos])
    assert got.tokens[-1] == eos


def test_a_drafter_that_agrees_with_the_target_is_accepted_in_full() -> None:
    """Accounting check: a target with an all-zero lm_head always says token 0 (argmax ties go to the lowest
    id); the drafter shares that lm_head, so its base logits draft 0 too and every block is accepted whole."""
    target = tiny_target(seed=3)
    with torch.no_grad():
        target.lm_head.weight.zero_()
    drafter = random_drafter(seed=2, block_size=8)
    drafter.drop_head()
    out = speculative_generate(target, drafter, torch.tensor([[3, 4, 5]]), max_new_tokens=33)
    assert out.tokens == [0] * 33
    assert out.accept_lengths == [8, 8, 8, 8]  # 1 prefill token + 4 full blocks of 8
    assert out.tau == 8.0


def test_sampled_speculation_emits_valid_tokens(target) -> None:
    from sglang_domino import SamplingParams

    drafter = random_drafter(seed=4, block_size=6)
    out = speculative_generate(target, drafter, torch.tensor([PROMPTS[0]]), max_new_tokens=25,
                               sampling=SamplingParams.uniform(1, temperature=0.9, top_p=0.95),
                               generator=torch.Generator().manual_seed(0))
    assert len(out.tokens) == 25 and all(0 <= t < 96 for t in out.tokens)
    assert all(1 <= a <= 6 for a in out.accept_lengths)


@pytest.mark.parametrize("verify_width", [2, 3, 5])
def test_a_narrower_verify_width_stays_lossless(target, verify_width: int) -> None:
    """A drafter trained with block 8 verified ``verify_width`` tokens at a time (SGLang's
    --speculative-num-draft-tokens): output unchanged, never more than the width per step."""
    drafter = random_drafter(seed=5, block_size=8)
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        got = speculative_generate(target, drafter, ids, max_new_tokens=30, block_size=verify_width)
        assert got.tokens == plain_generate(target, ids, max_new_tokens=30), f"prompt {prompt}"
        assert all(1 <= a <= verify_width for a in got.accept_lengths)


def test_the_agreeing_drafter_fills_a_narrower_width() -> None:
    target = tiny_target(seed=3)
    with torch.no_grad():
        target.lm_head.weight.zero_()
    drafter = random_drafter(seed=2, block_size=8)
    drafter.drop_head()
    out = speculative_generate(target, drafter, torch.tensor([[3, 4, 5]]), max_new_tokens=13, block_size=4)
    assert out.accept_lengths == [4, 4, 4]


@pytest.mark.parametrize("draft_logits_dtype", ["float32", "bfloat16"])
def test_bf16_drafting_lm_head_stays_lossless(target, draft_logits_dtype: str) -> None:
    """The drafting lm_head precision changes proposals only (near-ties); the float32 target still decides."""
    drafter = random_drafter(seed=7, block_size=8)
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        got = speculative_generate(target, drafter, ids, max_new_tokens=40, draft_logits_dtype=draft_logits_dtype)
        assert got.tokens == plain_generate(target, ids, max_new_tokens=40), (prompt, draft_logits_dtype)
