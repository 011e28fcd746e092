"""``--tp-size 2`` on SGLang's CPU engine (issue 27), plain and Domino, against the shared TP=1 servers.

Servers of this module (no ``SGLANG_CPU_OMP_THREADS_BIND``: the plugin's CPU TP hooks bind one core per rank and keep
PyNccl off the gloo groups), started concurrently:

* ``plain_tp2``: ``python -m sglang.launch_server`` of the tiny target at TP=2;
* ``domino_tp2``: the same plus ``--speculative-algorithm domino`` -- float32 draft logits, drafting at every batch
  size, a draft log -- so its drafts can be compared with the single-rank offline rollout bit for bit;
* ``domino_tp2_default``: the tiny pair as ``sglang-domino serve --tp-size 2`` serves it (every default of ours:
  the adaptive width rule, whose per-step width rank 0 decides for both ranks).

Checked: greedy outputs of all three equal the TP=1 plain server's token for token on concurrent requests built from
the held-out prompts (public sources, not written here; ``sglang_domino/embedded/data/SOURCES.md``) with stop
strings, stop token ids and max_tokens that end inside accepted blocks; ``domino_tp2``'s logged drafts equal the
TP=1 offline rollout, all after the Domino servers have served in-flight aborts, client hang-ups and a bad request;
sampled tokens 1 and 2 of ``domino_tp2`` follow the exact target distribution (the checks
and power of ``test_server_sampling``), token 2 decided by speculation; a chat client's mix (temperature 0.7 /
top_p 0.9, ``n`` = 2, streaming, greedy) on ``domino_tp2_default``.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from .conftest import Server, cpu_env, default_cmd, free_port, launch_cmd, started_together
from .test_server_features import _stream
from .test_server_greedy import OfflineDrafts, _stop_string, ended_inside_accepted_block
from .test_server_sampling import PER_REQUEST, REQUESTS, SINGLES, run_checks, sample_server, token2_rows

pytestmark = [pytest.mark.server, pytest.mark.timeout(1200)]

NUM_PROMPTS = 12
MAX_NEW_TOKENS = [24, 40, 17, 32, 48, 29, 21, 37, 13, 45, 26, 33]
TP2 = ("plain_tp2", "domino_tp2", "domino_tp2_default")
FAMILY_ALPHA = 1e-3  # false-failure rate of the sampling checks of this module


@pytest.fixture(scope="module")
def tp2_servers(tiny, tmp_path_factory):
    logs = tmp_path_factory.mktemp("tp_logs")
    env = cpu_env()
    env.pop("SGLANG_CPU_OMP_THREADS_BIND", None)
    specs = {
        "plain_tp2": (launch_cmd(tiny.target, free_port(), "--tp-size", "2"), env, None),
        "domino_tp2": (launch_cmd(tiny.target, free_port(), "--tp-size", "2", draft=tiny.drafter),
                       dict(env, SGLANG_DOMINO_DRAFT_LOG=str(logs / "drafts.jsonl"),
                            SGLANG_DOMINO_DRAFT_LOGITS_DTYPE="float32", SGLANG_DOMINO_MAX_SPECULATIVE_BATCH="none"),
                       logs / "drafts.jsonl"),
        "domino_tp2_default": (default_cmd(tiny.target, tiny.drafter, free_port(), "--tp-size", "2"),
                               dict(env, SGLANG_DOMINO_DRAFT_LOG=str(logs / "drafts_default.jsonl")),
                               logs / "drafts_default.jsonl"),
    }
    with started_together(specs, logs) as running:
        yield running


@pytest.fixture(scope="module")
def heldout_prompts(tiny) -> list[list[int]]:
    """Token ids of held-out prompts (public sources) under the tiny tokenizer, mixed lengths, at most 300 tokens."""
    from transformers import AutoTokenizer

    from sglang_domino.embedded import HELDOUT_PROMPTS
    from sglang_domino.evaluate import read_prompts

    tokenizer = AutoTokenizer.from_pretrained(str(tiny.target))
    texts = []
    for item in read_prompts(HELDOUT_PROMPTS):
        text = item.get("prompt") or "\n".join(m["content"] for m in item["messages"])
        texts.append(text)
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"][:300] for t in texts[:NUM_PROMPTS]]
    assert len(prompts) == NUM_PROMPTS and all(len(p) >= 2 for p in prompts)
    return prompts


def test_tp2_domino_serves_aborts_hangups_and_bad_requests_first(tp2_servers, heldout_prompts) -> None:
    """Before the equality checks below (same module, same servers): in-flight aborts, client hang-ups, sampled
    and greedy requests at once, and a bad request, on both Domino TP=2 servers -- all ranks must stay in step."""
    for name in ("domino_tp2", "domino_tp2_default"):
        server = tp2_servers[name]
        long = {"max_new_tokens": 1500, "ignore_eos": True}

        def abort(rid: str) -> None:
            assert server.post("/abort_request", {"rid": rid}).status_code == 200

        with ThreadPoolExecutor(max_workers=6) as pool:
            aborted = [pool.submit(_stream, server, {"rid": f"{name}-abort-{i}", "input_ids": heldout_prompts[i],
                                                     "sampling_params": dict(long, temperature=0.7 * i)},
                                   after_first=lambda i=i: abort(f"{name}-abort-{i}")) for i in range(2)]
            hung_up = [pool.submit(_stream, server, {"input_ids": heldout_prompts[2 + i],
                                                     "sampling_params": dict(long, temperature=1.0 * i)},
                                   max_chunks=2) for i in range(2)]
            finished = pool.submit(server.generate, input_ids=heldout_prompts[4],
                                   sampling_params={"temperature": 0.8, "top_p": 0.9, "max_new_tokens": 30})
            for f in aborted:
                assert f.result()[-1]["meta_info"]["finish_reason"]["type"] == "abort", name
            for f in hung_up:
                assert len(f.result()) == 2, name
            assert len(finished.result()["output_ids"]) == 30, name
        r = server.post("/generate", {"input_ids": heldout_prompts[0], "sampling_params": {"top_p": 2.0}})
        assert r.status_code == 400, r.text
        assert requests.get(server.url + "/health", timeout=60).status_code == 200, name


def _concurrently(server: Server, payloads: list[dict]) -> list[dict]:
    with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
        return list(pool.map(lambda p: server.generate(**p), payloads))


def _on_every_server(tp2_servers, servers, payloads: list[dict]) -> dict[str, list[dict]]:
    """The same requests (rids prefixed per server), concurrently on the TP=2 servers and the TP=1 plain one."""
    targets = {**{name: tp2_servers[name] for name in TP2}, "plain": servers["plain"]}
    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        futures = {name: pool.submit(_concurrently, server, [dict(p, rid=f"{name}-{p['rid']}") for p in payloads])
                   for name, server in targets.items()}
        return {name: f.result() for name, f in futures.items()}


@pytest.fixture(scope="module")
def greedy_round(tp2_servers, servers, heldout_prompts):
    payloads = [{"rid": f"tp-{i}", "input_ids": ids,
                 "sampling_params": {"max_new_tokens": n, "temperature": 0, "ignore_eos": i % 3 == 0}}
                for i, (ids, n) in enumerate(zip(heldout_prompts, MAX_NEW_TOKENS))]
    return payloads, _on_every_server(tp2_servers, servers, payloads)


def _assert_all_equal(payloads: list[dict], outs: dict[str, list[dict]]) -> None:
    for name in TP2:
        for i, (payload, got, want) in enumerate(zip(payloads, outs[name], outs["plain"])):
            what = f"{name}, request {i} ({len(payload['input_ids'])} prompt tokens, {payload['sampling_params']})"
            assert got["output_ids"] == want["output_ids"], f"{what}: differs from plain TP=1"
            assert got["meta_info"]["finish_reason"] == want["meta_info"]["finish_reason"], what


def test_greedy_tp2_equals_tp1(greedy_round, tp2_servers) -> None:
    """Plain TP=2, Domino TP=2 (always drafting) and Domino TP=2 as ``serve`` starts it: plain TP=1's tokens."""
    payloads, outs = greedy_round
    _assert_all_equal(payloads, outs)
    domino = outs["domino_tp2"]
    tokens = sum(o["meta_info"]["completion_tokens"] for o in domino)
    verifies = sum(o["meta_info"]["spec_verify_ct"] for o in domino)
    assert verifies < tokens / 2, f"Domino at TP=2 hardly speculated: {verifies} verify steps for {tokens} tokens"
    inside = [p["rid"] for p, o in zip(payloads, domino) if o["meta_info"]["finish_reason"]["type"] == "length"
              and ended_inside_accepted_block(tp2_servers["domino_tp2"], f"domino_tp2-{p['rid']}",
                                              o["meta_info"]["completion_tokens"])]
    assert inside, "no max_tokens request ended inside an accepted block at TP=2"
    for name in TP2:
        log = tp2_servers[name].log.read_text()
        assert "binding SGLANG_CPU_OMP_THREADS_BIND=" in log and "this rank runs" in log, name
    for name in ("domino_tp2", "domino_tp2_default"):
        log = tp2_servers[name].log.read_text()
        assert "exact full-vocabulary correction over 2 vocabulary shards" in log, name


def test_stops_inside_blocks_tp2_equal_tp1(greedy_round, tp2_servers, servers) -> None:
    payloads, outs = greedy_round
    stop_payloads = []
    for i, (payload, ref) in enumerate(zip(payloads, outs["plain"])):
        text, ids = ref["text"], ref["output_ids"]
        if len(ids) < 12:
            continue
        sp = {"temperature": 0, "max_new_tokens": 64}
        if i % 2 == 0 and (stop := _stop_string(text, len(text) // 3)) is not None:
            sp["stop"] = [stop]
        elif ids[len(ids) // 2] not in ids[: len(ids) // 2]:
            sp["stop_token_ids"] = [ids[len(ids) // 2]]
        else:
            continue
        stop_payloads.append({"rid": f"tp-stop-{i}", "input_ids": payload["input_ids"], "sampling_params": sp})
    assert len(stop_payloads) >= 5, "too few requests with a stop to test"
    stop_outs = _on_every_server(tp2_servers, servers, stop_payloads)
    _assert_all_equal(stop_payloads, stop_outs)
    stopped = [o for o in stop_outs["domino_tp2"] if o["meta_info"]["finish_reason"]["type"] == "stop"]
    assert len(stopped) >= 3, "the stops were not reached"


def test_drafts_tp2_equal_offline_rollout(greedy_round, tp2_servers, tiny) -> None:
    """Every draft block ``domino_tp2`` verified for the first requests equals the single-rank offline rollout."""
    payloads, outs = greedy_round
    offline = OfflineDrafts(tiny)
    server = tp2_servers["domino_tp2"]
    checked = mismatched = 0
    for payload, out in list(zip(payloads, outs["domino_tp2"]))[:6]:
        rid = f"domino_tp2-{payload['rid']}"
        c, m = offline.count_mismatches(payload["input_ids"] + out["output_ids"], server.draft_records(rid), rid)
        checked, mismatched = checked + c, mismatched + m
    assert checked >= 20, f"only {checked} draft blocks logged"
    assert mismatched == 0, f"{mismatched}/{checked} draft blocks at TP=2 differ from the TP=1 offline rollout"


@pytest.fixture(scope="module")
def tp2_draws(tp2_servers):
    from sglang_domino.benchmarks.sampling_stats import SETTINGS

    return sample_server(tp2_servers["domino_tp2"], SETTINGS, REQUESTS, SINGLES)


def test_tp2_samples_follow_the_exact_target(tp2_draws, tiny) -> None:
    """Tokens 1 and 2 (marginals and token 2 given the frequent token-1 values) of ``domino_tp2`` against the exact
    target distributions, every setting of the sampling module, Bonferroni over this module's checks (power: as
    stated in ``test_server_sampling``, same draws)."""
    from sglang_domino.benchmarks.sampling_stats import PROMPT, SETTINGS, exact_distributions

    exact = exact_distributions(tiny.target, PROMPT, SETTINGS)
    checks = {name: run_checks(exact[name], batched, single) for name, (batched, single, _) in tp2_draws.items()}
    alpha = FAMILY_ALPHA / sum(len(c) for c in checks.values())
    report = {name: "; ".join(f"{what}: p={p:.3g}" for what, p in c) for name, c in checks.items()}
    print("\n" + "\n".join(f"domino_tp2 {name}: {r}" for name, r in report.items()))
    failed = {name: [(w, p) for w, p in c if p < alpha] for name, c in checks.items()}
    assert not any(failed.values()), f"rejected at alpha={alpha:.2g}: {failed}"


def test_tp2_token_2_decided_by_speculation(tp2_draws) -> None:
    for name, (_, _, coverage) in tp2_draws.items():
        (drafted_n, rows_n), (drafted_s, rows_s) = coverage["n"], coverage["s"]
        assert rows_n + rows_s == REQUESTS * PER_REQUEST + SINGLES, (name, coverage)
        assert drafted_n == rows_n and drafted_s == rows_s, (name, coverage)


def test_chat_client_mix_on_default_tp2(tp2_servers) -> None:
    """What chat clients send, concurrently, to the TP=2 server ``serve`` starts: sampled (T 0.7, top_p 0.9), n = 2,
    streamed, greedy; the server answers all and stays healthy, and greedy equals a greedy rerun."""
    server = tp2_servers["domino_tp2_default"]
    url = server.url + "/v1/chat/completions"
    messages = [{"role": "user", "content": "Tell me about the river and the old mill."}]

    def chat(body: dict) -> dict:
        r = requests.post(url, json={"model": "default", "messages": messages, "max_tokens": 40, **body}, timeout=300)
        assert r.status_code == 200, r.text
        return r.json()

    def stream() -> str:
        with requests.post(url, json={"model": "default", "messages": messages, "max_tokens": 40, "stream": True,
                                      "temperature": 0.7, "top_p": 0.9}, stream=True, timeout=300) as r:
            assert r.status_code == 200, r.text
            chunks = [json.loads(line[6:]) for line in r.iter_lines(decode_unicode=True)
                      if line and line.startswith("data: ") and line != "data: [DONE]"]
        assert chunks and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)

    with ThreadPoolExecutor(max_workers=6) as pool:
        sampled = [pool.submit(chat, {"temperature": 0.7, "top_p": 0.9}) for _ in range(2)]
        pair = pool.submit(chat, {"temperature": 0.7, "top_p": 0.9, "n": 2})
        streamed = pool.submit(stream)
        greedy = [pool.submit(chat, {"temperature": 0}) for _ in range(2)]
        for f in sampled:
            assert f.result()["choices"][0]["message"]["content"] is not None
        assert len(pair.result()["choices"]) == 2
        assert isinstance(streamed.result(), str)
        first, second = (f.result()["choices"][0]["message"]["content"] for f in greedy)
    assert first == second
    assert requests.get(server.url + "/health", timeout=30).status_code == 200
