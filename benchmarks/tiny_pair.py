"""A tiny target + Domino drafter pair, built offline in a second, for real-server tests.

Target: a 4-layer Llama (hidden 64, fp32, vocab 512) with a byte-level BPE tokenizer trained here on a few
paragraphs, a ChatML-style chat template and ``<|im_end|>`` as EOS. It is built to be *predictable* so that a
drafter can be right often, which is what exercises accepted blocks (stop strings, max_tokens and EOS that land
inside a block):

* ``lm_head`` is a scaled, permuted copy of the embedding, so the residual stream of token ``t`` votes for
  ``perm(t)``: left alone the model walks a fixed permutation of the vocabulary.
* attention and MLP outputs are random but weak (``context_strength``), so the context sometimes changes the
  argmax: drafts are then rejected, and greedy decoding still has wide fp32 margins (no near-ties).
* at temperature 1 the top token has roughly 40-60 % of the mass, so sampling tests see real spread.

Drafter (published format, written with :func:`sglang_domino.save_drafter`): DFlash backbone whose outputs
depend on the target context (``backbone_strength``), and a Domino head set by hand so that the corrected slots
follow the same permutation: the GRU keeps a decaying sum of the embeddings of the block's previous tokens, and
``embed_proj`` (Linear → SiLU → Linear with the ``[A, −A]`` / ``[B, −B]`` trick, which makes it exactly linear)
scores every vocabulary entry against it. ``shift_label=True``, ``pure_draft_prefix_len=1``.

Run as a script to write a pair: ``python benchmarks/tiny_pair.py OUT_DIR``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

VOCAB = 512
HIDDEN = 64
TARGET_LAYERS = 4
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|MASK|>"]

_CORPUS = """
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
Speculative decoding drafts several tokens at once and lets the target model verify them in one forward pass.
Every accepted token is a token the target would have produced itself, so the output does not change.
Once upon a time there was a small model that wanted to be fast. It read books about caching and attention.
Python is a programming language that lets you work quickly and integrate systems more effectively.
The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is Madrid.
Numbers: one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen.
Beautiful is better than ugly. Explicit is better than implicit. Simple is better than complex.
Sparse is better than dense. Readability counts. Errors should never pass silently.
def add(a, b): return a + b  # a tiny function; print(add(2, 3)) prints 5 to the console.
Questions and answers: what is the weather like today? It is sunny with a light breeze from the west.
"""

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class TinyPair:
    target: Path
    drafter: Path
    mask_token_id: int
    eos_token_id: int


def build_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None,
        unk_token=None, additional_special_tokens=["<|im_start|>", "<|MASK|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    assert len(fast) <= VOCAB, len(fast)
    return fast


@torch.no_grad()
def build_target(out: Path, *, seed: int = 0, logit_scale: float = 0.15, context_strength: float = 0.1,
                 arch: str = "llama") -> torch.nn.Module:
    """``arch``: "llama" (LlamaForCausalLM) or "qwen3" (Qwen3ForCausalLM, q/k norms) -- both capture paths."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM)}[arch]
    tokenizer = build_tokenizer(out)
    config = config_cls(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=TARGET_LAYERS,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
        rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, hidden_act="silu",
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"), bos_token_id=None,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    embed = torch.randn(VOCAB, HIDDEN)
    model.model.embed_tokens.weight.copy_(embed)
    perm = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(seed + 1))
    inv = torch.argsort(perm)
    # logits_j = s * <E[inv j], x>: token t votes for perm(t).
    model.lm_head.weight.copy_(logit_scale * embed[inv])
    for layer in model.model.layers:
        for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.mlp.gate_proj,
                    layer.mlp.up_proj):
            lin.weight.normal_(0.0, 0.3)
        layer.self_attn.o_proj.weight.normal_(0.0, 0.3 * context_strength)
        layer.mlp.down_proj.weight.normal_(0.0, 0.1 * context_strength)
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").unlink(missing_ok=True)
    return model


@torch.no_grad()
def build_drafter(out: Path, target: torch.nn.Module, *, mask_token_id: int, seed: int = 0, block_size: int = 8,
                  backbone_strength: float = 1.0, head_scale: float = 20.0, gru_input_scale: float = 0.1,
                  random_head: bool = False, shift_label: bool = True, pure_draft_prefix_len: int = 1):
    from sglang_domino import DominoConfig, DominoDrafter, save_drafter

    config = DominoConfig(
        hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=VOCAB, block_size=block_size, target_layer_ids=[0, 2],
        num_target_layers=TARGET_LAYERS, mask_token_id=mask_token_id, projector_type="domino", shift_label=shift_label,
        pure_draft_prefix_len=pure_draft_prefix_len, gru_hidden_dim=HIDDEN, emb_dim=2 * HIDDEN, rope_theta=10000.0,
        max_position_embeddings=2048, rms_norm_eps=1e-6,
    )
    torch.manual_seed(seed + 100)
    drafter = DominoDrafter(config).eval()
    for p in drafter.parameters():
        if p.ndim > 1:
            p.mul_(10.0)  # N(0, 0.2): context features matter
    for layer in drafter.layers:
        layer.self_attn.o_proj.weight.mul_(backbone_strength)
        layer.mlp.down_proj.weight.mul_(0.2 * backbone_strength)
    if not random_head:
        lm_head = target.lm_head.weight.detach().float()  # [V, H] = s * E[inv]
        g = HIDDEN
        gru = drafter.prefix_gru
        gru.weight_hh_l0.zero_()
        gru.weight_ih_l0.zero_()
        # gates (r, z, n): r = z = sigmoid(0) = 1/2; n = tanh(c·x); h' = (n + h) / 2.
        gru.weight_ih_l0[2 * g: 3 * g].copy_(gru_input_scale * torch.eye(g))
        w1 = torch.zeros(2 * HIDDEN, HIDDEN + g)
        w1[:HIDDEN, HIDDEN:] = torch.eye(g)
        w1[HIDDEN:, HIDDEN:] = -torch.eye(g)
        drafter.embed_proj[0].weight.copy_(w1)
        b = head_scale * lm_head / lm_head.norm(dim=-1, keepdim=True).mean()
        drafter.embed_proj[2].weight.copy_(torch.cat((b, -b), dim=1))  # B·SiLU(h) − B·SiLU(−h) = B·h
    save_drafter(drafter, out)
    return drafter


def build_pair(root: Path, arch: str = "llama", **drafter_kwargs) -> TinyPair:
    root = Path(root)
    target_dir, drafter_dir = root / "target", root / "drafter"
    target = build_target(target_dir, arch=arch)
    tokenizer_config = json.loads((target_dir / "tokenizer_config.json").read_text())
    del tokenizer_config
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(target_dir)
    mask_id = tok.convert_tokens_to_ids("<|MASK|>")
    build_drafter(drafter_dir, target, mask_token_id=mask_id, **drafter_kwargs)
    return TinyPair(target_dir, drafter_dir, mask_id, tok.eos_token_id)


if __name__ == "__main__":
    pair = build_pair(Path(sys.argv[1]))
    print(pair)
