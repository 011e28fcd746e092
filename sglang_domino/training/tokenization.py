"""Chat tokenisation for training: a conversation -> token ids and the assistant-only loss mask, and the target's
tokenizer loaded once, when first needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence


def tokenize_conversation(tokenizer: Any, messages: Sequence[dict[str, str]], max_len: int, *,
                          final_turn_complete: bool = True):
    """Render ``messages`` with the tokenizer's chat template -> ``(input_ids, loss_mask)``, 1-D tensors.

    ``loss_mask`` is True exactly on the tokens the target generated in assistant turns: each assistant
    message's content and its end-of-turn token (``<|im_end|>``), not the role header before it nor the
    template's newline after it (the model never generates those). ``final_turn_complete=False`` (a
    response cut at ``max_new_tokens``) leaves the last turn's end-of-turn token out of the loss, since the
    target did not produce it. Sequences are truncated to ``max_len`` tokens.

    Spans are found on the rendered text (prefix renderings give each turn's character range) and mapped to
    tokens through the fast tokenizer's offsets, so BPE merges can't shift a boundary.
    """
    import torch

    def render(msgs: Sequence[dict[str, str]], gen: bool) -> str:
        return tokenizer.apply_chat_template(list(msgs), tokenize=False, add_generation_prompt=gen)

    full = render(messages, False)
    eos = tokenizer.eos_token or ""
    spans: list[tuple[int, int]] = []
    last_assistant = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(render(messages[:i], True))
        end = len(render(messages[: i + 1], False))
        if full[:end] != render(messages[: i + 1], False) or full[:start] != render(messages[:i], True):
            raise ValueError("the chat template is not prefix-stable; cannot locate assistant turns")
        content_end = full.find(eos, start, end) if eos else -1
        if content_end >= 0:  # keep the end-of-turn token, drop what the template adds after it
            end = content_end + (len(eos) if (final_turn_complete or i != last_assistant) else 0)
        spans.append((start, end))

    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"][:max_len]
    offsets = enc["offset_mapping"][: len(ids)]
    mask = [any(s <= a < e for s, e in spans) and b > a for a, b in offsets]
    return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.bool)


def tokenizer_loader(target_dir: Path) -> Callable[[], object]:
    cache: dict[str, object] = {}

    def get():
        if "tok" not in cache:
            from transformers import AutoTokenizer

            cache["tok"] = AutoTokenizer.from_pretrained(str(target_dir))
        return cache["tok"]

    return get


__all__ = [
    "tokenize_conversation",
    "tokenizer_loader",
]
