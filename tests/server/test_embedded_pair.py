"""The embedded default pair (SmolLM2-135M-Instruct + the shipped drafter) served by real SGLang servers:
Domino's greedy output equals plain decoding token for token on a few held-out prompts sent concurrently, and
SGLang's own ``avg_spec_accept_length`` shows accepted drafts. A third server verifies a narrower block
(``--speculative-num-draft-tokens 4``, what CPU serving can choose because verify cost grows with the width)
and must equal plain decoding too. The full-width Domino server drafts with a bf16 lm_head copy, and therefore refuses
online weight updates. A fourth server is the pair as ``sglang-domino serve --dp-size 2`` starts it (two schedulers,
one core each, every default of ours): greedy equal to plain decoding, both schedulers decoding."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from server.conftest import Server, cpu_env, default_cmd, free_port, launch_cmd, wait_ready

pytestmark = [pytest.mark.server, pytest.mark.slow]

MAX_NEW_TOKENS = 40
NARROW_WIDTH = 4


@pytest.fixture(scope="module")
def embedded_servers(tmp_path_factory):
    from sglang_domino.embedded import prepare_embedded_pair

    pair = prepare_embedded_pair()
    logs = tmp_path_factory.mktemp("embedded_logs")
    running: dict[str, Server] = {}
    try:
        for name, draft, extra in (("plain", None, ()), ("domino", pair.draft, ()),
                                   ("domino_narrow", pair.draft, ("--speculative-num-draft-tokens", str(NARROW_WIDTH)))):
            cmd = launch_cmd(pair.target, free_port(), *extra, draft=draft)
            # The full Domino server drafts with a bf16 copy of the float32 lm_head (what "auto" picks on a CPU
            # with bf16 units), whatever this CPU is, so that path is checked lossless on the real pair.
            # Drafting at every batch size: the three concurrent requests must go through speculative steps
            # (the automatic switch-off is covered by test_plain_width_steps).
            env = cpu_env(SGLANG_DOMINO_MAX_SPECULATIVE_BATCH="none")
            if name == "domino":
                env["SGLANG_DOMINO_DRAFT_LOGITS_DTYPE"] = "bfloat16"
            running[name] = Server(name, cmd, env, logs / f"{name}.log").start()
        # a bounded KV pool per scheduler, as the other servers here have (SGLang's default took 2.8 GB per
        # scheduler, and the OOM killer took one of the two next to three other servers)
        dp_cmd = default_cmd(pair.target, pair.draft, free_port(), "--dp-size", "2", "--max-total-tokens", "16384")
        running["domino_dp2"] = Server("domino_dp2", dp_cmd, cpu_env(), logs / "domino_dp2.log").start()
        for server in running.values():
            wait_ready(server)
        yield pair, running
    finally:
        for server in running.values():
            server.stop()


def test_embedded_pair_greedy_equals_plain(embedded_servers) -> None:
    from transformers import AutoTokenizer

    from sglang_domino.embedded import HELDOUT_PROMPTS
    from sglang_domino.evaluate import encode_prompt, read_prompts

    pair, servers = embedded_servers
    tokenizer = AutoTokenizer.from_pretrained(pair.target)
    prompts = [encode_prompt(tokenizer, item)[0].tolist() for item in read_prompts(HELDOUT_PROMPTS)[:3]]

    def run(server: Server) -> list[dict]:
        payload = lambda ids: dict(input_ids=ids, sampling_params={"max_new_tokens": MAX_NEW_TOKENS,  # noqa: E731
                                                                    "temperature": 0})
        with ThreadPoolExecutor(len(prompts)) as pool:
            return list(pool.map(lambda ids: server.generate(**payload(ids)), prompts))

    plain, domino, narrow = run(servers["plain"]), run(servers["domino"]), run(servers["domino_narrow"])
    for p, d, n in zip(plain, domino, narrow):
        assert d["output_ids"] == p["output_ids"]
        assert n["output_ids"] == p["output_ids"]
        # At most NARROW_WIDTH tokens per verify step (token 1 comes from the prefill).
        assert n["meta_info"]["completion_tokens"] <= 1 + NARROW_WIDTH * n["meta_info"]["spec_verify_ct"]
    verify = sum(d["meta_info"]["spec_verify_ct"] for d in domino)
    tokens = sum(d["meta_info"]["completion_tokens"] for d in domino)
    assert verify > 0  # the requests really went through speculative verify steps
    state = servers["domino"].server_info()["internal_states"][0]
    print(json.dumps({"embedded_tau": tokens / verify, "verify_steps": verify, "tokens": tokens,
                      "avg_spec_accept_length": state["avg_spec_accept_length"]}))
    # The shipped drafter really drafts: more than one token per verify step, as SGLang reports it.
    assert state["avg_spec_accept_length"] > 1.1, state["avg_spec_accept_length"]
    assert tokens / verify > 1.1


def test_data_parallel_serve_greedy_equals_plain(embedded_servers) -> None:
    """``--dp-size 2``: two schedulers behind SGLang's data-parallel controller, each with its own Domino worker,
    answer concurrent held-out prompts exactly as plain decoding does, and both serve some of them."""
    from transformers import AutoTokenizer

    from sglang_domino.embedded import HELDOUT_PROMPTS
    from sglang_domino.evaluate import encode_prompt, read_prompts

    pair, servers = embedded_servers
    tokenizer = AutoTokenizer.from_pretrained(pair.target)
    prompts = [encode_prompt(tokenizer, item)[0].tolist() for item in read_prompts(HELDOUT_PROMPTS)[3:9]]

    def run(server: Server) -> list[dict]:
        with ThreadPoolExecutor(len(prompts)) as pool:
            return list(pool.map(lambda ids: server.generate(input_ids=ids, sampling_params={
                "max_new_tokens": MAX_NEW_TOKENS, "temperature": 0}), prompts))

    plain, dp = run(servers["plain"]), run(servers["domino_dp2"])
    for i, (p, d) in enumerate(zip(plain, dp)):
        assert d["output_ids"] == p["output_ids"], f"held-out prompt {3 + i}: --dp-size 2 differs from plain"
    assert sum(d["meta_info"]["spec_verify_ct"] for d in dp) > 0
    log = servers["domino_dp2"].log.read_text()
    for rank in ("DP0", "DP1"):
        assert f"{rank}] Domino worker ready" in log, rank
        assert f"{rank}] Prefill batch" in log, f"scheduler {rank} served nothing"


def test_online_weight_update_refused_while_drafting_with_a_converted_head(embedded_servers) -> None:
    """A bf16 drafting copy of the float32 lm_head cannot follow SGLang's in-place weight loaders, so the server
    refuses ``/update_weights_from_disk`` with a message naming the way out, and keeps serving exactly."""
    pair, servers = embedded_servers
    reply = servers["domino"].post("/update_weights_from_disk", {"model_path": str(pair.target)})
    assert reply.status_code == 400, reply.text
    body = reply.json()
    assert body["success"] is False
    assert "SGLANG_DOMINO_DRAFT_LOGITS_DTYPE=float32" in body["message"]
    payload = dict(text="Name three colours.", sampling_params={"max_new_tokens": 12, "temperature": 0})
    assert servers["domino"].generate(**payload)["output_ids"] == servers["plain"].generate(**payload)["output_ids"]
