"""Every verified row belongs to its own request, on a server that has already seen what users send.

Issue 25 saw Domino's sampled token-2 frequencies drift (chi-square p = 1e-7) only after the shared server had
served the other test modules -- aborts, client hang-ups, ``n > 1`` parallel sampling, prompts at the context
edge -- in this order: reliability, features, greedy, sampling. Statistics need thousands of samples to see such
a drift; the row invariants of :mod:`invariants` see a single misrouted row. So each Domino server (always drafting
in float32, and the defaults of ``make serve`` with the adaptive width rule) first gets that hostile traffic, then
the sampling module's workload (``n = 40`` copies of one prompt at temperature 1 and top-p 0.8, with a greedy
request in the same batches), then a mixed batch of greedy / temperature / top-p / top-k / min-p / seeded
requests -- and every row the worker verified along the way is checked against what the clients received.
"""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from sglang_domino.benchmarks.invariants import Seen, check_rows
from .test_reliability import stream

pytestmark = [pytest.mark.server, pytest.mark.timeout(900)]

SAMPLING_KINDS = [
    {"temperature": 0},
    {"temperature": 1.0},
    {"temperature": 0.7, "top_p": 0.9},
    {"temperature": 1.0, "top_k": 20},
    {"temperature": 1.0, "min_p": 0.1},
    {"temperature": 0.8, "top_p": 0.95, "sampling_seed": 11},
]
SAMPLING_TEST_PROMPT = [57, 121, 33, 210, 95, 17]  # test_server_sampling's prompt


class Recorder:
    """What clients received, per request id (the id of each choice for ``n > 1``)."""

    def __init__(self, server) -> None:
        self.server = server
        self.seen: dict[str, Seen] = {}
        self.lock = threading.Lock()

    def generate(self, payload: dict) -> None:
        r = self.server.post("/generate", payload, timeout=600)
        r.raise_for_status()
        body = r.json()
        with self.lock:
            for item in body if isinstance(body, list) else [body]:
                complete = item["meta_info"]["finish_reason"]["type"] != "abort"
                self.seen[item["meta_info"]["id"]] = Seen(item["output_ids"], complete,
                                                          len(payload["input_ids"]))

    def stream(self, payload: dict, hang_up_after: int) -> None:
        result = stream(self.server, payload, hang_up_after)  # a client that disconnects mid-stream
        if result["done"]:
            with self.lock:
                self.seen[payload["rid"]] = Seen(result["output_ids"], True, len(payload["input_ids"]))


def hostile_traffic(rec: Recorder, tag: str, context_len: int) -> None:
    """Aborts, hang-ups, n > 1 and context-edge prompts, concurrently, with every sampling kind mixed in."""
    rng = random.Random(25)
    payloads = []
    for i in range(36):
        sp = dict(SAMPLING_KINDS[i % len(SAMPLING_KINDS)], max_new_tokens=rng.randrange(1, 50))
        if i % 7 == 3:
            sp["n"] = 3
        payloads.append({"rid": f"{tag}-mix-{i}", "input_ids": [rng.randrange(4, 500) for _ in range(rng.randrange(3, 40))],
                         "sampling_params": sp})
    hang_ups = {i: rng.randrange(1, 4) for i in rng.sample(range(36), 10) if "n" not in payloads[i]["sampling_params"]}

    def one(i: int) -> None:
        if i in hang_ups:
            rec.stream(payloads[i], hang_ups[i])
        else:
            rec.generate(payloads[i])

    def aborts() -> None:
        for j in range(4):
            rid = f"{tag}-abort-{j}"
            payload = {"rid": rid, "input_ids": [5 + j] * 20,
                       "sampling_params": {"temperature": 1.0, "max_new_tokens": 400, "ignore_eos": True}}
            worker = threading.Thread(target=rec.generate, args=(payload,))
            worker.start()
            time.sleep(0.4 + 0.3 * j)
            rec.server.post("/abort_request", {"rid": rid})
            worker.join()

    with ThreadPoolExecutor(38) as pool:
        aborter = pool.submit(aborts)
        list(pool.map(one, range(36)))
        aborter.result()
    for shorter in (0, 5):  # prompt + max_tokens = the whole context: no full draft block fits at the end
        prompt = [rng.randrange(4, 500) for _ in range(context_len - 7 - shorter)]
        rec.generate({"rid": f"{tag}-edge-{shorter}", "input_ids": prompt,
                      "sampling_params": {"temperature": 1.0, "top_p": 0.9, "max_new_tokens": context_len - len(prompt),
                                          "ignore_eos": True}})


def sampling_module_workload(rec: Recorder, tag: str) -> None:
    """What test_server_sampling sends: n = 40 copies at T 1 and T 1 + top-p 0.8, plus a greedy request."""
    payloads = [{"rid": f"{tag}-{name}-{i}", "input_ids": SAMPLING_TEST_PROMPT,
                 "sampling_params": dict(sp, max_new_tokens=2, ignore_eos=True, n=40)}
                for name, sp in (("t1", {"temperature": 1.0}), ("topp", {"temperature": 1.0, "top_p": 0.8}))
                for i in range(4)]
    payloads.append({"rid": f"{tag}-greedy", "input_ids": SAMPLING_TEST_PROMPT,
                     "sampling_params": {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True}})
    with ThreadPoolExecutor(len(payloads)) as pool:
        list(pool.map(rec.generate, payloads))


@pytest.mark.parametrize("name", ["domino", "domino_default"])
def test_rows_belong_to_their_requests_after_hostile_traffic(servers, tiny, name) -> None:
    server = servers[name]
    context_len = json.loads((tiny.target / "config.json").read_text())["max_position_embeddings"]
    rec = Recorder(server)
    hostile_traffic(rec, f"inv-{name}", context_len)
    sampling_module_workload(rec, f"inv-{name}-samp")
    with ThreadPoolExecutor(12) as pool:  # mixed sampling kinds in the same decode batches
        list(pool.map(rec.generate, [{"rid": f"inv-{name}-final-{i}", "input_ids": [40 + i, 81, 7, 300, 12],
                                      "sampling_params": dict(SAMPLING_KINDS[i % len(SAMPLING_KINDS)],
                                                              max_new_tokens=32, ignore_eos=True)}
                                     for i in range(12)]))
    assert server.alive(), server.tail()
    report = check_rows(server.draft_records(), rec.seen)
    print(json.dumps({"server": name, "requests": report.checked_requests, "rows": report.checked_rows}))
    assert report, report.summary()
    # The check really covered the traffic: most requests had verified rows (max_tokens 1 ones have none).
    assert report.checked_requests >= 0.8 * len(rec.seen)
    assert report.checked_rows > 500
