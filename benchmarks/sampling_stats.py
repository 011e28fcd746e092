"""Statistics for the server sampling tests and ``benchmarks/sampling_audit.py``: exact target distributions,
chi-square goodness of fit, and the power of those tests.

The exact distributions come from the target checkpoint itself (Hugging Face transformers, float32) through
:func:`sglang_domino.sampling.filtered_probs` -- SGLang's own sampler semantics (temperature, top-k, top-p, min-p):

* ``p1``: the first generated token given the prompt (the prefill's own sample, before any speculation);
* ``p2_given[t]``: the second token given the prompt and first token ``t`` -- the token the first speculative verify
  step decides (an accepted sampled draft or a residual draw; with ``max_new_tokens=2`` nothing later is kept);
* ``p2 = p1 @ p2_given``: the second token's marginal.

Pearson's test: cells whose expected count is at least ``MIN_EXPECTED`` are kept, the rest are pooled into one
cell, and a draw in a cell of probability 0 (outside the filtered support) is a failure in itself.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

MIN_EXPECTED = 5.0

# The prompt every sampling test uses, picked offline among a dozen random 6-token prompts for the tiny pair (exact
# p and the drafter's exact first-draft q): its first token is fairly peaked (top value 30 % at T=1, 80 % at T=0.7
# top-p 0.9), so the frequent first tokens give well-sized conditional samples, and the first draft is accepted
# 23-57 % of the time (by setting), so both the accept path and the residual path carry real mass. The old prompt
# [57, 121, 33, 210, 95, 17] has a flat first token at T=1 (top 10 %) and ~2x less power against a lossy verifier.
PROMPT = [117, 279, 344, 232, 31, 333]

# Every filter SGLang applies, each on its own and with a temperature.
SETTINGS: dict[str, dict] = {
    "t1": {"temperature": 1.0},
    "t0.7_top_p0.9": {"temperature": 0.7, "top_p": 0.9},
    "t1_top_k20": {"temperature": 1.0, "top_k": 20},
    "t1_min_p0.1": {"temperature": 1.0, "min_p": 0.1},
}


@dataclass
class Exact:
    p1: np.ndarray  # [V]
    p2_given: np.ndarray  # [V, V]: row t = p(token 2 | prompt, token 1 = t)

    @property
    def p2(self) -> np.ndarray:
        return self.p1 @ self.p2_given


def exact_distributions(target_path, prompt: Sequence[int], settings: dict[str, dict]) -> dict[str, Exact]:
    """The exact filtered target distributions of tokens 1 and 2 for each setting (float32 forward, float64 out)."""
    import torch
    from transformers import AutoModelForCausalLM

    from sglang_domino.sampling import SamplingParams, filtered_probs

    model = AutoModelForCausalLM.from_pretrained(target_path, dtype=torch.float32).eval()
    with torch.no_grad():
        logits1 = model(torch.tensor([list(prompt)])).logits[0, -1:]
        vocab = logits1.shape[-1]
        batch = torch.cat((torch.tensor(list(prompt)).expand(vocab, -1), torch.arange(vocab)[:, None]), dim=1)
        logits2 = model(batch).logits[:, -1]
    out = {}
    for name, sp in settings.items():
        p1 = filtered_probs(logits1, SamplingParams.uniform(1, **sp))[0]
        p2_given = filtered_probs(logits2, SamplingParams.uniform(vocab, **sp))
        out[name] = Exact(p1.double().numpy(), p2_given.double().numpy())
    return out


def _cells(probs: np.ndarray, n: int) -> np.ndarray:
    """Boolean mask of the cells kept on their own (expected count >= MIN_EXPECTED) for n draws."""
    return probs * n >= MIN_EXPECTED


def goodness_of_fit(tokens: np.ndarray, probs: np.ndarray) -> float:
    """Pearson chi-square p-value of the draws ``tokens`` against the distribution ``probs``.

    Raises AssertionError if a token outside the support (probability 0) was drawn: top-k/top-p/min-p must hold
    exactly, not just on average."""
    from scipy.stats import chisquare

    tokens = np.asarray(tokens, dtype=np.int64)
    n = len(tokens)
    observed = np.bincount(tokens, minlength=len(probs)).astype(float)
    outside = np.flatnonzero((probs <= 0) & (observed > 0))
    assert len(outside) == 0, f"drew token(s) {outside.tolist()} that the filtered target excludes (probability 0)"
    big = _cells(probs, n)
    expected = probs * n
    obs = np.append(observed[big], observed[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] < 1e-9:
        obs, exp = obs[:-1], exp[:-1]
    if len(obs) < 2:
        return 1.0
    return float(chisquare(obs, exp * obs.sum() / exp.sum()).pvalue)


def degrees_of_freedom(probs: np.ndarray, n: int) -> int:
    big = _cells(probs, n)
    return int(big.sum() + (probs[~big].sum() * n > 1e-9) - 1)


def noncentrality(probs: np.ndarray, alternative: np.ndarray, n: int) -> float:
    """Pearson chi-square noncentrality of ``alternative`` against ``probs`` with n draws, over the test's cells."""
    big = _cells(probs, n)
    p = np.append(probs[big], probs[~big].sum())
    a = np.append(alternative[big], alternative[~big].sum())
    keep = p > 0
    return float(n * ((a[keep] - p[keep]) ** 2 / p[keep]).sum())


def power(probs: np.ndarray, alternative: np.ndarray, n: int, alpha: float) -> float:
    """Probability that :func:`goodness_of_fit` (n draws from ``alternative``) gives p < alpha (noncentral χ²)."""
    from scipy.stats import chi2, ncx2

    df = degrees_of_freedom(probs, n)
    if df < 1:
        return 0.0
    return float(ncx2.sf(chi2.isf(alpha, df), df, noncentrality(probs, alternative, n)))


def top2_shift(probs: np.ndarray, eps: float) -> np.ndarray:
    """``probs`` with ``eps`` of probability moved from its most likely value to the second most likely."""
    a, b = np.argsort(-probs, kind="stable")[:2]
    out = probs.copy()
    out[a] -= eps
    out[b] += eps
    return out


def detectable_shift(probs: np.ndarray, n: int, alpha: float, target_power: float = 0.95) -> float:
    """Smallest ε moved from the most likely to the second most likely value that the test detects (p < alpha)
    with probability ``target_power`` from n draws; inf if even moving all of the top value's mass is not enough."""
    from scipy.optimize import brentq

    top = float(np.sort(probs)[-1])
    if power(probs, top2_shift(probs, top), n, alpha) < target_power:
        return float("inf")
    return float(brentq(lambda e: power(probs, top2_shift(probs, e), n, alpha) - target_power, 1e-9, top,
                        xtol=1e-5))


def lossy_residual(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """What a verifier that draws the bonus from p instead of norm(max(p − q, 0)) emits: min(p, q) + (1 − Σmin) p."""
    m = np.minimum(p, q)
    return m + (1.0 - m.sum()) * p


def two_sample(a: np.ndarray, b: np.ndarray, min_count: int = 10) -> float:
    """Chi-square homogeneity p-value of two samples of token ids (cells rarer than ``min_count`` pooled)."""
    from scipy.stats import chi2_contingency

    vocab = int(max(a.max(), b.max())) + 1
    table = np.stack([np.bincount(a, minlength=vocab), np.bincount(b, minlength=vocab)]).astype(float)
    keep = table.sum(0) >= min_count
    table = np.concatenate([table[:, keep], table[:, ~keep].sum(1, keepdims=True)], axis=1)
    table = table[:, table.sum(0) > 0]
    if table.shape[1] < 2:
        return 1.0
    return float(chi2_contingency(table).pvalue)


# ------------------------------------------------------------------------------------------------ drawing


def draw(generate: Callable[..., dict], sp: dict, *, requests: int, n: int, tag: str, max_new_tokens: int = 2,
         concurrency: Optional[int] = None, prompt: Sequence[int] = PROMPT) -> tuple[np.ndarray, list[dict]]:
    """``requests`` /generate calls with ``n`` samples each -> (token ids [requests·n, max_new_tokens], meta_infos).

    ``generate(**payload)`` posts one request (the test fixture's ``Server.generate`` or the benchmark's)."""
    params = dict(sp, max_new_tokens=max_new_tokens, ignore_eos=True)
    if n > 1:
        params["n"] = n
    # SGLang expands a string rid into f"{rid}_{i}" for the n parallel samples: the draft log can be matched by prefix.
    payloads = [{"rid": f"{tag}-{i}", "input_ids": list(prompt), "sampling_params": params} for i in range(requests)]
    with ThreadPoolExecutor(max_workers=concurrency or requests) as pool:
        outs = list(pool.map(lambda p: generate(**p), payloads))
    items = [o for batch in outs for o in (batch if isinstance(batch, list) else [batch])]
    rows = [o["output_ids"] for o in items]
    arr = np.array(rows, dtype=np.int64)
    assert arr.shape == (requests * n, max_new_tokens), arr.shape
    return arr, [o.get("meta_info", {}) for o in items]
