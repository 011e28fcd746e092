"""DominoDrafter: incremental context cache equals the one-shot forward; dtype/device agnostic."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import random_drafter


def test_incremental_context_matches_full_context_forward() -> None:
    drafter = random_drafter(seed=0)
    cfg = drafter.config
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 13, cfg.num_context_features * cfg.hidden_size, generator=g)
    embed = torch.randn(cfg.vocab_size, cfg.hidden_size, generator=g)
    bonus = torch.tensor([3, 9])

    cache = drafter.new_cache()
    for lo, hi in [(0, 5), (5, 6), (6, 13)]:  # context arrives in accepted chunks
        drafter.append_context(cache, features[:, lo:hi])
    incremental = drafter.draft_block_hidden(cache, bonus, embed)
    assert cache.length == 13  # drafting did not grow the cache

    ctx = drafter.project_context(features)
    ctx_positions = torch.arange(13).expand(2, 13)
    block_ids = torch.full((2, cfg.block_size), cfg.mask_token_id)
    block_ids[:, 0] = bonus
    block_positions = torch.arange(13, 13 + cfg.block_size).expand(2, -1)
    full = drafter(F.embedding(block_ids, embed), block_positions, drafter.context_kv(ctx, ctx_positions))
    torch.testing.assert_close(incremental, full, rtol=1e-5, atol=1e-5)


def test_block_attention_is_non_causal() -> None:
    """Changing the last block token changes the first slot's output (bidirectional inside the block)."""
    drafter = random_drafter(seed=1)
    cfg = drafter.config
    ctx_kv = drafter.context_kv(torch.randn(1, 4, cfg.hidden_size), torch.arange(4)[None])
    x = torch.randn(1, cfg.block_size, cfg.hidden_size)
    positions = torch.arange(4, 4 + cfg.block_size)[None]
    y = x.clone()
    y[0, -1] += 1.0
    assert not torch.allclose(drafter(x, positions, ctx_kv)[0, 0], drafter(y, positions, ctx_kv)[0, 0])


def test_bf16_forward_runs_and_stays_close_to_fp32() -> None:
    drafter = random_drafter(seed=2)
    cfg = drafter.config
    features = torch.randn(1, 6, cfg.num_context_features * cfg.hidden_size)
    embed = torch.randn(cfg.vocab_size, cfg.hidden_size)
    cache32 = drafter.new_cache()
    drafter.append_context(cache32, features)
    out32 = drafter.draft_block_hidden(cache32, torch.tensor([1]), embed)
    drafter16 = drafter.to(torch.bfloat16)
    cache16 = drafter16.new_cache()
    drafter16.append_context(cache16, features)
    out16 = drafter16.draft_block_hidden(cache16, torch.tensor([1]), embed.to(torch.bfloat16))
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), out32, rtol=0.1, atol=0.1)


def test_wrong_feature_width_is_named() -> None:
    with pytest.raises(ValueError, match=r"expects 128 \(2 layers"):
        random_drafter().project_context(torch.randn(1, 3, 10))
