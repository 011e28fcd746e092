"""The request fuzzer's response checks (benchmarks/fuzz_checks.py) on hand-made responses."""

from __future__ import annotations

from sglang_domino.benchmarks.fuzz_cases import Case
from sglang_domino.benchmarks.fuzz_checks import Outcome, check_generate


def _case(**kw) -> Case:
    base = dict(index=0, kind="generate_ids", path="/generate", body={}, rid="fz0-0-1", n=1, max_tokens=8,
                stream=False, prompt_len=3, ignore_eos=True)
    base.update(kw)
    return Case(**base)


def _reply(finish: dict, ids: list[int], **meta) -> dict:
    return {"text": "", "output_ids": ids,
            "meta_info": {"id": "fz0-0-1", "finish_reason": finish, "completion_tokens": len(ids), **meta}}


def test_a_reply_must_report_the_prompt_tokens_sent() -> None:
    out = Outcome(index=0, kind="generate_ids", stream=False)
    check_generate(_case(), _reply({"type": "length", "length": 8}, [5] * 8, prompt_tokens=3), out)
    assert out.problems == []
    out = Outcome(index=0, kind="generate_ids", stream=False)
    check_generate(_case(), _reply({"type": "length", "length": 8}, [5] * 8), out)
    assert out.problems == ["choice 0: prompt_tokens None, sent 3"]
    out = Outcome(index=0, kind="generate_ids", stream=False)
    check_generate(_case(), _reply({"type": "length", "length": 8}, [5] * 8, prompt_tokens=4), out)
    assert out.problems == ["choice 0: prompt_tokens 4, sent 3"]


def test_sglangs_abort_reply_has_no_prompt_tokens_and_only_an_aborted_request_may_get_it() -> None:
    """SGLang answers a request ended by /abort_request from TokenizerManager._handle_abort_req, without
    prompt_tokens (the four 'failed requests' of the published fuzz run were exactly the aborted /generate ones)."""
    abort = {"type": "abort", "message": "Abort in waiting queue"}
    out = Outcome(index=0, kind="generate_ids", stream=False, aborted=True)
    check_generate(_case(), _reply(abort, [5, 6]), out)
    assert out.problems == [] and out.finish == ["abort"]
    out = Outcome(index=0, kind="generate_ids", stream=False, aborted=False)  # not aborted by us: two problems
    check_generate(_case(), _reply(abort, [5, 6]), out)
    assert out.problems == ["choice 0: finished by abort, but this request was not aborted",
                            "choice 0: prompt_tokens None, sent 3"]
