"""The request fuzzer's client and per-request checks: send one :class:`~.fuzz_cases.Case` (streaming, with its
hang-up or abort) and check what a client reads (:mod:`.request_fuzz` runs many at once)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import requests

from sglang_domino.benchmarks.fuzz_cases import FINISH_TYPES, REQUEST_TIMEOUT_S, SCHEMAS, Case, matches_schema
from sglang_domino.benchmarks.invariants import Seen

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
    # A request ended by our /abort_request is answered by SGLang's TokenizerManager._handle_abort_req (sglang
    # 0.5.23, managers/tokenizer_manager.py:3577-3640), whose meta_info has no prompt_tokens -- upstream behaviour
    # for every algorithm, plain serving included. Every other response must report what was sent.
    aborted_reply = finish == "abort" and out.aborted and "prompt_tokens" not in meta
    if case.prompt_len is not None and not aborted_reply and meta.get("prompt_tokens") != case.prompt_len:
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
