"""The one definition of a filtered sampling distribution, shared by drafting and verification.

Semantics are SGLang's own sampler (``top_k_top_p_min_p_sampling_from_probs_torch``), so that the
distribution we verify against is the one plain SGLang decoding samples from: softmax(logits / T), sort
descending, drop ranks ≥ top_k, drop tokens whose preceding cumulative mass (of the unfiltered softmax)
exceeds top_p, drop tokens below min_p × the top probability, renormalise. Temperature 0 means greedy:
a one-hot at the argmax (ties to the lowest id), so greedy rows ride through the same verify rule.

Seeded requests (``sampling_seed``) draw no random numbers at all: the token at absolute position t is
``argmax(log p_t + G(seed, t))`` with Gumbel noise G from a counter-based hash of the seed, the position and the
token id (:func:`gumbel_noise`) -- the Gumbel-max trick, an exact draw from p_t. Because the noise depends on
nothing but (seed, t, token), a seeded output is the same whatever the batch, the draft width or the drafts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

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

    def select(self, rows: torch.Tensor) -> "SamplingParams":
        """The parameters of ``rows`` only (an index tensor)."""
        pick = lambda t: None if t is None else t[rows.to(t.device)]  # noqa: E731
        return SamplingParams(pick(self.temperature), pick(self.top_k), pick(self.top_p), pick(self.min_p))

    def slice(self, rows: slice) -> "SamplingParams":
        """The parameters of a contiguous range of rows (views, no copy)."""
        pick = lambda t: None if t is None else t[rows]  # noqa: E731
        return SamplingParams(pick(self.temperature), pick(self.top_k), pick(self.top_p), pick(self.min_p))

    @property
    def is_greedy(self) -> torch.Tensor:
        return self.temperature < GREEDY_TEMPERATURE


def sampling_params_from_batch(sampling_info: Any, bs: int) -> Optional[SamplingParams]:
    """SGLang's per-request sampling parameters as ours; None when every request is greedy.

    SGLang stores greedy requests as temperature 1, top_k 1 (and "no top-k" as 2**30), which our filtered
    distribution reads as a one-hot argmax (and no top-k) -- the same distribution SGLang samples from.
    """
    if sampling_info is None or sampling_info.is_all_greedy:
        return None
    min_p = sampling_info.min_ps[:bs].to(torch.float32) if sampling_info.need_min_p_sampling else None
    return SamplingParams(
        temperature=sampling_info.temperatures.reshape(-1)[:bs].to(torch.float32),
        top_k=sampling_info.top_ks[:bs].to(torch.int64),
        top_p=sampling_info.top_ps[:bs].to(torch.float32),
        min_p=min_p,
    )


# Rows filtered together: the filter sorts its rows (values + int64 indices, a cumulative sum, masks), about 30
# bytes per element, so the rows of one call are taken in chunks of at most this many elements. Verification
# filters N x (P+1) rows of the vocabulary at once: 48 requests x 16 positions x 151,936 tokens would otherwise
# sort 117 M elements (~3.5 GB of temporaries); a chunk keeps that near 0.5 GB. Rows are independent, so chunking
# changes no result.
FILTER_CHUNK_ELEMENTS = 1 << 24


def filtered_probs(logits: torch.Tensor, params: SamplingParams,
                   chunk_elements: int = FILTER_CHUNK_ELEMENTS) -> torch.Tensor:
    """logits [N, V] -> probabilities [N, V] (fp32) after temperature, top-k, top-p, min-p (greedy rows: one-hot
    at the argmax). No host synchronisation; rows are filtered in chunks of at most ``chunk_elements``."""
    n, vocab = logits.shape
    rows_per_chunk = max(1, chunk_elements // max(vocab, 1))
    if n <= rows_per_chunk:
        return _filtered_probs(logits, params)
    out = torch.empty((n, vocab), dtype=torch.float32, device=logits.device)
    for start in range(0, n, rows_per_chunk):
        rows = slice(start, min(n, start + rows_per_chunk))
        out[rows] = _filtered_probs(logits[rows], params.slice(rows))
    return out


def _filtered_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
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
    out = probs.scatter_(-1, order, sorted_probs)  # probs is not needed any more: reuse its memory
    # Greedy rows: a one-hot at the argmax, written without asking the host whether there are any.
    argmax = torch.argmax(logits, dim=-1, keepdim=True)
    return torch.where(greedy[:, None], torch.zeros_like(out).scatter_(-1, argmax, 1.0), out)


# ---------------------------------------------------------------------------------------- seeded draws
_MASK32 = 0xFFFFFFFF


def _mul32(a: torch.Tensor, c: int) -> torch.Tensor:
    """The low 32 bits of ``a * c`` for int64 ``a`` in [0, 2**32) and a 32-bit constant, without int64 overflow."""
    low = a * (c & 0xFFFF)
    high = ((a * (c >> 16)) & 0xFFFF) << 16
    return (low + high) & _MASK32


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser (a bijective mixer) on int64 lanes holding 32-bit values."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def gumbel_noise(seeds: torch.Tensor, positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """Standard Gumbel noise G(seed, position, token): seeds [N] int64, positions [N, S] int64 -> [N, S, V] float64.

    A pure function of its arguments (no generator state), independent across positions and tokens as far as the
    hash mixes: MurmurHash3's finaliser chained over the seed's two 32-bit halves, the position and the token id."""
    seeds = seeds.to(torch.int64)
    lo, hi = seeds & _MASK32, (seeds >> 32) & _MASK32
    h = _fmix32(_fmix32(lo ^ 0x3C6EF372) ^ hi)[:, None]  # [N, 1]
    h = _fmix32(h ^ (positions.to(torch.int64) & _MASK32))[..., None]  # [N, S, 1]
    tokens = _mul32(torch.arange(vocab, device=seeds.device, dtype=torch.int64), 0x9E3779B1)
    h = _fmix32(_fmix32(h ^ tokens))  # [N, S, V]
    uniform = (h.to(torch.float64) + 0.5) / 4294967296.0  # in (0, 1)
    return -torch.log(-torch.log(uniform))


@dataclass
class SeededRows:
    """The rows of a batch whose draws a seed fixes. rows [M] row indices; seeds [M]; first_position [M] the
    absolute position of the first token the block decides (the one after its bonus)."""

    rows: torch.Tensor
    seeds: torch.Tensor
    first_position: torch.Tensor

    @classmethod
    def of_batch(cls, seeds: list, first_position: torch.Tensor) -> Optional["SeededRows"]:
        """From per-row seeds (None = unseeded); None when no row is seeded."""
        rows = [i for i, seed in enumerate(seeds) if seed is not None]
        if not rows:
            return None
        index = torch.tensor(rows, dtype=torch.int64, device=first_position.device)
        return cls(index, torch.tensor([int(seeds[i]) for i in rows], dtype=torch.int64, device=index.device),
                   first_position.to(torch.int64)[index])


def seeded_choice(probs: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The token each seeded row takes at each position: ``argmax(log probs + G(seed, position))``.

    probs [N, S, V] (filtered, zero where excluded); seeds [N]; positions [N, S] absolute token positions
    -> [N, S] int64. An exact draw from each row of probs, fixed by (seed, position)."""
    scores = probs.to(torch.float64).log() + gumbel_noise(seeds, positions, probs.shape[-1])
    return scores.argmax(dim=-1)


def sample_from(probs: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One draw per row of probs [N, V] -> token ids [N] (int64)."""
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
