"""What a new user does first: ``make serve``, then what chat clients send, all at once.

The server is started exactly as ``make serve`` starts it -- the ``sglang-domino serve`` console script with no flag
but host and port, so the embedded pair, the CPU default dtype, the default verify width and the adaptive width
rule (plain-width steps among drafting ones) -- and then gets, concurrently: OpenAI chat requests at temperature
0.7 / top_p 0.9 (what most chat clients send), streamed ones, ``n = 2``, greedy ones, one with a stop string, and
sampled ``/generate`` requests whose token ids let the draft log's row invariants (:mod:`invariants`) be checked.

Before the fix of issue 25 the first sampled request killed this server: a plain-width step hands the verify rule
zero draft slots, and ``verify_sampling`` indexed a tensor with no row. The server must stay up, every response
must be well formed, and every verified row must belong to its own request.
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from sglang_domino.benchmarks.invariants import Seen, check_rows
from sglang_domino.server.process import ServerProcess, free_port

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.timeout(900)]

CHAT_SAMPLED = {"temperature": 0.7, "top_p": 0.9}
QUESTIONS = ["What is the capital of France?", "Give me three tips for sleeping better.",
             "Write a haiku about the sea.", "Explain what a list comprehension is in Python.",
             "How many legs does a spider have?", "Suggest a name for a small bakery."]


@pytest.fixture(scope="module")
def make_serve(tmp_path_factory):
    """``sglang-domino serve --host 127.0.0.1 --port P``: the command ``make serve`` runs."""
    logs = tmp_path_factory.mktemp("user_journey")
    port = free_port()
    cli = Path(sys.executable).with_name("sglang-domino")
    env = dict(os.environ, SGLANG_DOMINO_DRAFT_LOG=str(logs / "drafts.jsonl"))  # a log only: changes nothing
    server = ServerProcess("make-serve", [str(cli), "serve", "--host", "127.0.0.1", "--port", str(port)], env,
                           logs / "serve.log").start()
    try:
        server.wait_healthy(900)
        yield server.url, server.proc, logs
    finally:
        server.stop(timeout=60)


def _chat(url: str, question: str, **params) -> dict:
    body = {"model": "default", "messages": [{"role": "user", "content": question}], "max_tokens": 40, **params}
    r = requests.post(url + "/v1/chat/completions", json=body, timeout=600)
    assert r.status_code == 200, r.text[:500]
    reply = r.json()
    assert len(reply["choices"]) == params.get("n", 1), reply
    for choice in reply["choices"]:
        assert isinstance(choice["message"]["content"], str) and choice["message"]["content"], reply
        assert choice["finish_reason"] in ("stop", "length"), reply
    assert reply["usage"]["completion_tokens"] >= 1
    return reply


def _chat_stream(url: str, question: str) -> str:
    body = {"model": "default", "messages": [{"role": "user", "content": question}], "max_tokens": 40,
            "stream": True, **CHAT_SAMPLED}
    pieces, finish, done = [], None, False
    with requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=600) as r:
        assert r.status_code == 200, r.text[:500]
        for line in r.iter_lines():
            if not line:
                continue
            assert line.startswith(b"data: "), line
            if line == b"data: [DONE]":
                done = True
                break
            chunk = json.loads(line[len(b"data: "):])
            for choice in chunk["choices"]:
                pieces.append(choice["delta"].get("content") or "")
                finish = choice.get("finish_reason") or finish
    assert done and finish in ("stop", "length"), (done, finish)
    text = "".join(pieces)
    assert text
    return text


def _generate(url: str, rid: str, input_ids: list[int]) -> dict:
    body = {"rid": rid, "input_ids": input_ids,
            "sampling_params": {"max_new_tokens": 48, "ignore_eos": True, **CHAT_SAMPLED}}
    r = requests.post(url + "/generate", json=body, timeout=600)
    assert r.status_code == 200, r.text[:500]
    return r.json()


def test_make_serve_then_what_chat_clients_send(make_serve) -> None:
    from transformers import AutoTokenizer

    from sglang_domino.embedded import prepare_embedded_pair

    url, proc, logs = make_serve
    tokenizer = AutoTokenizer.from_pretrained(prepare_embedded_pair().target)
    texts = {f"journey-gen-{i}": tokenizer.apply_chat_template([{"role": "user", "content": q}],
                                                                add_generation_prompt=True, tokenize=False)
             for i, q in enumerate(QUESTIONS[:4])}
    prompts = {rid: tokenizer(text, add_special_tokens=False)["input_ids"] for rid, text in texts.items()}
    with ThreadPoolExecutor(16) as pool:
        sampled = [pool.submit(_chat, url, q, **CHAT_SAMPLED) for q in QUESTIONS]
        streamed = [pool.submit(_chat_stream, url, q) for q in QUESTIONS[:4]]
        pairs = [pool.submit(_chat, url, q, n=2, **CHAT_SAMPLED) for q in QUESTIONS[:2]]
        greedy = [pool.submit(_chat, url, q, temperature=0) for q in QUESTIONS[:2]]
        stopped = pool.submit(_chat, url, "Count from one to twenty, separated by commas.", temperature=0.7,
                              top_p=0.9, stop=[","])
        generated = {rid: pool.submit(_generate, url, rid, ids) for rid, ids in prompts.items()}
        for future in sampled + streamed + pairs + greedy:
            future.result()
        stop_reply = stopped.result()
        outputs = {rid: f.result() for rid, f in generated.items()}

    assert proc.poll() is None, "the server died"
    assert requests.get(url + "/health", timeout=60).status_code == 200
    stop_text = stop_reply["choices"][0]["message"]["content"]
    assert "," not in stop_text, stop_text
    # Every verified row of the sampled /generate requests drafted from its own last token and its own context.
    records = [json.loads(line) for line in (logs / "drafts.jsonl").read_text().splitlines() if line.strip()]
    seen = {rid: Seen(out["output_ids"], prompt_len=len(prompts[rid])) for rid, out in outputs.items()}
    report = check_rows(records, seen)
    assert report, report.summary()
    assert report.checked_requests == len(prompts)
    # The adaptive rule's plain-width steps (no drafts) really served sampled rows: the crash's path.
    sampled_rows = [r for r in records if r.get("verified_with") and r["verified_with"]["top_k"] != 1]
    print(json.dumps({"rows": len(records), "sampled_rows": len(sampled_rows),
                      "sampled_plain_width_rows": sum(not r["drafts"] for r in sampled_rows),
                      "checked_rows": report.checked_rows}))
    assert sampled_rows
