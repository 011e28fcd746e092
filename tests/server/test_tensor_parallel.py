"""``--tp-size 2`` on SGLang's CPU engine (issue 27): the plain ``python -m sglang.launch_server`` of the tiny target,
with no ``SGLANG_CPU_OMP_THREADS_BIND`` (the plugin's CPU TP hooks bind one core per rank and keep PyNccl off the
gloo groups), answers several concurrent greedy prompts token for token as the shared TP=1 plain server does; a
Domino server at ``--tp-size 2`` is refused before any process spawns, with one line.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import Server, cpu_env, free_port, launch_cmd, wait_ready
from .test_server_greedy import make_prompts

pytestmark = [pytest.mark.server, pytest.mark.timeout(600)]

MAX_NEW_TOKENS = [24, 40, 17, 32, 48, 29]


@pytest.fixture(scope="module")
def tp2(tiny, tmp_path_factory):
    log = tmp_path_factory.mktemp("tp_logs") / "plain_tp2.log"
    env = cpu_env()
    env.pop("SGLANG_CPU_OMP_THREADS_BIND", None)
    server = Server("plain_tp2", launch_cmd(tiny.target, free_port(), "--tp-size", "2"), env, log).start()
    try:
        wait_ready(server)
        yield server
    finally:
        server.stop()


def _concurrently(server: Server, payloads: list[dict]) -> list[dict]:
    with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
        return list(pool.map(lambda p: server.generate(**p), payloads))


def test_tp2_greedy_equals_tp1(tiny, tp2, servers) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny.target))
    prompts = make_prompts(tokenizer, n=len(MAX_NEW_TOKENS), seed=27)
    payloads = [{"input_ids": ids, "sampling_params": {"max_new_tokens": n, "temperature": 0, "ignore_eos": True}}
                for ids, n in zip(prompts, MAX_NEW_TOKENS)]
    got = _concurrently(tp2, payloads)
    want = _concurrently(servers["plain"], payloads)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g["output_ids"] == w["output_ids"], f"prompt {i} ({len(prompts[i])} tokens): TP=2 differs from TP=1"
        assert len(g["output_ids"]) == MAX_NEW_TOKENS[i]
    log = tp2.log.read_text()
    assert "binding SGLANG_CPU_OMP_THREADS_BIND=" in log and "this rank runs" in log


def test_domino_tp2_refused_with_one_line(tiny) -> None:
    cmd = launch_cmd(tiny.target, free_port(), "--tp-size", "2", draft=tiny.drafter)
    out = subprocess.run(cmd, env=cpu_env(), capture_output=True, text=True, timeout=180)
    output = (out.stdout or "") + (out.stderr or "")
    assert out.returncode != 0, output[-2000:]
    last = [line for line in output.splitlines() if line.strip()][-1]
    assert "DominoServerArgsError: sglang-domino: --tp-size 2: the Domino worker does not support tensor " \
           "parallelism yet" in last, last
    assert "Scheduler hit an exception" not in output, "refused only after spawning the scheduler"
