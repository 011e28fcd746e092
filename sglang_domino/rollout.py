"""The one Domino rollout: backbone hidden states of a block -> drafted tokens (and draft probabilities).

    base logits of all proposal slots in one matmul (target lm_head)
    -> sequential correction slot by slot over the FULL vocabulary (exact; no candidate pool)

The sequential part runs through :func:`sglang_domino.kernels.correction_loop`, which is the eager
reference on CPU and the fused Triton / CUDA-graph path on CUDA; both give the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from sglang_domino import kernels
from sglang_domino.hardware import cpu_has_bf16_units
from sglang_domino.kernels import DominoHeadWeights, cpu_linear, greedy_select
from sglang_domino.sampling import SamplingParams, SeededRows, filtered_probs, sample_from, seeded_choice
from sglang_domino.settings import DEFAULT_DRAFT_TEMPERATURE_SCALE
from sglang_domino.vocab_parallel import VocabShard


@dataclass
class DraftBlock:
    """tokens [N, P] int64 drafted proposals; probs [N, P, V] their draft distributions (sampling only)."""

    tokens: torch.Tensor
    probs: Optional[torch.Tensor] = None


_DRAFT_LOGITS_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def draft_logits_dtype(lm_head_weight: torch.Tensor, choice: str = "auto") -> torch.dtype:
    """The dtype the drafting lm_head GEMM runs in: ``choice`` (a server's ``$SGLANG_DOMINO_DRAFT_LOGITS_DTYPE``,
    :class:`sglang_domino.settings.EnvSettings`), ``auto`` by default.

    ``auto``: bf16 when the target's lm_head is float32 and the device multiplies bf16 natively (CUDA, or a CPU
    with AVX512-BF16/AMX), else the lm_head's own dtype. Why: the base-logit GEMM reads the whole [V, H] head
    for a handful of rows, so it is memory bound -- a float32 head serving SmolLM2 spent 35 of a round's 123 ms
    there (benchmarks/results/round_profile_fp32_w4.md). Drafts are only proposals: the target verifies them in
    its own precision, so the output is unchanged (lossless either way); a bf16 head can only flip a draft
    token where two logits nearly tie.
    """
    choice = (choice or "auto").strip().lower()
    if choice in _DRAFT_LOGITS_DTYPES:
        return _DRAFT_LOGITS_DTYPES[choice]
    if choice != "auto":
        raise ValueError(f"draft logits dtype {choice!r}: expected auto, float32 or bfloat16")
    if lm_head_weight.dtype != torch.float32:
        return lm_head_weight.dtype
    fast_bf16 = lm_head_weight.device.type == "cuda" or (lm_head_weight.device.type == "cpu" and cpu_has_bf16_units())
    return torch.bfloat16 if fast_bf16 else torch.float32


def drafting_lm_head(lm_head_weight: torch.Tensor, choice: str = "auto") -> torch.Tensor:
    """``lm_head_weight`` [V, H] in :func:`draft_logits_dtype` (a contiguous copy when the dtype changes)."""
    dtype = draft_logits_dtype(lm_head_weight, choice)
    return lm_head_weight if dtype == lm_head_weight.dtype else lm_head_weight.detach().to(dtype).contiguous()


def resolve_draft_temperature_scale(choice: Optional[float] = None) -> float:
    """The draft temperature scale s: ``choice`` (a server's ``$SGLANG_DOMINO_DRAFT_TEMPERATURE_SCALE``), else 0.6.

    At temperature T each draft slot is drawn from q = filtered softmax(logits / (T·s)) and verified with q's
    own probabilities, so the output distribution is the target's for every s > 0 (lossless). What s changes is
    acceptance, Σ min(p, q) per slot: s = 1 samples the drafter's own distribution, s → 0 approaches greedy
    drafts verified as point masses (upstream SGLang's rule). A drafter that is less certain than the target
    gains from a sharper q: with drafter v4 at T = 0.7, τ was 1.28 at s = 1, 1.28 for point masses, 1.36 at
    s = 0.6 and 1.32 at s = 0.35 (16 held-out prompts × 2 seeds,
    ``scripts/exploration/draft_temperature_sweep_v4_t07.py``).
    """
    if choice is None:
        return DEFAULT_DRAFT_TEMPERATURE_SCALE
    if not (0.0 < float(choice) < float("inf")):
        raise ValueError(f"draft temperature scale must be a finite number > 0, got {choice!r}")
    return float(choice)


def proposal_hidden(draft_hidden: torch.Tensor, shift_label: bool) -> torch.Tensor:
    """The slots that make proposals: [N, B, H] -> [N, B−1, H].

    shift_label=True: slot k predicts the token after position k, so slots 0..B−2 propose.
    shift_label=False (DFlash): slot k predicts position k itself; slot 0 is the bonus, slots 1..B−1 propose.
    """
    if draft_hidden.ndim != 3:
        raise ValueError(f"draft_hidden must be [batch, block, hidden], got {tuple(draft_hidden.shape)}")
    block = draft_hidden.shape[1]
    if block < 2:
        raise ValueError(f"a block needs at least 2 slots, got {block}")
    start = 0 if shift_label else 1
    return draft_hidden[:, start : start + block - 1]


def make_sampling_selector(params: SamplingParams, generator: Optional[torch.Generator] = None,
                           temperature_scale: float = 1.0, seeded: Optional[SeededRows] = None):
    """Slot selector drawing from the filtered draft distribution at ``temperature_scale`` × the request's
    temperature; returns (tokens, probs) -- the probabilities the tokens were drawn from, which verification
    needs. Seeded rows take ``argmax(log q + G(seed, position))`` instead: the same Gumbel noise the target's
    seeded choice at that position uses (:func:`sglang_domino.verify.verify_seeded`), so a draft is accepted
    exactly when it is the token the seed gives the target, which happens most often when q is close to p."""
    draft_params = params.with_temperature_scale(temperature_scale)

    def select(logits: torch.Tensor, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        probs = filtered_probs(logits, draft_params)
        tokens = sample_from(probs, generator)
        if seeded is not None:
            rows = seeded.rows.to(probs.device)
            positions = (seeded.first_position + slot)[:, None]
            tokens[rows] = seeded_choice(probs[rows][:, None], seeded.seeds, positions)[:, 0].to(tokens.dtype)
        return tokens, probs

    return select


@torch.no_grad()
def draft_from_hidden(
    draft_hidden: torch.Tensor,
    bonus_tokens: torch.Tensor,
    embed_weight: torch.Tensor,
    lm_head_weight: torch.Tensor,
    head: Optional[DominoHeadWeights],
    *,
    shift_label: bool,
    pure_draft_prefix_len: int,
    sampling: Optional[SamplingParams] = None,
    generator: Optional[torch.Generator] = None,
    draft_temperature_scale: Optional[float] = None,
    seeded: Optional[SeededRows] = None,
    vocab_shard: Optional[VocabShard] = None,
) -> DraftBlock:
    """Draft B−1 tokens from the backbone output.

    Args:
        draft_hidden: [N, B, H] backbone output for the block [bonus, MASK × (B−1)].
        bonus_tokens: [N] the last verified token.
        embed_weight: [V, H] target input embeddings; lm_head_weight: [V, H] target output head, in the
            precision the base logits are computed in (:func:`drafting_lm_head`); the logits are then brought to
            ``draft_hidden``'s dtype, in which the correction is added.
        head: Domino head tensors, or None for base logits only (plain DFlash).
        sampling: None = greedy; otherwise each slot is drawn from the filtered softmax of its corrected logits
            at the request's temperature × ``draft_temperature_scale`` (:func:`resolve_draft_temperature_scale`; None =
            the default), returned as ``probs`` for verification.
        seeded: rows whose drafts a seed fixes (sampling only; see :func:`make_sampling_selector`).
        vocab_shard: under tensor parallelism, this rank's vocabulary rows
            (:class:`~sglang_domino.vocab_parallel.VocabShard`): ``embed_weight``, ``lm_head_weight`` and ``head.w2``
            are then this rank's rows [rows, ...] and the drafts (and draft probabilities over the whole vocabulary)
            are the same on every rank and equal to a single rank's.
    """
    z = proposal_hidden(draft_hidden, shift_label)
    if bonus_tokens.shape != draft_hidden.shape[:1]:
        raise ValueError(f"bonus_tokens must be [{draft_hidden.shape[0]}], got {tuple(bonus_tokens.shape)}")
    n, p, h = z.shape
    # One 2-D GEMM over every slot of every request: z is a strided slice of the block, and a 3-D strided input
    # makes CPU F.linear run ~6x slower at 16 requests (measured: 619 vs 103 ms for [16, 3, 576] x [49152, 576]).
    # In float32 on CPU it goes through the packed-weight kernels (F.linear took 32 ms for the 3 rows of a width-4
    # step on an AVX2 machine, the packed head 5 ms: kernels/cpu_linear.py).
    z_for_logits = z.to(lm_head_weight.dtype).reshape(n * p, h)
    base_logits = cpu_linear.linear(z_for_logits, lm_head_weight).view(n, p, -1).to(z.dtype)  # [N, P, V or rows]
    if sampling is None:
        select: kernels.SlotSelector = greedy_select
    else:
        select = make_sampling_selector(sampling, generator, resolve_draft_temperature_scale(draft_temperature_scale),
                                        seeded)
    embed = None
    if vocab_shard is not None:  # this rank's vocabulary rows: select across the shards, embed from the owner
        vocab_shard.mask_padding_(base_logits)
        whole_vocab_select = select

        def select(local_logits: torch.Tensor, slot: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
            if sampling is None:
                return vocab_shard.greedy(local_logits), None
            tokens, probs = whole_vocab_select(vocab_shard.gather(local_logits), slot)
            return vocab_shard.same_tokens(tokens), probs

        def embed(tok: torch.Tensor) -> torch.Tensor:
            return vocab_shard.embed(tok, embed_weight)

    tokens, probs = kernels.correction_loop(
        base_logits, z, bonus_tokens, embed_weight, head, pure_draft_prefix_len, select=select, embed=embed
    )
    return DraftBlock(tokens, probs)


def greedy_rollout(drafter, draft_hidden: torch.Tensor, bonus_tokens: torch.Tensor,
                   embed_weight: torch.Tensor, lm_head_weight: torch.Tensor) -> torch.Tensor:
    """Greedy Domino drafts of a :class:`~sglang_domino.modeling.DominoDrafter` -> LongTensor [N, B−1]."""
    return draft_from_hidden(
        draft_hidden, bonus_tokens, embed_weight, lm_head_weight, drafter.head_weights(),
        shift_label=drafter.config.shift_label, pure_draft_prefix_len=drafter.config.pure_draft_prefix_len,
    ).tokens


def sampling_rollout(drafter, draft_hidden: torch.Tensor, bonus_tokens: torch.Tensor, embed_weight: torch.Tensor,
                     lm_head_weight: torch.Tensor, sampling: SamplingParams,
                     generator: Optional[torch.Generator] = None,
                     draft_temperature_scale: Optional[float] = None,
                     seeded: Optional[SeededRows] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampled Domino drafts -> (tokens [N, B−1], draft probabilities [N, B−1, V])."""
    block = draft_from_hidden(
        draft_hidden, bonus_tokens, embed_weight, lm_head_weight, drafter.head_weights(),
        shift_label=drafter.config.shift_label, pure_draft_prefix_len=drafter.config.pure_draft_prefix_len,
        sampling=sampling, generator=generator, draft_temperature_scale=draft_temperature_scale, seeded=seeded,
    )
    assert block.probs is not None
    return block.tokens, block.probs
