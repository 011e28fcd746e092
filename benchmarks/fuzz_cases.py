"""The request fuzzer's generator: seeded random *valid* requests for every endpoint a client uses
(:mod:`.request_fuzz` runs and checks them)."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional


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

    # The same names in SGLang's sampling_params and in its OpenAI extensions.
    stopping = {key: value for key, value in (("stop", stop), ("stop_token_ids", stop_ids),
                                               ("ignore_eos", ignore_eos or None)) if value}
    if kind.startswith("generate"):
        params = dict(sp, max_new_tokens=max_tokens, n=n, **stopping)
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
        body.update(stopping)
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
