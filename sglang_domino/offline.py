"""Plain-PyTorch speculative generation over a Hugging Face target: the reference the SGLang plugin must match.

    prefill (with hidden states) -> bonus token
    loop: draft a block from the context -> verify it in one target forward -> keep accepted context

One prompt at a time (batch 1): requests advance by different amounts each step, and this loop is the
reference, not the server. Used for acceptance evaluation (``sglang-domino eval``) and in tests.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache

from sglang_domino.modeling import DominoDrafter
from sglang_domino.rollout import DraftBlock, draft_from_hidden, drafting_lm_head, resolve_draft_temperature_scale
from sglang_domino.sampling import SamplingParams, filtered_probs, sample_from
from sglang_domino.verify import verify_greedy, verify_sampling


@dataclass
class SpecOutput:
    """tokens: generated ids (prompt excluded); accept_lengths: tokens emitted per verify step (bonus included)."""

    tokens: list[int]
    accept_lengths: list[int] = field(default_factory=list)

    @property
    def verify_steps(self) -> int:
        return len(self.accept_lengths)

    @property
    def tau(self) -> float:
        """Mean tokens per verify step, bonus included (SGLang's accept length)."""
        return sum(self.accept_lengths) / max(len(self.accept_lengths), 1)


def target_features(hidden_states: Sequence[torch.Tensor], layer_ids: Iterable[int]) -> torch.Tensor:
    """Concatenate HF ``hidden_states[id + 1]`` (index 0 is the embedding output) -> [N, T, n·H]."""
    return torch.cat([hidden_states[i + 1] for i in layer_ids], dim=-1)


@contextmanager
def _phase(times: Optional[dict[str, float]], name: str) -> Iterator[None]:
    """Add the wall time of the block to ``times[name]`` (nothing when ``times`` is None)."""
    if times is None:
        yield
        return
    start = time.perf_counter()
    yield
    times[name] = times.get(name, 0.0) + time.perf_counter() - start


def _pick(logits: torch.Tensor, sampling: Optional[SamplingParams], generator) -> torch.Tensor:
    if sampling is None:
        return torch.argmax(logits, dim=-1)
    return sample_from(filtered_probs(logits, sampling), generator)


@torch.no_grad()
def speculative_generate(
    target: torch.nn.Module,
    drafter: DominoDrafter,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    eos_token_ids: Sequence[int] = (),
    sampling: Optional[SamplingParams] = None,
    generator: Optional[torch.Generator] = None,
    use_head: bool = True,
    block_size: Optional[int] = None,
    phase_times: Optional[dict[str, float]] = None,
    point_mass_drafts: bool = False,
    draft_logits_dtype: Optional[str] = None,
    draft_temperature_scale: Optional[float] = None,
) -> SpecOutput:
    """Generate up to ``max_new_tokens`` for one prompt ``input_ids`` [1, T].

    sampling None = greedy (equals the target's own greedy decoding token for token);
    otherwise lossless speculative sampling with the drafter's sampled drafts and their probabilities.
    use_head=False drafts with the backbone's base logits only (plain DFlash on the same weights).
    block_size: the verify width (bonus + drafts), default the drafter's own (SGLang's
    ``--speculative-num-draft-tokens``).
    point_mass_drafts: with sampling, draft greedily and verify the drafts as point masses (q = one-hot;
    accept with probability p(d), else resample from p without d) -- upstream SGLang's treatment of Domino
    drafts. Also lossless; kept for comparison with the sampled drafts (``sglang-domino eval --temperature``).
    draft_logits_dtype: precision of the drafting lm_head GEMM, as the server chooses it
    (:func:`sglang_domino.rollout.draft_logits_dtype`; None = ``$SGLANG_DOMINO_DRAFT_LOGITS_DTYPE`` or auto).
    draft_temperature_scale: with sampling, drafts are drawn at the temperature × this scale, as the server does
    (:func:`sglang_domino.rollout.resolve_draft_temperature_scale`; None = ``$SGLANG_DOMINO_DRAFT_TEMPERATURE_SCALE`` or
    the default).
    phase_times: if given, seconds spent per phase of the rounds are added to it (``draft_backbone``,
    ``draft_logits`` (base logits + Domino correction + selection), ``target_verify``, ``accept``,
    ``context_append``) -- what ``benchmarks/round_profile.py`` reports.
    """
    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be [1, T], got {tuple(input_ids.shape)}")
    config = drafter.config
    embed_weight = target.get_input_embeddings().weight
    lm_head_weight = target.get_output_embeddings().weight
    draft_lm_head = drafting_lm_head(lm_head_weight, draft_logits_dtype)
    # Resolved once, not per round (only sampled drafts use it).
    temperature_scale = None if sampling is None else resolve_draft_temperature_scale(draft_temperature_scale)
    head = drafter.head_weights() if use_head else None
    eos = set(int(t) for t in eos_token_ids)

    cache = DynamicCache()
    out = target(input_ids, past_key_values=cache, use_cache=True, output_hidden_states=True)
    bonus = _pick(out.logits[:, -1], sampling, generator)
    draft_cache = drafter.new_cache()
    drafter.append_context(draft_cache, target_features(out.hidden_states, config.target_layer_ids))

    result = SpecOutput(tokens=[int(bonus)])
    while len(result.tokens) < max_new_tokens and int(bonus) not in eos:
        start = draft_cache.length  # position of the bonus token
        with _phase(phase_times, "draft_backbone"):
            draft_hidden = drafter.draft_block_hidden(draft_cache, bonus, embed_weight, block_size)
        with _phase(phase_times, "draft_logits"):
            block = draft_from_hidden(
                draft_hidden, bonus, embed_weight, draft_lm_head, head,
                shift_label=config.shift_label, pure_draft_prefix_len=config.pure_draft_prefix_len,
                sampling=None if point_mass_drafts else sampling, generator=generator,
                draft_temperature_scale=temperature_scale,
            )
            if point_mass_drafts and sampling is not None:
                block = DraftBlock(block.tokens, F.one_hot(block.tokens, lm_head_weight.shape[0]).float())
        with _phase(phase_times, "target_verify"):
            verify_ids = torch.cat((bonus[:, None], block.tokens), dim=1)
            out = target(verify_ids, past_key_values=cache, use_cache=True, output_hidden_states=True)
        with _phase(phase_times, "accept"):
            if sampling is None:
                verdict = verify_greedy(block.tokens, out.logits)
            else:
                verdict = verify_sampling(block.tokens, block.probs, out.logits, sampling, generator)
            accepted = int(verdict.accept_len[0])
        # Keep the bonus and the accepted drafts as context, for the target and the drafter alike.
        with _phase(phase_times, "context_append"):
            cache.crop(start + accepted + 1)
            drafter.append_context(draft_cache,
                                   target_features(out.hidden_states, config.target_layer_ids)[:, : accepted + 1])
        emitted = verdict.emitted(block.tokens)[0]
        result.accept_lengths.append(len(emitted))
        result.tokens.extend(emitted)
        bonus = verdict.bonus
        if eos & set(emitted):
            break
    tokens = result.tokens[:max_new_tokens]
    for i, tok in enumerate(tokens):
        if tok in eos:
            tokens = tokens[: i + 1]
            break
    result.tokens = tokens
    return result


@torch.no_grad()
def plain_generate(target: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int,
                   eos_token_ids: Sequence[int] = ()) -> list[int]:
    """The target's own greedy decoding via HF ``generate`` (the losslessness oracle)."""
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    eos = list(eos_token_ids)
    out = target.generate(
        input_ids, attention_mask=torch.ones_like(input_ids), eos_token_id=eos or None,
        pad_token_id=(eos[0] if eos else 0), **kwargs,
    )
    return out[0, input_ids.shape[1]:].tolist()
