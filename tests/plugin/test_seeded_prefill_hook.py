"""hooks._sampler_forward: a seeded request's first token follows the seeded rule, the others SGLang's draw."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from sglang_domino.plugin.hooks import SEEDS_ATTR, _sampler_forward
from sglang_domino.sampling import SamplingParams, filtered_probs, seeded_choice

VOCAB = 32


class _Info(SimpleNamespace):
    def __len__(self) -> int:
        return len(self.temperatures)


def _info(seeds, temperature=0.8, min_p=0.05) -> _Info:
    n = len(seeds)
    info = _Info(is_all_greedy=False, need_min_p_sampling=True, has_custom_logit_processor=False,
                 temperatures=torch.full((n, 1), temperature), top_ks=torch.full((n,), 1 << 30),
                 top_ps=torch.full((n,), 0.9), min_ps=torch.full((n,), min_p))
    setattr(info, SEEDS_ATTR, seeds)
    return info


def _sglang_like_sampler(calls):
    """Stands in for SGLang's Sampler.forward: edits the logits in place, draws, writes logprobs."""

    def original(self, logits_output, sampling_info, return_logprob, top_logprobs_nums, token_ids_logprobs, positions):
        calls.append(positions)
        logits = logits_output.next_token_logits
        logits.div_(sampling_info.temperatures)
        logits[:] = torch.softmax(logits, dim=-1)
        ids = torch.multinomial(logits, 1).view(-1).to(torch.int32)
        if return_logprob:
            logits_output.next_token_logprobs = torch.log(logits).gather(1, ids[:, None].long())[:, 0]
        return ids

    return original


def test_seeded_rows_take_the_seeded_token_and_its_logprob() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, VOCAB) * 2
    positions = torch.tensor([6, 11, 3])  # last prompt token of each request
    seeds = [None, 42, -7]
    calls: list = []
    out = SimpleNamespace(next_token_logits=logits.clone())
    ids = _sampler_forward(_sglang_like_sampler(calls), None, out, _info(seeds), True, [], [], positions)
    assert len(calls) == 1  # SGLang's sampler ran once, for the whole batch
    params = SamplingParams(torch.full((2,), 0.8), torch.full((2,), 1 << 30), torch.full((2,), 0.9),
                            torch.full((2,), 0.05))
    expected = seeded_choice(filtered_probs(logits[1:], params)[:, None], torch.tensor([42, -7]),
                             positions[1:, None] + 1)[:, 0]
    assert ids[1:].tolist() == expected.tolist() and ids.dtype == torch.int32
    own = torch.log_softmax(logits[1:] / 0.8, dim=-1).gather(1, expected[:, None])[:, 0]
    assert torch.allclose(out.next_token_logprobs[1:], own, atol=1e-5)
    # The unseeded row kept SGLang's draw, and its logprob is the one SGLang wrote for it.
    assert torch.allclose(out.next_token_logprobs[0],
                          torch.log_softmax(logits[0] / 0.8, dim=-1)[ids[0].long()], atol=1e-5)


def test_the_seeded_first_token_is_the_same_every_time_and_follows_min_p() -> None:
    logits = torch.randn(1, VOCAB) * 3
    draws = set()
    for attempt in range(5):
        torch.manual_seed(attempt)  # SGLang's own draw changes, the seeded token must not
        out = SimpleNamespace(next_token_logits=logits.clone())
        draws.add(int(_sampler_forward(_sglang_like_sampler([]), None, out, _info([99], min_p=0.3), False, [], [],
                                       torch.tensor([4]))[0]))
    assert len(draws) == 1
    probs = filtered_probs(logits, SamplingParams(torch.tensor([0.8]), torch.tensor([1 << 30]), torch.tensor([0.9]),
                                                  torch.tensor([0.3])))[0]
    assert probs[draws.pop()] > 0  # inside the min-p support (SGLang's own seeded path asserts on min-p)


def test_batches_without_seeds_are_untouched() -> None:
    calls: list = []
    logits = torch.randn(2, VOCAB)
    out = SimpleNamespace(next_token_logits=logits.clone())
    info = _info([None, None])
    delattr(info, SEEDS_ATTR)
    torch.manual_seed(3)
    ids = _sampler_forward(_sglang_like_sampler(calls), None, out, info, False, [], [], torch.tensor([1, 2]))
    torch.manual_seed(3)
    plain = _sglang_like_sampler([])(None, SimpleNamespace(next_token_logits=logits.clone()), info, False, [], [],
                                     torch.tensor([1, 2]))
    assert torch.equal(ids, plain)
