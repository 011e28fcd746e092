"""Seeded random request fuzzer against a Domino SGLang server: the server stays up, answers are well formed.

Random *valid* requests -- ``/generate`` (``input_ids`` and ``text``), ``/v1/chat/completions`` and
``/v1/completions`` -- with random temperature (0 included), top-p, top-k, min-p, frequency / presence /
repetition penalties, ``n`` 1-3, logprobs (``return_logprob`` + ``top_logprobs_num``, OpenAI ``logprobs`` /
``top_logprobs``), ``json_schema`` constrained decoding (xgrammar, SGLang's default grammar backend), stop strings,
``stop_token_ids``, ``max_tokens`` 1-80, ``ignore_eos``, streaming with random client hang-ups, and
``/abort_request`` of in-flight request ids, at a concurrency re-drawn at random (1..MAX in flight).

Checks, per request: the HTTP status is 200 and the body is what a client reads (text / output_ids / meta_info
finish reason for ``/generate``; choices, message / text and usage for OpenAI; ``n`` choices; logprobs present and
as long as the completion; finish reason in the allowed set, ``abort`` only for a request we aborted; no stop
token / EOS before the last token; a matched stop string trimmed from the text; a ``json_schema`` output that ended
normally parses and matches its schema). Per server: it stays up (process alive, ``/health``), and the draft log's
row invariants (``benchmarks/invariants.py``) hold for every request whose output token ids the client saw. The
caller checks the KV pool's idle usage before and after, and a greedy request against a plain server.

This module is the one source of the generator and the checks: ``tests/server/test_request_fuzz.py`` imports it
(a ~80-request version against the tiny test pair); run as a script it starts its own default Domino server
(``sglang-domino serve``'s command, the embedded pair unless ``--target/--draft``) and reports counts, failures,
invariant violations, idle KV before / after and wall time::

    python benchmarks/request_fuzz.py --requests 600 --concurrency 16 --seed 0 \\
        --json benchmarks/results/request_fuzz.json
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import requests

REPO = Path(__file__).resolve().parent.parent
from sglang_domino.benchmarks.invariants import Seen, check_rows

KINDS = ("generate_ids", "generate_text", "chat", "completion")
KIND_WEIGHTS = (0.35, 0.2, 0.25, 0.2)
PATHS = {"generate_ids": "/generate", "generate_text": "/generate", "chat": "/v1/chat/completions",
         "completion": "/v1/completions"}
FINISH_TYPES = {"stop", "length", "abort"}
REQUEST_TIMEOUT_S = 600.0

# Small schemas a tiny model can finish inside 80 tokens (top-level enums and booleans are a few tokens); a
# longer object often runs out of tokens on whitespace, which only skips the parse check (finish "length").
SCHEMAS: dict[str, dict] = {
    "enum": {"type": "string", "enum": ["yes", "no", "maybe"]},
    "boolean": {"type": "boolean"},
    "object": {"type": "object", "properties": {"answer": {"type": "string", "enum": ["A", "B", "C"]},
                                                "ok": {"type": "boolean"}},
               "required": ["answer", "ok"], "additionalProperties": False},
}


def matches_schema(value: Any, schema: dict) -> bool:
    """Enough of JSON Schema for :data:`SCHEMAS` (enum, boolean, object with required properties)."""
    if "enum" in schema:
        return value in schema["enum"]
    kind = schema.get("type")
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "object":
        if not isinstance(value, dict) or any(k not in value for k in schema.get("required", [])):
            return False
        if schema.get("additionalProperties") is False and set(value) - set(schema["properties"]):
            return False
        return all(matches_schema(value[k], s) for k, s in schema["properties"].items() if k in value)
    return True


# ----------------------------------------------------------------------------------------------- generator
@dataclass
class Case:
    """One fuzzed request and what the client will do with it."""

    index: int
    kind: str
    path: str
    body: dict
    rid: Optional[str]  # set when the request can be aborted / tied to the draft log by its own id
    n: int
    max_tokens: int
    stream: bool
    hang_up_after: Optional[int] = None  # stream chunks read before the client disconnects
    abort_after_s: Optional[float] = None  # /abort_request this rid after that many seconds
    logprobs: bool = False
    top_logprobs: int = 0
    schema: Optional[str] = None  # key of SCHEMAS
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    prompt_len: Optional[int] = None  # known for input_ids prompts
    eos_token_id: Optional[int] = None  # the served model's EOS: it must end the request unless ignore_eos


@dataclass
class Pools:
    """What requests are made of: prompt texts, their token ids, stop-string and stop-token candidates."""

    texts: list[str]
    token_ids: list[int]  # the texts, tokenized and concatenated (input_ids prompts are slices of it)
    stop_strings: list[str]
    stop_token_ids: list[int]
    eos_token_id: Optional[int]

    @classmethod
    def from_tokenizer(cls, tokenizer, texts: list[str]) -> "Pools":
        ids: list[int] = []
        for t in texts:
            ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        counts = Counter(ids)
        common = [t for t, _ in counts.most_common(24)]  # frequent tokens: stop_token_ids that really fire
        words = Counter(w for t in texts for w in t.split())
        stops = [" the", ".", ",", "\n", " is", " a", "?", "e"] + [" " + w for w, _ in words.most_common(12)]
        return cls(texts=list(texts), token_ids=ids, stop_strings=stops, stop_token_ids=common,
                   eos_token_id=tokenizer.eos_token_id)


def _sampling(rng: random.Random) -> dict:
    """Random valid sampling parameters (SGLang names); parameters left out take the server's defaults."""
    sp: dict[str, Any] = {"temperature": rng.choice([0.0, 0.0, 0.0, 0.3, 0.7, 1.0, 1.0, 1.3])}
    if rng.random() < 0.4:
        sp["top_p"] = rng.choice([1.0, 0.95, 0.8, 0.5, 0.1])
    if rng.random() < 0.4:
        sp["top_k"] = rng.choice([-1, 1, 2, 5, 40])
    if rng.random() < 0.3:
        sp["min_p"] = rng.choice([0.0, 0.02, 0.1, 0.3])
    if rng.random() < 0.25:
        sp["frequency_penalty"] = rng.choice([-0.5, 0.3, 1.0, 2.0])
    if rng.random() < 0.25:
        sp["presence_penalty"] = rng.choice([-1.0, 0.5, 1.5])
    if rng.random() < 0.25:
        sp["repetition_penalty"] = rng.choice([0.7, 1.1, 1.3, 2.0])
    if rng.random() < 0.15:
        sp["sampling_seed"] = rng.randrange(-(2**40), 2**40)
    return sp


def make_case(rng: random.Random, index: int, pools: Pools, *, grammar: bool = True, prefix: str = "fz") -> Case:
    kind = rng.choices(KINDS, weights=KIND_WEIGHTS)[0]
    sp = _sampling(rng)
    max_tokens = rng.choice([1, 2, 3]) if rng.random() < 0.12 else rng.randint(4, 80)
    n = rng.choices([1, 2, 3], weights=[0.72, 0.16, 0.12])[0]
    stream = rng.random() < 0.35
    schema = rng.choice(sorted(SCHEMAS)) if grammar and rng.random() < 0.1 else None
    stop = rng.sample(pools.stop_strings, rng.randint(1, 3)) if schema is None and rng.random() < 0.25 else []
    stop_ids = (rng.sample(pools.stop_token_ids, rng.randint(1, 3))
                if schema is None and pools.stop_token_ids and rng.random() < 0.15 else [])
    ignore_eos = rng.random() < 0.2
    logprobs = rng.random() < 0.3
    top_logprobs = rng.choice([0, 1, 3, 5]) if logprobs else 0
    rid = f"{prefix}-{index}-{rng.randrange(1 << 30):08x}" if n == 1 or rng.random() < 0.5 else None
    case = Case(index=index, kind=kind, path=PATHS[kind], body={}, rid=rid, n=n, max_tokens=max_tokens,
                stream=stream, logprobs=logprobs, top_logprobs=top_logprobs, schema=schema, stop=stop,
                stop_token_ids=stop_ids, ignore_eos=ignore_eos, eos_token_id=pools.eos_token_id)
    if stream and rng.random() < 0.3:
        case.hang_up_after = rng.randint(1, 4)
    elif n == 1 and rid is not None and rng.random() < 0.12:
        case.abort_after_s = round(rng.uniform(0.02, 1.5), 3)
    text = rng.choice(pools.texts)

    if kind.startswith("generate"):
        params = dict(sp, max_new_tokens=max_tokens, n=n)
        if stop:
            params["stop"] = stop
        if stop_ids:
            params["stop_token_ids"] = stop_ids
        if ignore_eos:
            params["ignore_eos"] = True
        if schema:
            params["json_schema"] = json.dumps(SCHEMAS[schema])
        body: dict[str, Any] = {"sampling_params": params}
        if kind == "generate_ids":
            length = rng.choice([1, 2, 5, 12, 30, 64, 120])
            length = min(length, len(pools.token_ids) - 1)
            start = rng.randrange(0, len(pools.token_ids) - length)
            body["input_ids"] = pools.token_ids[start : start + length]
            case.prompt_len = length
        else:
            body["text"] = text
        if logprobs:
            body["return_logprob"] = True
            body["top_logprobs_num"] = top_logprobs
        if stream:
            body["stream"] = True
    else:
        body = {"model": "default", "max_tokens": max_tokens, "n": n, "temperature": sp["temperature"]}
        for key in ("top_p", "top_k", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty"):
            if key in sp:
                body[key] = sp[key]
        if "sampling_seed" in sp:
            body["seed"] = sp["sampling_seed"]
        if stop:
            body["stop"] = stop
        if stop_ids:
            body["stop_token_ids"] = stop_ids
        if ignore_eos:
            body["ignore_eos"] = True
        if kind == "chat":
            messages = [{"role": "user", "content": text}]
            if rng.random() < 0.25:
                messages = [{"role": "system", "content": rng.choice(pools.texts)},
                            {"role": "user", "content": rng.choice(pools.texts)},
                            {"role": "assistant", "content": rng.choice(pools.texts)}] + messages
            body["messages"] = messages
            if logprobs:
                body["logprobs"] = True
                body["top_logprobs"] = top_logprobs
            if schema:
                body["response_format"] = {"type": "json_schema",
                                           "json_schema": {"name": schema, "schema": SCHEMAS[schema]}}
        else:
            body["prompt"] = text
            if logprobs:
                body["logprobs"] = top_logprobs
            if schema:
                body["json_schema"] = json.dumps(SCHEMAS[schema])
        if stream:
            body["stream"] = True
            if rng.random() < 0.5:
                body["stream_options"] = {"include_usage": True}
        else:
            body["return_token_ids"] = True  # the output ids, for the draft-log invariants
    if rid is not None:
        body["rid"] = rid
    case.body = body
    return case


def make_cases(seed: int, count: int, pools: Pools, *, grammar: bool = True) -> list[Case]:
    rng = random.Random(seed)
    return [make_case(rng, i, pools, grammar=grammar, prefix=f"fz{seed}") for i in range(count)]


# ----------------------------------------------------------------------------------------------- client
@dataclass
class Outcome:
    index: int
    kind: str
    stream: bool
    status: Optional[int] = None
    hung_up: bool = False
    aborted: bool = False  # our /abort_request went out while the request was in flight
    error: str = ""  # transport error (connection refused / reset, timeout)
    problems: list[str] = field(default_factory=list)
    seen: dict[str, Seen] = field(default_factory=dict)
    finish: list[str] = field(default_factory=list)
    completion_tokens: int = 0
    seconds: float = 0.0
    body_head: str = ""


def _sse(resp: requests.Response):
    """Decoded ``data:`` payloads of a server-sent-event stream; ``None`` for ``[DONE]``."""
    for line in resp.iter_lines():
        if not line or not line.startswith(b"data:"):
            continue
        data = line[len(b"data:"):].strip()
        if data == b"[DONE]":
            yield None
            return
        yield json.loads(data.decode())


def run_case(url: str, case: Case) -> Outcome:
    out = Outcome(index=case.index, kind=case.kind, stream=case.stream)
    timer = None
    if case.abort_after_s is not None:
        def _abort() -> None:
            out.aborted = True
            try:
                requests.post(url + "/abort_request", json={"rid": case.rid}, timeout=60)
            except requests.RequestException as exc:  # the server's health is checked separately
                out.problems.append(f"/abort_request failed: {exc!r}")

        timer = threading.Timer(case.abort_after_s, _abort)
        timer.start()
    t0 = time.monotonic()
    try:
        with requests.post(url + case.path, json=case.body, stream=case.stream, timeout=REQUEST_TIMEOUT_S) as r:
            out.status = r.status_code
            if r.status_code != 200:
                out.body_head = r.text[:400]
                out.problems.append(f"HTTP {r.status_code}: {r.text[:300]}")
            elif case.stream:
                _read_stream(r, case, out)
            else:
                try:
                    payload = r.json()
                except ValueError:
                    out.body_head = r.text[:400]
                    out.problems.append(f"body is not JSON: {r.text[:200]!r}")
                else:
                    if timer is not None:
                        timer.cancel()
                    (check_generate if case.kind.startswith("generate") else check_openai)(case, payload, out)
    except requests.RequestException as exc:
        out.error = repr(exc)
        out.problems.append(f"transport error: {exc!r}")
    finally:
        if timer is not None:
            timer.cancel()
        out.seconds = time.monotonic() - t0
    return out


def _read_stream(r: requests.Response, case: Case, out: Outcome) -> None:
    chunks: list[dict] = []
    done = False
    for payload in _sse(r):
        if payload is None:
            done = True
            break
        chunks.append(payload)
        if case.hang_up_after is not None and len(chunks) >= case.hang_up_after:
            out.hung_up = True
            break  # leaving the with-block closes the connection: a client disconnect
    if out.hung_up:
        if case.kind.startswith("generate"):  # the prefix seen, for the draft-log rows written so far
            for last in _last_generate_chunks(chunks).values():
                rid = last.get("meta_info", {}).get("id")
                if rid:
                    out.seen[rid] = Seen(list(last.get("output_ids") or []), complete=False)
        return
    if not done:
        out.problems.append(f"stream ended without [DONE] after {len(chunks)} chunks")
        return
    if case.kind.startswith("generate"):
        check_generate_stream(case, chunks, out)
    else:
        check_openai_stream(case, chunks, out)


def _last_generate_chunks(chunks: list[dict]) -> dict[int, dict]:
    last: dict[int, dict] = {}
    for c in chunks:
        last[int(c.get("index", 0))] = c
    return last


# ----------------------------------------------------------------------------------------------- checks
def _allowed_finish(case: Case, out: Outcome, kind: Optional[str], where: str) -> None:
    if kind not in FINISH_TYPES:
        out.problems.append(f"{where}: finish reason {kind!r} not in {sorted(FINISH_TYPES)}")
    elif kind == "abort" and not out.aborted:
        out.problems.append(f"{where}: finished by abort, but this request was not aborted")
    out.finish.append(str(kind))


def _check_token_ids(case: Case, out: Outcome, ids: list, finish: Optional[str], matched: Any, where: str,
                     eos: Optional[int], completion_tokens: Optional[int] = None) -> None:
    if not all(isinstance(t, int) for t in ids):
        out.problems.append(f"{where}: non-integer output ids")
        return
    if completion_tokens is not None and completion_tokens != len(ids):
        out.problems.append(f"{where}: completion_tokens {completion_tokens} but {len(ids)} output ids")
    if len(ids) > case.max_tokens:
        out.problems.append(f"{where}: {len(ids)} tokens, max_tokens {case.max_tokens}")
    if finish == "length" and len(ids) != case.max_tokens:
        out.problems.append(f"{where}: finish 'length' after {len(ids)} of {case.max_tokens} tokens")
    if finish != "abort" and len(ids) == 0 and case.max_tokens > 0:
        out.problems.append(f"{where}: no token generated")
    if not case.ignore_eos:
        stops = set(case.stop_token_ids) | ({eos} if eos is not None else set())
        early = [i for i, t in enumerate(ids[:-1]) if t in stops]
        if early:
            out.problems.append(f"{where}: stop token / EOS {ids[early[0]]} at {early[0]} of {len(ids)} "
                                f"did not end the request")
    if isinstance(matched, int) and finish == "stop" and ids and ids[-1] != matched:
        out.problems.append(f"{where}: matched stop token {matched} but the last token is {ids[-1]}")


def _check_text(case: Case, out: Outcome, text: Any, finish: Optional[str], matched: Any, where: str) -> None:
    if not isinstance(text, str):
        out.problems.append(f"{where}: text is {type(text).__name__}, not str")
        return
    if isinstance(matched, str) and matched in text:
        out.problems.append(f"{where}: matched stop string {matched!r} left in the text")
    if case.schema and finish == "stop" and not isinstance(matched, str) and not out.aborted:
        try:
            value = json.loads(text)
        except ValueError:
            out.problems.append(f"{where}: json_schema {case.schema} output is not JSON: {text[:120]!r}")
        else:
            if not matches_schema(value, SCHEMAS[case.schema]):
                out.problems.append(f"{where}: json_schema {case.schema} output {value!r} does not match")


def _generate_items(case: Case, payload: Any, out: Outcome) -> list[dict]:
    if case.n == 1:
        if isinstance(payload, dict):
            return [payload]
        out.problems.append(f"n=1 /generate returned {type(payload).__name__}, not an object")
        return []
    if not isinstance(payload, list) or len(payload) != case.n:
        out.problems.append(f"n={case.n} /generate returned {type(payload).__name__} of "
                            f"{len(payload) if isinstance(payload, list) else '-'} items")
        return payload if isinstance(payload, list) else []
    return payload


def _check_generate_item(case: Case, item: dict, out: Outcome, where: str, eos: Optional[int],
                         streamed: bool = False) -> None:
    meta = item.get("meta_info")
    ids = item.get("output_ids")
    if not isinstance(meta, dict) or not isinstance(ids, list):
        out.problems.append(f"{where}: missing meta_info / output_ids: {str(item)[:200]}")
        return
    fr = meta.get("finish_reason")
    if not isinstance(fr, dict):
        out.problems.append(f"{where}: finish_reason {fr!r} is not an object")
        return
    finish, matched = fr.get("type"), fr.get("matched")
    _allowed_finish(case, out, finish, where)
    _check_token_ids(case, out, ids, finish, matched, where, eos, meta.get("completion_tokens"))
    _check_text(case, out, item.get("text"), finish, matched, where)
    if case.prompt_len is not None and meta.get("prompt_tokens") != case.prompt_len:
        out.problems.append(f"{where}: prompt_tokens {meta.get('prompt_tokens')}, sent {case.prompt_len}")
    if case.logprobs and not streamed:
        lp = meta.get("output_token_logprobs")
        if not isinstance(lp, list) or len(lp) != len(ids):
            out.problems.append(f"{where}: output_token_logprobs of length "
                                f"{len(lp) if isinstance(lp, list) else lp!r}, {len(ids)} output ids")
        elif [e[1] for e in lp] != ids:
            out.problems.append(f"{where}: output_token_logprobs token ids differ from output_ids")
        elif not all(isinstance(e[0], (int, float)) and e[0] <= 1e-4 for e in lp):
            out.problems.append(f"{where}: a token logprob is not a number <= 0")
        if case.top_logprobs > 0:
            top = meta.get("output_top_logprobs")
            if not isinstance(top, list) or len(top) != len(ids):
                out.problems.append(f"{where}: output_top_logprobs of length "
                                    f"{len(top) if isinstance(top, list) else top!r}, {len(ids)} output ids")
            elif any(len(row) != case.top_logprobs for row in top):
                out.problems.append(f"{where}: a top-logprobs row is not {case.top_logprobs} long")
    rid = meta.get("id")
    out.completion_tokens += len(ids)
    if rid:
        prompt_len = case.prompt_len if case.prompt_len is not None else meta.get("prompt_tokens")
        out.seen[rid] = Seen(list(ids), complete=finish != "abort", prompt_len=prompt_len)
    else:
        out.problems.append(f"{where}: meta_info has no id")


def check_generate(case: Case, payload: Any, out: Outcome) -> None:
    for i, item in enumerate(_generate_items(case, payload, out)):
        _check_generate_item(case, item, out, f"choice {i}", case.eos_token_id)


def check_generate_stream(case: Case, chunks: list[dict], out: Outcome) -> None:
    last = _last_generate_chunks(chunks)
    if sorted(last) != list(range(case.n)):
        out.problems.append(f"stream: chunks for indices {sorted(last)}, n={case.n}")
    for i, c in sorted(last.items()):
        _check_generate_item(case, c, out, f"stream choice {i}", case.eos_token_id, streamed=True)


def check_openai(case: Case, payload: Any, out: Outcome) -> None:
    if not isinstance(payload, dict):
        out.problems.append(f"body is {type(payload).__name__}, not an object")
        return
    choices, usage = payload.get("choices"), payload.get("usage")
    expect = "chat.completion" if case.kind == "chat" else "text_completion"
    if payload.get("object") != expect:
        out.problems.append(f"object {payload.get('object')!r}, expected {expect!r}")
    if not isinstance(choices, list) or sorted(c.get("index") for c in choices) != list(range(case.n)):
        out.problems.append(f"choices {str(choices)[:200]} are not indices 0..{case.n - 1}")
        return
    if not isinstance(usage, dict) or not all(isinstance(usage.get(k), int) for k in
                                              ("prompt_tokens", "completion_tokens", "total_tokens")):
        out.problems.append(f"usage {usage!r} malformed")
        return
    if usage["total_tokens"] != usage["prompt_tokens"] + usage["completion_tokens"]:
        out.problems.append(f"usage {usage} does not add up")
    total_ids = 0
    for c in sorted(choices, key=lambda c: c["index"]):
        where = f"choice {c['index']}"
        finish, matched = c.get("finish_reason"), c.get("matched_stop")
        _allowed_finish(case, out, finish, where)
        text = c.get("message", {}).get("content") if case.kind == "chat" else c.get("text")
        if case.kind == "chat" and not isinstance(c.get("message"), dict):
            out.problems.append(f"{where}: no message")
        _check_text(case, out, text, finish, matched, where)
        ids = c.get("response_token_ids" if case.kind == "chat" else "token_ids")  # return_token_ids
        if not isinstance(ids, list):
            out.problems.append(f"{where}: return_token_ids asked, token_ids {ids!r}")
            continue
        total_ids += len(ids)
        _check_token_ids(case, out, ids, finish, matched, where, case.eos_token_id)
        lp = c.get("logprobs")
        if case.logprobs:
            if case.kind == "chat":
                content = lp.get("content") if isinstance(lp, dict) else None
                if not isinstance(content, list) or len(content) != len(ids):
                    out.problems.append(f"{where}: logprobs.content of length "
                                        f"{len(content) if isinstance(content, list) else content!r}, "
                                        f"{len(ids)} tokens")
                elif any(len(e.get("top_logprobs") or []) != case.top_logprobs for e in content):
                    out.problems.append(f"{where}: a top_logprobs entry is not {case.top_logprobs} long")
            else:
                tokens = lp.get("token_logprobs") if isinstance(lp, dict) else None
                if not isinstance(tokens, list) or len(tokens) != len(ids):
                    out.problems.append(f"{where}: logprobs.token_logprobs of length "
                                        f"{len(tokens) if isinstance(tokens, list) else tokens!r}, "
                                        f"{len(ids)} tokens")
        elif lp not in (None, {}):
            out.problems.append(f"{where}: logprobs returned, none asked")
        if case.n == 1 and case.rid is not None:  # OpenAI requests keep the client's rid only with n == 1
            out.seen[case.rid] = Seen(list(ids), complete=finish != "abort", prompt_len=usage["prompt_tokens"])
    if total_ids != usage["completion_tokens"]:
        out.problems.append(f"usage.completion_tokens {usage['completion_tokens']}, {total_ids} token ids")
    out.completion_tokens += usage["completion_tokens"]


def check_openai_stream(case: Case, chunks: list[dict], out: Outcome) -> None:
    finishes: dict[int, Any] = {}
    texts: dict[int, str] = {}
    usage = None
    for c in chunks:
        if c.get("usage"):
            usage = c["usage"]
        for ch in c.get("choices") or []:
            i = int(ch.get("index", 0))
            piece = (ch.get("delta") or {}).get("content") if case.kind == "chat" else ch.get("text")
            if piece:
                texts[i] = texts.get(i, "") + piece
            if ch.get("finish_reason") is not None:
                finishes[i] = (ch["finish_reason"], ch.get("matched_stop"))
    if sorted(finishes) != list(range(case.n)):
        out.problems.append(f"stream: finish reasons for indices {sorted(finishes)}, n={case.n}")
    for i, (finish, matched) in sorted(finishes.items()):
        _allowed_finish(case, out, finish, f"stream choice {i}")
        _check_text(case, out, texts.get(i, ""), finish, matched, f"stream choice {i}")
    if (case.body.get("stream_options") or {}).get("include_usage"):
        if not isinstance(usage, dict) or usage.get("total_tokens") != usage.get("prompt_tokens", 0) + \
                usage.get("completion_tokens", 0):
            out.problems.append(f"stream: include_usage asked, usage {usage!r}")
        else:
            out.completion_tokens += usage["completion_tokens"]
            if usage["completion_tokens"] > case.n * case.max_tokens:
                out.problems.append(f"stream: {usage['completion_tokens']} tokens for n={case.n} x "
                                    f"max_tokens {case.max_tokens}")


# ----------------------------------------------------------------------------------------------- server-level
def healthy(url: str) -> bool:
    try:
        return requests.get(url + "/health", timeout=60).status_code == 200
    except requests.RequestException:
        return False


def _loads(url: str) -> dict:
    r = requests.get(url + "/v1/loads", timeout=60)
    r.raise_for_status()
    return r.json()["loads"][0]


def idle_used_tokens(url: str, timeout: float = 120.0) -> int:
    """KV tokens in use once no request runs or waits and the prefix cache is flushed."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        load = _loads(url)
        if load["num_running_reqs"] == 0 and load["num_waiting_reqs"] == 0:
            if requests.post(url + "/flush_cache", timeout=60).status_code == 200:
                return int(_loads(url)["num_used_tokens"])
        time.sleep(0.5)
    raise AssertionError(f"{url} never became idle: {_loads(url)}")


def read_draft_log(path: Optional[Path]) -> list[dict]:
    if path is None or not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@dataclass
class FuzzResult:
    outcomes: list[Outcome]
    seconds: float
    max_in_flight: int
    alive_during: bool = True
    not_sent: int = 0

    def by_kind(self) -> dict[str, int]:
        return dict(Counter(o.kind for o in self.outcomes))

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.problems]

    def seen(self) -> dict[str, Seen]:
        merged: dict[str, Seen] = {}
        for o in self.outcomes:
            merged.update(o.seen)
        return merged

    def counts(self) -> dict[str, Any]:
        outs = self.outcomes
        return {
            "requests": len(outs), "by_kind": self.by_kind(),
            "streamed": sum(o.stream for o in outs), "hang_ups": sum(o.hung_up for o in outs),
            "aborts_sent": sum(o.aborted for o in outs),
            "finished_by_abort": sum(f == "abort" for o in outs for f in o.finish),
            "finish_reasons": dict(Counter(f for o in outs for f in o.finish)),
            "completion_tokens": sum(o.completion_tokens for o in outs),
            "failed_requests": len(self.failures()), "max_in_flight": self.max_in_flight, "not_sent": self.not_sent,
            "server_alive_during": self.alive_during,
            "seconds": round(self.seconds, 1),
        }

    def summary(self) -> str:
        c = self.counts()
        kinds = " ".join(f"{k}={v}" for k, v in sorted(c["by_kind"].items()))
        return (f"fuzz: {c['requests']} requests ({kinds}; {c['streamed']} streamed), {c['hang_ups']} hang-ups, "
                f"{c['aborts_sent']} aborts sent ({c['finished_by_abort']} ended by abort), "
                f"{c['completion_tokens']} tokens, max {c['max_in_flight']} in flight, "
                f"{c['failed_requests']} failed, {c['seconds']:.1f} s")


def run_fuzz(url: str, cases: list[Case], *, max_concurrency: int, seed: int,
             alive: Optional[Callable[[], bool]] = None, progress=None,
             submit_budget_s: Optional[float] = None) -> FuzzResult:
    """Send ``cases`` keeping a random number (1..max_concurrency, re-drawn every few submissions) in flight.

    ``submit_budget_s``: submit no new case after that many seconds (the in-flight ones still finish); a CI
    bound for slow or shared machines -- the cases not sent are counted as ``not_sent``."""
    rng = random.Random(seed ^ 0x5EED)
    outcomes: list[Outcome] = []
    t0 = time.monotonic()
    pending: set[Future] = set()
    target, left_at_target, peak = 1, 0, 0
    alive_during = True
    with ThreadPoolExecutor(max_workers=max_concurrency) as pool:
        it = iter(cases)
        exhausted = False
        while pending or not exhausted:
            while not exhausted and len(pending) < target:
                if submit_budget_s is not None and time.monotonic() - t0 > submit_budget_s:
                    exhausted = True
                    break
                case = next(it, None)
                if case is None:
                    exhausted = True
                    break
                pending.add(pool.submit(run_case, url, case))
                peak = max(peak, len(pending))
                left_at_target -= 1
                if left_at_target <= 0:
                    target, left_at_target = rng.randint(1, max_concurrency), rng.randint(2, 12)
            if not pending:
                break
            done, pending = wait(pending, timeout=REQUEST_TIMEOUT_S + 30, return_when=FIRST_COMPLETED)
            if not done:
                raise AssertionError(f"no request finished in {REQUEST_TIMEOUT_S + 30:.0f} s: the server hangs")
            for f in done:
                outcomes.append(f.result())
                if progress is not None:
                    progress.update(1)
            if alive is not None and not alive():
                alive_during = False
                break
    outcomes.sort(key=lambda o: o.index)
    return FuzzResult(outcomes, time.monotonic() - t0, peak, alive_during, not_sent=len(cases) - len(outcomes))


def check_invariants(records: list[dict], result: FuzzResult):
    """invariants.check_rows over every request whose output ids the client saw."""
    return check_rows(records, result.seen())


# ----------------------------------------------------------------------------------------------- CLI
def _git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def corpus_texts() -> list[str]:
    """Prompt texts for the tiny test pair (the sentences its tokenizer was trained on)."""
    from sglang_domino.benchmarks import tiny_pair

    return [s.strip() + "." for s in tiny_pair._CORPUS.strip().split(".") if s.strip()]


def _prompt_texts(embedded: bool) -> list[str]:
    if embedded:
        from sglang_domino.embedded import HELDOUT_PROMPTS

        return [m["content"] for line in HELDOUT_PROMPTS.read_text().splitlines() if line.strip()
                for m in json.loads(line)["messages"] if m.get("role") == "user"]
    return corpus_texts()


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=600)
    p.add_argument("--concurrency", type=int, default=16, help="most requests in flight (drawn 1..MAX)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", default=None, help="target model directory (default: the embedded pair)")
    p.add_argument("--draft", default=None, help="Domino drafter (default: the embedded drafter)")
    p.add_argument("--no-grammar", action="store_true", help="leave json_schema requests out")
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument("--log-dir", default=None, help="server log and draft log (default: a temp dir)")
    p.add_argument("--start-timeout", type=float, default=900.0)
    p.add_argument("--budget-s", type=float, default=None,
                   help="submit no new request after this many seconds (the rest are reported as not_sent)")
    args = p.parse_args(argv)

    import tempfile

    from tqdm import tqdm
    from transformers import AutoTokenizer

    embedded = args.target is None and args.draft is None
    if embedded:
        from sglang_domino.embedded import prepare_embedded_pair

        pair = prepare_embedded_pair()
        target, draft = Path(pair.target), Path(pair.draft)
    elif args.target is None or args.draft is None:
        p.error("--target and --draft go together")
    else:
        target, draft = Path(args.target), Path(args.draft)
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="request_fuzz_"))
    log_dir.mkdir(parents=True, exist_ok=True)
    draft_log = log_dir / "drafts.jsonl"
    draft_log.unlink(missing_ok=True)
    from sglang_domino.provenance import provenance
    from sglang_domino.benchmarks.serving import Server as ServeProcess
    from sglang_domino.server.process import free_port

    server = ServeProcess("request-fuzz", target, draft, free_port(), [], log_dir,
                          {"SGLANG_DOMINO_DRAFT_LOG": str(draft_log)})
    cmd = server.cmd
    print(f"started: SGLANG_DOMINO_DRAFT_LOG={draft_log} {shlex.join(cmd)}", flush=True)
    report: dict[str, Any] = {"command": shlex.join([sys.executable, *sys.argv]), "git_commit": _git_commit(),
                              "server_command": shlex.join(cmd), "seed": args.seed, "requests": args.requests,
                              "max_concurrency": args.concurrency, "budget_s": args.budget_s, "target": str(target), "draft": str(draft),
                              "grammar": not args.no_grammar, "provenance": provenance(draft, target)}
    try:
        t_start = time.monotonic()
        server.wait_healthy(args.start_timeout)
        url, proc = server.url, server.proc  # after the start: a port clash restarts it on another port
        report["server_start_s"] = round(time.monotonic() - t_start, 1)
        tokenizer = AutoTokenizer.from_pretrained(target)
        pools = Pools.from_tokenizer(tokenizer, _prompt_texts(embedded))
        cases = make_cases(args.seed, args.requests, pools, grammar=not args.no_grammar)
        idle_before = idle_used_tokens(url)
        with tqdm(total=len(cases), desc="fuzz", unit="req") as bar:
            result = run_fuzz(url, cases, max_concurrency=args.concurrency, seed=args.seed,
                              alive=lambda: proc.poll() is None, progress=bar, submit_budget_s=args.budget_s)
        alive = proc.poll() is None and healthy(url)
        idle_after = idle_used_tokens(url) if alive else None
        inv = check_invariants(read_draft_log(draft_log), result)
        failures = result.failures()
        report.update(result.counts())
        report.update({
            "server_alive_after": alive, "idle_kv_tokens_before": idle_before, "idle_kv_tokens_after": idle_after,
            "kv_leak": None if idle_after is None else idle_after - idle_before,
            "invariants": {"checked_requests": inv.checked_requests, "checked_rows": inv.checked_rows,
                           "violations": len(inv.violations), "first_violations": inv.violations[:20]},
            "failures": [{"index": o.index, "kind": o.kind, "stream": o.stream, "status": o.status,
                          "problems": o.problems[:5], "request": cases[o.index].body} for o in failures[:30]],
            "ok": alive and not failures and not inv.violations and idle_after == idle_before,
        })
        print(result.summary())
        print(f"invariants: {inv.checked_requests} requests, {inv.checked_rows} rows, "
              f"{len(inv.violations)} violations; idle KV before {idle_before}, after {idle_after}; "
              f"server alive: {alive}; ok: {report['ok']}")
        for o in failures[:10]:
            print(f"  FAIL #{o.index} {o.kind} stream={o.stream}: {o.problems[:3]}")
        if inv.violations:
            print(inv.summary())
    finally:
        server.stop()
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(report, indent=1, default=str) + "\n")
            print(f"wrote {args.json}")
    return 0 if report.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
