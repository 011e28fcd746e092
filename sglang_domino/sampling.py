"""The one definition of a filtered sampling distribution, shared by drafting and verification.

Semantics are SGLang's own sampler (``top_k_top_p_min_p_sampling_from_probs_torch``), so that the
distribution we verify against is the one plain SGLang decoding samples from: softmax(logits / T), sort
descending, drop ranks ≥ top_k, drop tokens whose preceding cumulative mass (of the unfiltered softmax)
exceeds top_p, drop tokens below min_p × the top probability, renormalise. Temperature 0 means greedy:
a one-hot at the argmax (ties to the lowest id), so greedy rows ride through the same verify rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

GREEDY_TEMPERATURE = 1e-5  # SGLang treats temperatures below this as greedy


@dataclass
class SamplingParams:
    """Per-row sampling parameters. temperature [N] float; top_k [N] int (≤0 or ≥V = off); top_p [N]; min_p [N]."""

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    min_p: Optional[torch.Tensor] = None

    @classmethod
    def uniform(cls, n: int, temperature: float = 1.0, top_k: int = -1, top_p: float = 1.0,
                min_p: float = 0.0, device: str | torch.device = "cpu") -> "SamplingParams":
        """The same parameters for all n rows."""
        return cls(
            temperature=torch.full((n,), float(temperature), device=device),
            top_k=torch.full((n,), int(top_k), dtype=torch.long, device=device),
            top_p=torch.full((n,), float(top_p), device=device),
            min_p=torch.full((n,), float(min_p), device=device),
        )

    def repeat_interleave(self, times: int) -> "SamplingParams":
        """Row i repeated ``times`` times (one row per verified position)."""
        rep = lambda t: None if t is None else t.repeat_interleave(times, dim=0)  # noqa: E731
        return SamplingParams(rep(self.temperature), rep(self.top_k), rep(self.top_p), rep(self.min_p))

    def with_temperature_scale(self, scale: float) -> "SamplingParams":
        """The same parameters at ``scale`` × the temperature (greedy rows stay greedy)."""
        if scale == 1.0:
            return self
        return SamplingParams(self.temperature * scale, self.top_k, self.top_p, self.min_p)

    @property
    def is_greedy(self) -> torch.Tensor:
        return self.temperature < GREEDY_TEMPERATURE


def filtered_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """logits [N, V] -> probabilities [N, V] (fp32) after temperature, top-k, top-p, min-p."""
    n, vocab = logits.shape
    logits = logits.to(torch.float32)
    greedy = params.is_greedy.to(logits.device)
    temperature = torch.where(greedy, torch.ones_like(params.temperature), params.temperature).to(logits.device)
    probs = torch.softmax(logits / temperature[:, None], dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
    cum_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    top_k = params.top_k.to(logits.device)
    top_k = torch.where((top_k <= 0) | (top_k > vocab), torch.full_like(top_k, vocab), top_k)
    ranks = torch.arange(vocab, device=logits.device)[None, :]
    drop = (ranks >= top_k[:, None]) | (cum_before > params.top_p.to(logits.device)[:, None])
    if params.min_p is not None:
        drop |= sorted_probs < (sorted_probs[:, :1] * params.min_p.to(logits.device)[:, None])
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    sorted_probs = sorted_probs / sorted_probs.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    if bool(greedy.any()):
        one_hot = torch.zeros_like(out).scatter_(-1, torch.argmax(logits, dim=-1, keepdim=True), 1.0)
        out = torch.where(greedy[:, None], one_hot, out)
    return out


def sample_from(probs: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One draw per row of probs [N, V] -> token ids [N] (int64)."""
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
