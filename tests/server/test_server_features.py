"""Scheduler features inside accepted blocks: streaming, n > 1, logprobs, abort/disconnect, 4xx, acceptance stats."""

from __future__ import annotations

import json
import time
from typing import Callable

import pytest
import requests

pytestmark = [pytest.mark.server, pytest.mark.timeout(600)]

PROMPT = [40, 81, 7, 300, 12, 99, 150, 44]
GREEDY = {"temperature": 0, "max_new_tokens": 40, "ignore_eos": True}


@pytest.fixture(scope="module")
def reference(servers) -> dict:
    return servers["plain"].generate(input_ids=PROMPT, sampling_params=GREEDY, return_logprob=True,
                                     top_logprobs_num=3)


def _stream(server, payload: dict, max_chunks: int | None = None,
            after_first: Callable[[], None] | None = None) -> list[dict]:
    """The chunks of a streamed /generate; ``after_first`` runs once the first chunk has arrived."""
    chunks = []
    with requests.post(server.url + "/generate", json=dict(payload, stream=True), stream=True, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line or line == b"data: [DONE]":
                continue
            chunks.append(json.loads(line.decode()[len("data: "):]))
            if after_first is not None and len(chunks) == 1:
                after_first()
            if max_chunks is not None and len(chunks) >= max_chunks:
                break  # leaving the with-block closes the connection: a client disconnect
    return chunks


def test_streaming_equals_plain(servers, reference) -> None:
    chunks = _stream(servers["domino"], {"input_ids": PROMPT, "sampling_params": GREEDY})
    assert chunks[-1]["output_ids"] == reference["output_ids"]
    assert chunks[-1]["text"] == reference["text"]
    # Several tokens per chunk: accepted blocks are streamed as they are verified.
    assert 1 < len(chunks) < len(reference["output_ids"])


def test_n_greater_than_one(servers, reference) -> None:
    outs = servers["domino"].generate(input_ids=PROMPT, sampling_params=dict(GREEDY, n=3))
    assert isinstance(outs, list) and len(outs) == 3
    for out in outs:
        assert out["output_ids"] == reference["output_ids"]


def test_logprobs_equal_plain(servers, reference) -> None:
    out = servers["domino"].generate(input_ids=PROMPT, sampling_params=GREEDY, return_logprob=True, top_logprobs_num=3)
    mine, ref = out["meta_info"]["output_token_logprobs"], reference["meta_info"]["output_token_logprobs"]
    assert [t[1] for t in mine] == [t[1] for t in ref]
    assert [t[0] for t in mine] == pytest.approx([t[0] for t in ref], abs=1e-4)
    top_mine, top_ref = out["meta_info"]["output_top_logprobs"], reference["meta_info"]["output_top_logprobs"]
    assert [[t[1] for t in row] for row in top_mine] == [[t[1] for t in row] for row in top_ref]


def test_client_disconnect_then_server_still_exact(servers, reference) -> None:
    long = {"input_ids": PROMPT, "sampling_params": {"temperature": 0, "max_new_tokens": 600, "ignore_eos": True}}
    chunks = _stream(servers["domino"], long, max_chunks=2)
    assert len(chunks) == 2
    time.sleep(1.0)
    assert servers["domino"].alive()
    out = servers["domino"].generate(input_ids=PROMPT, sampling_params=GREEDY)
    assert out["output_ids"] == reference["output_ids"]


def test_abort_request(servers, reference) -> None:
    """/abort_request of a request being decoded ends it with finish reason abort, its tokens so far a prefix of
    plain decoding's. The abort goes out once the first streamed chunk shows the request decoding (a fixed sleep
    was too long on a fast machine: the tiny pair finished 1,500 tokens in under two seconds)."""
    rid = "abort-me"
    payload = {"rid": rid, "input_ids": PROMPT,
               "sampling_params": {"temperature": 0, "max_new_tokens": 1500, "ignore_eos": True}}

    def abort() -> None:
        assert servers["domino"].post("/abort_request", {"rid": rid}).status_code == 200

    out = _stream(servers["domino"], payload, after_first=abort)[-1]
    assert out["meta_info"]["finish_reason"]["type"] == "abort"
    assert len(out["output_ids"]) < 1500
    assert out["output_ids"][: len(reference["output_ids"])] == reference["output_ids"][: len(out["output_ids"])]
    assert servers["domino"].generate(input_ids=PROMPT, sampling_params=GREEDY)["output_ids"] == reference["output_ids"]


def test_bad_requests_get_normal_4xx(servers) -> None:
    for server in (servers["domino"], servers["plain"]):
        r = server.post("/generate", {"input_ids": PROMPT, "sampling_params": {"temperature": -1}})
        assert r.status_code == 400, r.text
        r = server.post("/generate", {"input_ids": PROMPT, "sampling_params": {"top_p": 2.0}})
        assert r.status_code == 400, r.text
    r = servers["domino"].post("/v1/chat/completions", {"model": "m", "messages": "not a list"})
    assert 400 <= r.status_code < 500


CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 30, "temperature": 0}


def _chat(server, body: dict) -> dict:
    r = server.post("/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def test_openai_chat_equals_plain(servers) -> None:
    a = _chat(servers["plain"], CHAT)["message"]["content"]
    b = _chat(servers["domino"], CHAT)["message"]["content"]
    assert a, "the plain server answered the chat with no text"
    assert a == b


def _first_seen_at_or_after(text: str, start: int, length: int = 3) -> str | None:
    """A printable substring of ``length`` characters starting at or after ``start`` that does not occur earlier."""
    for k in range(start, len(text) - length + 1):
        s = text[k : k + length]
        if s.isprintable() and s.strip() == s and text.find(s) == k:
            return s
    return None


def test_openai_chat_stop_string(servers) -> None:
    """A stop string from the middle of the plain answer: both servers end the answer right before it."""
    full = _chat(servers["plain"], CHAT)["message"]["content"]
    stop = _first_seen_at_or_after(full, len(full) // 3)
    if stop is None:
        pytest.fail(f"the plain chat answer has no usable stop string after its first third: {full!r}")
    expected = full[: full.index(stop)]
    body = dict(CHAT, stop=[stop])
    plain, domino = _chat(servers["plain"], body), _chat(servers["domino"], body)
    assert plain["message"]["content"] == expected, (stop, full)
    assert plain["finish_reason"] == "stop"
    assert domino["message"]["content"] == expected, (stop, full)
    assert domino["finish_reason"] == "stop"


def test_acceptance_visible_the_sglang_way(servers) -> None:
    out = servers["domino"].generate(input_ids=PROMPT, sampling_params=GREEDY)
    meta = out["meta_info"]
    assert 0 < meta["spec_verify_ct"] < meta["completion_tokens"]
    info = servers["domino"].server_info()
    state = info["internal_states"][0]
    assert state["avg_spec_accept_length"] > 1.5, state.get("avg_spec_accept_length")
    assert info["speculative_algorithm"] == "DOMINO"
