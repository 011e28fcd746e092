"""At temperature 1 (and with top-p) Domino's speculative sampling preserves the target distribution.

For a fixed prompt, the first and second generated tokens are sampled many times from the Domino server and
from the plain server. The second token is the one speculation decides (accepted sampled draft or residual
draw). Frequencies are compared (chi-square) with the exact target distribution, computed from the same
checkpoint with Hugging Face transformers and SGLang's filtering semantics, and with each other.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.server, pytest.mark.timeout(900)]

PROMPT = [57, 121, 33, 210, 95, 17]
SAMPLES = 360  # per server and setting: 9 requests x n=40
SETTINGS = {"t1": {"temperature": 1.0}, "t1_top_p": {"temperature": 1.0, "top_p": 0.8}}
P_MIN = 1e-3


def sample(server, sp: dict, tag: str) -> np.ndarray:
    """SAMPLES x 2 token ids."""
    per_request = 40
    payloads = [{"rid": f"{tag}-{i}", "input_ids": PROMPT,
                 "sampling_params": dict(sp, max_new_tokens=2, ignore_eos=True, n=per_request)}
                for i in range(SAMPLES // per_request)]
    with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
        outs = list(pool.map(lambda p: server.generate(**p), payloads))
    rows = [o["output_ids"] for batch in outs for o in (batch if isinstance(batch, list) else [batch])]
    arr = np.array(rows)
    assert arr.shape == (SAMPLES, 2), arr.shape
    return arr


@pytest.fixture(scope="module")
def exact(tiny):
    """Exact target marginals of tokens 1 and 2 for each setting (SGLang's filtering, via sglang_domino.sampling)."""
    from transformers import AutoModelForCausalLM

    from sglang_domino.sampling import SamplingParams, filtered_probs

    model = AutoModelForCausalLM.from_pretrained(tiny.target, dtype=torch.float32).eval()
    out = {}
    with torch.no_grad():
        logits1 = model(torch.tensor([PROMPT])).logits[0, -1:]
        vocab = logits1.shape[-1]
        batch = torch.cat((torch.tensor(PROMPT).expand(vocab, -1), torch.arange(vocab)[:, None]), dim=1)
        logits2 = model(batch).logits[:, -1]
    for name, sp in SETTINGS.items():
        params = SamplingParams.uniform(1, temperature=sp["temperature"], top_p=sp.get("top_p", 1.0))
        p1 = filtered_probs(logits1, params)[0]
        p2_given = filtered_probs(logits2, SamplingParams.uniform(vocab, temperature=sp["temperature"],
                                                                  top_p=sp.get("top_p", 1.0)))
        out[name] = (p1.double().numpy(), (p1[:, None] * p2_given).sum(0).double().numpy())
    return out


@pytest.fixture(scope="module")
def draws(servers):
    result = {}
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {(srv, name): pool.submit(sample, servers[srv], sp, f"{srv}-{name}")
                   for name, sp in SETTINGS.items() for srv in ("plain", "domino")}
        # Greedy requests batched together with the sampled ones must stay exact.
        greedy = {srv: pool.submit(servers[srv].generate, input_ids=PROMPT,
                                   sampling_params={"temperature": 0, "max_new_tokens": 24, "ignore_eos": True})
                  for srv in ("plain", "domino")}
        for key, fut in futures.items():
            result[key] = fut.result()
        result["greedy"] = {srv: f.result()["output_ids"] for srv, f in greedy.items()}
    return result


def goodness_of_fit(tokens: np.ndarray, probs: np.ndarray) -> float:
    from scipy.stats import chisquare

    n = len(tokens)
    expected = probs * n
    big = expected >= 5
    observed = np.bincount(tokens, minlength=len(probs)).astype(float)
    assert observed[probs == 0].sum() == 0, "sampled a token the filtered target distribution excludes"
    obs = np.append(observed[big], observed[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] < 1e-9:
        obs, exp = obs[:-1], exp[:-1]
    return float(chisquare(obs, exp * obs.sum() / exp.sum()).pvalue)


def two_sample(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import chi2_contingency

    vocab = int(max(a.max(), b.max())) + 1
    table = np.stack([np.bincount(a, minlength=vocab), np.bincount(b, minlength=vocab)]).astype(float)
    keep = table.sum(0) >= 10
    table = np.concatenate([table[:, keep], table[:, ~keep].sum(1, keepdims=True)], axis=1)
    table = table[:, table.sum(0) > 0]
    return float(chi2_contingency(table).pvalue)


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("position", [0, 1])
def test_domino_samples_follow_target_distribution(draws, exact, setting, position) -> None:
    p_domino = goodness_of_fit(draws[("domino", setting)][:, position], exact[setting][position])
    p_plain = goodness_of_fit(draws[("plain", setting)][:, position], exact[setting][position])
    assert p_plain > P_MIN, f"plain SGLang itself does not match the computed target distribution (p={p_plain})"
    assert p_domino > P_MIN, f"Domino token {position + 1} frequencies differ from the target (p={p_domino})"


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_domino_and_plain_frequencies_agree(draws, setting) -> None:
    for position in (0, 1):
        p = two_sample(draws[("domino", setting)][:, position], draws[("plain", setting)][:, position])
        assert p > P_MIN, (setting, position, p)


def test_greedy_rows_exact_inside_sampling_batches(draws) -> None:
    assert draws["greedy"]["domino"] == draws["greedy"]["plain"]
