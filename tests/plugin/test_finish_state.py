"""Hook 15 (``hooks._req_update_finish_state``): a speculative step that accepts several tokens finishes where plain
decoding would have, at the earliest stop, on upstream's own ``Req`` (sglang 0.5.23).

The reproduction: a step accepts [.., EOS, x, y] and a stop string ends at y. Upstream checks stop strings first and
finished at y, emitting x and y after the EOS (the request fuzzer caught it in CI:
``stop token / EOS 2 at 17 of 20 did not end the request``); plain decoding stops at the EOS.
"""

from __future__ import annotations

import pytest

from sglang.srt.managers.schedule_batch import FINISH_MATCHED_STR, FINISH_MATCHED_TOKEN, Req
from sglang.srt.sampling.sampling_params import SamplingParams

from sglang_domino.plugin.hooks import _req_update_finish_state

EOS = 2
WORDS = {EOS: "</s>", 10: " a", 11: " b", 12: " c", 13: " d", 14: ",", 15: " with"}


class Tokenizer:
    eos_token_id = EOS
    additional_stop_token_ids = None

    def decode(self, ids, **kwargs) -> str:
        return "".join(WORDS[i] for i in ids)

    def encode(self, text: str, **kwargs) -> list[int]:  # stop strings' token lengths (normalize)
        ids, rest = [], text
        while rest:
            token, word = max(((t, w) for t, w in WORDS.items() if rest.startswith(w)), key=lambda tw: len(tw[1]))
            ids.append(token)
            rest = rest[len(word):]
        return ids


def make_req(stop: list[str], outputs: list[int], stop_token_ids=None) -> Req:
    params = SamplingParams(max_new_tokens=64, stop=stop, stop_token_ids=stop_token_ids)
    params.normalize(Tokenizer())
    req = Req("r", "", [1, 2, 3], params, eos_token_ids={EOS})
    req.tokenizer = Tokenizer()
    req.output_ids.extend(outputs)
    return req


def step(req: Req, accepted: int, hooked: bool) -> None:
    if hooked:
        _req_update_finish_state(Req.update_finish_state, req, accepted)
    else:
        Req.update_finish_state(req, accepted)


def plain_decoding_finish(stop: list[str], outputs: list[int], stop_token_ids=None):
    """One token per step, as plain decoding checks: (finished_len, reason type, matched)."""
    req = make_req(stop, [], stop_token_ids)
    for token in outputs:
        req.output_ids.append(token)
        Req.update_finish_state(req, 1)
        if req.finished():
            break
    return (req.finished_len or len(req.output_ids)), type(req.finished_reason), req.finished_reason.matched


CASES = {
    "EOS before a stop string in one step": ([" with"], [10, 11, EOS, 12, 15]),
    "a later-listed stop string ends first": ([" with", ","], [10, 14, 12, 15]),
    "a stop token before a stop string": ([" with"], [10, 13, 12, 15], [13]),
    "stop string and EOS on the same token": (["</s>"], [10, 11, EOS, 12]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_multi_token_step_finishes_where_plain_decoding_does(case: str) -> None:
    stop, outputs, *rest = CASES[case]
    want = plain_decoding_finish(stop, outputs, *rest)
    req = make_req(stop, outputs, *rest)
    step(req, len(outputs), hooked=True)
    assert (req.finished_len, type(req.finished_reason), req.finished_reason.matched) == want


def test_upstream_alone_emits_tokens_after_the_eos() -> None:
    """The reproduction: without the hook, upstream finishes on the stop string, after the EOS."""
    stop, outputs = CASES["EOS before a stop string in one step"]
    req = make_req(stop, outputs)
    step(req, len(outputs), hooked=False)
    assert isinstance(req.finished_reason, FINISH_MATCHED_STR) and req.finished_len == 5
    assert plain_decoding_finish(stop, outputs) == (3, FINISH_MATCHED_TOKEN, EOS)


def test_one_token_steps_are_untouched() -> None:
    req = make_req([" with"], [10, 11])
    step(req, 1, hooked=True)
    assert not req.finished()
