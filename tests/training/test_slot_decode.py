"""The self-distillation decoder (slot KV cache, continuous batching): every prompt gets the tokens of decoding
it alone with the model's own forward, however rows enter, end, grow and shrink the cache."""

from __future__ import annotations

import pytest
import torch

from sglang_domino.training.distill import greedy_generate
from tiny_chat_target import tiny_target, tokenizer  # noqa: F401 (pytest fixtures)
from sglang_domino.training.slot_decode import SlotGreedyDecoder, slot_greedy_stream

QUESTIONS = ["What is the capital of France?", "Explain recursion", "haiku", "def add(a, b):", "Waves fold into foam",
             "What is 2 plus 2? Explain recursion: a function that calls itself " * 3, "sea", "print(add(2, 3))"]


@pytest.fixture(scope="module")
def model(tiny_target):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_target, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                    add_generation_prompt=True), add_special_tokens=False)["input_ids"]
            for q in QUESTIONS]


def _alone(model, prompts, max_new, stop):
    """Reference: HF forward, one prompt at a time (``greedy_generate`` drops a row once it emits ``stop``)."""
    with torch.inference_mode():
        return [greedy_generate(model, torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long), max_new, stop)[0]
                for p in prompts]


@pytest.mark.parametrize("batch_size, chunk", [(3, 64), (2, 4), (8, 8)])
def test_stream_matches_one_at_a_time(model, prompts, batch_size, chunk, monkeypatch):
    """Refills of several prompts at once, rows ending at different steps, and (small ``chunk``) the cache
    growing and shrinking under the running rows: each prompt still gets its tokens of decoding alone."""
    monkeypatch.setattr(SlotGreedyDecoder, "CHUNK", chunk)
    capacities = []
    fit = SlotGreedyDecoder._fit_capacity

    def recording_fit(self, width):
        fit(self, width)
        capacities.append(self.capacity)

    monkeypatch.setattr(SlotGreedyDecoder, "_fit_capacity", recording_fit)
    free = _alone(model, prompts, 16, None)
    # Stop on the token most rows emit somewhere after their first, so rows end at different steps.
    stop = max({t for row in free for t in row}, key=lambda t: sum(t in row[1:] for row in free))
    alone = _alone(model, prompts, 16, stop)
    assert len({len(x) for x in alone}) > 1  # rows really finished at different steps
    with torch.inference_mode():
        streamed = list(slot_greedy_stream(model, enumerate(prompts), 16, stop, batch_size=batch_size,
                                           max_prompt_tokens=max(map(len, prompts))))
    assert sorted(k for k, _ in streamed) == list(range(len(prompts)))  # each prompt exactly once
    assert {k: v for k, v in streamed} == dict(enumerate(alone))
    if chunk < 64:  # the cache really grew and shrank while rows were running
        changes = [b - a for a, b in zip(capacities, capacities[1:]) if b != a]
        assert any(c > 0 for c in changes[1:]) and any(c < 0 for c in changes)


def test_first_token_stop_frees_the_slot(model, prompts):
    """A prompt whose first generated token is the stop token ends at prefill; its slot serves the next one."""
    free = _alone(model, prompts, 4, None)
    stop = free[2][0]
    alone = _alone(model, prompts, 4, stop)
    with torch.inference_mode():
        streamed = dict(slot_greedy_stream(model, enumerate(prompts), 4, stop, batch_size=1,
                                           max_prompt_tokens=max(map(len, prompts))))
    assert streamed == dict(enumerate(alone)) and streamed[2] == [stop]


def test_prompt_over_the_limit_is_refused(model, prompts):
    with pytest.raises(ValueError, match="over max_prompt_tokens=8"):
        list(slot_greedy_stream(model, enumerate(prompts), 4, None, batch_size=2, max_prompt_tokens=8))
