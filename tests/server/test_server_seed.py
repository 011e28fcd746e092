"""``sampling_seed``: a seeded request returns the same tokens every time, on a Domino server.

Plain SGLang on CPU ignores the seed (its seeded sampler runs only under ``--enable-deterministic-inference``,
which the CPU backend refuses); Domino fixes every token of a seeded request by (seed, position): the first one
through SGLang's own seeded sampler (``hooks._sampler_forward``), the others by the seeded verify rule
(:func:`sglang_domino.verify.verify_seeded`), which makes the output independent of the drafts, the draft width
and the other requests of the batch. So the same seeded request must give the same output alone, again, inside
a busy batch, and on the server with the adaptive width rule (plain-width steps and drafting steps of several
widths, chosen by timing), while a different seed gives another sample.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from sglang_domino.server.launch import cpu_default_dtype

pytestmark = [pytest.mark.server, pytest.mark.timeout(900)]

PROMPT = [57, 121, 33, 210, 95, 17, 8, 300]
SEEDED = {"temperature": 0.9, "top_p": 0.95, "max_new_tokens": 40, "ignore_eos": True, "sampling_seed": 20261207}


def _run(server, sampling_params: dict, rid: str) -> list[int]:
    return server.generate(rid=rid, input_ids=PROMPT, sampling_params=sampling_params)["output_ids"]


def test_a_seeded_request_returns_the_same_tokens_every_time(servers) -> None:
    domino, default = servers["domino"], servers["domino_default"]
    alone = [_run(domino, SEEDED, f"seed-alone-{i}") for i in range(3)]
    assert alone[0] == alone[1] == alone[2]
    assert len(alone[0]) == SEEDED["max_new_tokens"]

    # Inside a batch of unseeded sampled requests (other rows, other widths of the same steps).
    noise = {"temperature": 1.0, "max_new_tokens": 40, "ignore_eos": True}
    with ThreadPoolExecutor(9) as pool:
        others = [pool.submit(_run, domino, noise, f"seed-noise-{i}") for i in range(8)]
        busy = pool.submit(_run, domino, SEEDED, "seed-busy")
        unseeded = [f.result() for f in others]
        assert busy.result() == alone[0]
    assert len({tuple(u) for u in unseeded}) > 1  # the unseeded ones still draw

    # The default server: adaptive widths (plain-width steps and drafting steps of several widths, picked by timing).
    # (It serves float32, the CPU default: bit-equal logits whatever the width, so the same tokens every time.)
    assert cpu_default_dtype() == "float32"
    adaptive = [_run(default, SEEDED, f"seed-default-{i}") for i in range(3)]
    assert adaptive[0] == adaptive[1] == adaptive[2]

    other_seed = _run(domino, dict(SEEDED, sampling_seed=7), "seed-other")
    assert other_seed != alone[0]


def test_n_copies_of_a_seeded_request_are_the_same_sample(servers) -> None:
    out = servers["domino"].generate(input_ids=PROMPT, sampling_params=dict(SEEDED, n=3))
    assert len(out) == 3
    assert out[0]["output_ids"] == out[1]["output_ids"] == out[2]["output_ids"]
