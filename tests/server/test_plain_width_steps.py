"""Automatic switch-off: decode steps that do not draft (plain width), by a fixed limit or by measurement.

A third server (Domino, limit 3; then the CPU default, ``adaptive``) gets the 18 greedy requests of
test_server_greedy at once: with the limit the batch starts above it (plain-width steps: no drafts) and shrinks
below it as requests finish (full-width steps), and requests sent while it is small grow it again; with
``adaptive`` each batch size first measures every candidate width (1, 2, 3, 4 and the drafter's 8), then keeps the
fastest and explores the others. Every output must equal the plain server's; plain width and drafting must both
occur in one request's life; and every block drafted *after* plain-width steps (at whatever width) must equal the
offline rollout of that width on the full context -- the drafter's context KV missed nothing while it was not
drafting.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import Server, cpu_env, free_port, launch_cmd, wait_ready
from .test_server_greedy import MAX_TOKENS, OfflineDrafts, make_prompts, run_concurrently

pytestmark = [pytest.mark.server, pytest.mark.timeout(900)]

LIMIT = 3
BLOCK_SIZE = 8  # the tiny drafter's block size, the server's width (no --speculative-num-draft-tokens)
ADAPTIVE_CANDIDATES = (1, 2, 3, 4, 8)


@pytest.fixture(scope="module", params=[str(LIMIT), "auto"])
def switching(request, tiny, tmp_path_factory):
    logs = tmp_path_factory.mktemp("switching_logs")
    cmd = launch_cmd(tiny.target, free_port(), draft=tiny.drafter)
    env = cpu_env(SGLANG_DOMINO_DRAFT_LOG=str(logs / "drafts.jsonl"), SGLANG_DOMINO_DRAFT_LOGITS_DTYPE="float32",
                  SGLANG_DOMINO_MAX_SPECULATIVE_BATCH=request.param, SGLANG_DOMINO_STEP_LOG=str(logs / "steps.jsonl"))
    server = Server("switching", cmd, env, logs / "server.log", logs / "drafts.jsonl", setting=request.param,
                    step_log=logs / "steps.jsonl").start()
    try:
        wait_ready(server)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tokenizer(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny.target)


@pytest.fixture(scope="module")
def rounds(servers, switching, tokenizer):
    prompts = make_prompts(tokenizer)
    payloads = [{"rid": f"sw-{i}", "input_ids": p,
                 "sampling_params": {"temperature": 0, "max_new_tokens": MAX_TOKENS[i], "ignore_eos": True}}
                for i, p in enumerate(prompts)]
    # Different lengths, so the batch shrinks back below the limit one request at a time.
    late = [{"rid": f"sw-late-{i}", "input_ids": p,
             "sampling_params": {"temperature": 0, "max_new_tokens": n, "ignore_eos": True}}
            for i, (p, n) in enumerate(zip(make_prompts(tokenizer, n=5, seed=1), (60, 20, 30, 45, 90)))]

    def staggered() -> list[dict]:
        # One request alone first (full width), then four more join it (the batch grows past the limit).
        with ThreadPoolExecutor(max_workers=5) as pool:
            first = pool.submit(switching.generate, **late[0])
            time.sleep(1.0)
            rest = list(pool.map(lambda p: switching.generate(**p), late[1:]))
            return [first.result()] + rest

    switched = run_concurrently(switching, payloads) + staggered()
    plain = run_concurrently(servers["plain"], [dict(p, rid=f"plain-{p['rid']}") for p in payloads + late])
    return payloads + late, plain, switched


def test_outputs_equal_plain_decoding(rounds, switching) -> None:
    payloads, plain, switched = rounds
    for payload, a, b in zip(payloads, plain, switched):
        assert b["output_ids"] == a["output_ids"], payload["rid"]
        assert b["meta_info"]["finish_reason"] == a["meta_info"]["finish_reason"], payload["rid"]
    assert switching.alive()


def test_both_widths_occur(rounds, switching) -> None:
    payloads, _, _ = rounds
    widths_seen = set()
    switched_back = 0
    for payload in payloads:
        records = switching.draft_records(payload["rid"])
        widths = [len(r["drafts"]) + 1 for r in records]
        widths_seen.update(widths)
        # a full-width step after a plain-width one: drafting resumed for this request
        switched_back += any(w > 1 and 1 in widths[:i] for i, w in enumerate(widths))
    if switching.extra["setting"] == str(LIMIT):
        assert switched_back >= 2, switched_back  # the last requests of each round, once the batch is small
        assert widths_seen == {1, BLOCK_SIZE}, widths_seen  # plain width and the block size
        late_first = [len(r["drafts"]) for r in switching.draft_records("sw-late-0")]
        assert late_first and late_first[0] > 0, "a request alone must draft"
    else:  # adaptive: every candidate width measured, the preference logged once all were at a batch size
        assert switched_back >= 1, switched_back  # (which width follows which is the measurement's choice)
        assert widths_seen == set(ADAPTIVE_CANDIDATES), widths_seen
        log = switching.log.read_text()
        assert "Domino adaptive drafting: batch size" in log, "no measured preference logged"
        assert "choosing per decode batch size among widths 1, 2, 3, 4, 8" in log


def test_drafts_after_plain_width_steps_equal_offline_reference(rounds, switching, tiny) -> None:
    """Full-width blocks drafted after plain-width steps equal the offline rollout on the whole context: the
    context KV was fed during the plain-width steps."""
    payloads, _, switched = rounds
    offline = OfflineDrafts(tiny)
    checked = mismatched = 0
    for payload, out in zip(payloads, switched):
        records = switching.draft_records(payload["rid"])
        after_plain = [r for i, r in enumerate(records) if r["drafts"] and any(not q["drafts"] for q in records[:i])]
        if after_plain:
            c, m = offline.count_mismatches(payload["input_ids"] + out["output_ids"], after_plain[:8], payload["rid"])
            checked, mismatched = checked + c, mismatched + m
    # (adaptive: how many blocks follow plain-width steps is the measurement's choice -- at least its warm-up's)
    assert checked >= (8 if switching.extra["setting"] == str(LIMIT) else 4), checked
    assert mismatched == 0, f"{mismatched}/{checked} blocks drafted after plain-width steps differ from the offline rollout"


def test_step_log_counts_what_the_steps_committed(rounds, switching) -> None:
    """``SGLANG_DOMINO_STEP_LOG``: one line per decode step; plain-width steps commit one token per request,
    drafting steps at least one and at most the width; together they emitted every generated token."""
    payloads, _, switched = rounds
    steps = [json.loads(line) for line in switching.extra["step_log"].read_text().splitlines()]
    widths = {s["width"] for s in steps}
    assert widths == ({1, BLOCK_SIZE} if switching.extra["setting"] == str(LIMIT) else set(ADAPTIVE_CANDIDATES))
    for s in steps:
        assert s["seconds"] > 0
        # On CPU a plain-width step's one-token verify runs as a decode forward; drafting steps verify.
        assert s["target_forward"] == ("decode" if s["width"] == 1 else "verify"), s
        if s["width"] == 1:
            assert s["tokens"] == s["batch_size"], s
        else:
            assert s["batch_size"] <= s["tokens"] <= s["batch_size"] * s["width"], s
    # SGLANG_DOMINO_DEFERRED_CONTEXT (on by default on CPU): plain-width steps stash their context writes and a
    # drafting step writes them first, so the drafts compared with the offline rollout above read late writes.
    late = [s["context_written_late"] for s in steps]
    assert all(n == 0 for s, n in zip(steps, late) if s["width"] == 1)
    assert sum(late) > 0, "no drafting step wrote stashed context"
    assert sum(late) <= sum(s["tokens"] for s in steps if s["width"] == 1)
    # Each request's first token comes from its prefill, every later one from a decode step.
    generated = sum(len(out["output_ids"]) - 1 for out in switched)
    assert sum(s["tokens"] for s in steps) >= generated
