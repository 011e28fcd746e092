"""Vocabulary-parallel drafting (``sglang_domino.vocab_parallel``) at TP = 2 against the single-rank rollout.

Two real processes on a ``torch.distributed`` gloo group each hold half of the padded vocabulary (lm_head, embedding
and W2 rows) and run :func:`sglang_domino.rollout.draft_from_hidden`; their drafts must equal the one-rank rollout
token for token -- greedy (ties across the shard boundary included) and sampled (same seed on rank 0, the draft
probabilities equal over the whole vocabulary) -- for every ``pure_draft_prefix_len``, with a vocabulary that does
not fill the padded shards.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import traceback

import pytest
import torch

from sglang_domino.kernels import DominoHeadWeights
from sglang_domino.rollout import draft_from_hidden
from sglang_domino.sampling import SamplingParams

VOCAB, PADDED, HIDDEN, GRU, RANK, BATCH, BLOCK = 1000, 1024, 32, 16, 8, 5, 6
TIE_LOW, TIE_HIGH = 3, 700  # the same logits on rank 0 and rank 1: the lowest id must win


def make_case(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    lm_head = torch.randn(VOCAB, HIDDEN, generator=g)
    w2 = torch.randn(VOCAB, RANK, generator=g) * 0.5
    # A strong direction shared by two ids on different shards: they tie, and win most slots.
    lm_head[TIE_LOW] = lm_head[TIE_HIGH] = lm_head[TIE_LOW] * 3
    w2[TIE_HIGH] = w2[TIE_LOW]
    head = DominoHeadWeights(w_ih=torch.randn(3 * GRU, HIDDEN, generator=g) * 0.3,
                             w_hh=torch.randn(3 * GRU, GRU, generator=g) * 0.3,
                             w1=torch.randn(RANK, HIDDEN + GRU, generator=g) * 0.3, w2=w2)
    return {"hidden": torch.randn(BATCH, BLOCK, HIDDEN, generator=g), "bonus": torch.randint(0, VOCAB, (BATCH,),
                                                                                             generator=g),
            "embed": torch.randn(VOCAB, HIDDEN, generator=g), "lm_head": lm_head, "head": head}


def rollout(case: dict, prefix: int, sampled: bool, shard=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    embed, lm_head, head = case["embed"], case["lm_head"], case["head"]
    if shard is not None:
        embed, lm_head = shard.local_rows(embed), shard.local_rows(lm_head)
        head = dataclasses.replace(head, w2=shard.local_rows(head.w2))
    params = None
    if sampled:
        params = SamplingParams(temperature=torch.tensor([1.0, 0.7, 1.3, 0.9, 1.0]),
                                top_p=torch.tensor([1.0, 0.9, 1.0, 0.8, 1.0]),
                                top_k=torch.tensor([-1, -1, 50, -1, 5]), min_p=torch.tensor([0.0, 0.0, 0.0, 0.05, 0.0]))
    block = draft_from_hidden(case["hidden"], case["bonus"], embed, lm_head, head, shift_label=True,
                              pure_draft_prefix_len=prefix, sampling=params,
                              generator=torch.Generator().manual_seed(11) if sampled else None,
                              vocab_shard=shard)
    return block.tokens, block.probs


def _rank_main(rank: int, world: int, init_file: str, queue) -> None:
    import torch.distributed as dist

    from sglang_domino.vocab_parallel import TorchDistributedGroup, VocabShard

    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
        torch.manual_seed(100 + rank)  # different random states: the draws must still agree
        shard = VocabShard.even(TorchDistributedGroup(), PADDED, VOCAB)
        case = make_case()
        results = {(prefix, sampled): rollout(case, prefix, sampled, shard)
                   for prefix in range(BLOCK) for sampled in (False, True)}
        # numpy, not tensors: a queued tensor travels as a shared-memory handle, which breaks (connection reset)
        # when this process exits before the parent has received it
        results = {key: tuple(None if t is None else t.numpy() for t in value) for key, value in results.items()}
        queue.put((rank, results, None))
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - reported to the test
        queue.put((rank, None, traceback.format_exc()))


@pytest.fixture(scope="module")
def tp2_results(tmp_path_factory) -> dict[int, dict]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    init_file = str(tmp_path_factory.mktemp("gloo") / "init")
    procs = [ctx.Process(target=_rank_main, args=(rank, 2, init_file, queue)) for rank in range(2)]
    for proc in procs:
        proc.start()
    out = {}
    for _ in procs:
        rank, results, error = queue.get(timeout=240)
        assert error is None, f"rank {rank}:\n{error}"
        out[rank] = {key: tuple(None if a is None else torch.from_numpy(a) for a in value)
                     for key, value in results.items()}
    for proc in procs:
        proc.join(timeout=60)
    return out


@pytest.mark.parametrize("prefix", range(BLOCK))
def test_greedy_drafts_equal_one_rank(tp2_results, prefix) -> None:
    want, _ = rollout(make_case(), prefix, sampled=False)
    for rank in (0, 1):
        got, probs = tp2_results[rank][(prefix, False)]
        assert probs is None
        assert torch.equal(got, want), f"rank {rank}, pure_draft_prefix_len {prefix}"
    assert (want == TIE_LOW).any() and not (want == TIE_HIGH).any(), "the cross-shard tie did not occur"


@pytest.mark.parametrize("prefix", range(BLOCK))
def test_sampled_drafts_and_probabilities_equal_one_rank(tp2_results, prefix) -> None:
    want_tokens, want_probs = rollout(make_case(), prefix, sampled=True)
    for rank in (0, 1):
        tokens, probs = tp2_results[rank][(prefix, True)]
        assert torch.equal(tokens, want_tokens), f"rank {rank}, pure_draft_prefix_len {prefix}"
        assert probs.shape == (BATCH, BLOCK - 1, VOCAB)
        torch.testing.assert_close(probs, want_probs, rtol=0, atol=1e-6)


def test_shard_geometry() -> None:
    from sglang_domino.vocab_parallel import VocabShard

    class Rank:
        def __init__(self, rank: int) -> None:
            self.world_size, self.rank_in_group = 2, rank

    first, last = VocabShard.even(Rank(0), PADDED, VOCAB), VocabShard.even(Rank(1), PADDED, VOCAB)
    assert (first.start, first.rows, first.valid_rows) == (0, 512, 512)
    assert (last.start, last.rows, last.valid_rows) == (512, 512, VOCAB - 512)
    table = torch.arange(VOCAB, dtype=torch.float32)[:, None]
    assert torch.equal(last.local_rows(table)[:, 0], torch.cat((torch.arange(512, VOCAB), torch.zeros(24))).float())
    logits = torch.zeros(2, 512)
    assert torch.isinf(last.mask_padding_(logits)[:, VOCAB - 512:]).all() and (logits[:, : VOCAB - 512] == 0).all()
    with pytest.raises(ValueError, match="cannot hold"):
        VocabShard.even(Rank(0), 999, VOCAB)
