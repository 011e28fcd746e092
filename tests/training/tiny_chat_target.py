"""Fixtures shared by the training-data tests (import them by name): a byte-level BPE tokenizer trained on a few
sentences (with the embedded target's ChatML template) and a tiny random Llama, both built offline in seconds,
standing in for the real target. (Not a ``conftest.py``: ``tests/conftest.py`` is imported as ``conftest``.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sglang_domino.embedded.target import CHATML_TEMPLATE

_CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "Write a haiku about the sea. Waves fold into foam, the tide keeps its slow promise.",
    "def add(a, b): return a + b  # print(add(2, 3)) prints 5",
    "Explain recursion: a function that calls itself until a base case stops it.",
] * 4


def build_tokenizer():
    """A ChatML byte-level BPE tokenizer (special ids 0-2 as in SmolLM2), built without any download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                   bos_token="<|im_start|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML_TEMPLATE
    return fast


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def tiny_target(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer random Llama saved with the tokenizer: what ``self_distill`` loads."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny_target")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                      initializer_range=0.3,  # large enough that outputs depend on the context
                      pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    LlamaForCausalLM(cfg).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
