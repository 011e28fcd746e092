"""Shared fixtures: tiny random drafters and targets that build in milliseconds on CPU."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from sglang_domino.config import DominoConfig  # noqa: E402
from sglang_domino.modeling import DominoDrafter  # noqa: E402


def tiny_config(**overrides) -> DominoConfig:
    """A small Domino drafter config; overrides are published config fields."""
    fields = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=96, block_size=8, target_layer_ids=[0, 2],
        num_target_layers=4, mask_token_id=95, projector_type="domino", shift_label=True,
        pure_draft_prefix_len=1, gru_hidden_dim=32, emb_dim=24, rope_theta=10000.0,
    )
    fields.update(overrides)
    return DominoConfig(**fields)


def random_drafter(seed: int = 0, scale: float = 1.0, **overrides) -> DominoDrafter:
    """A drafter with random weights; ``scale`` widens them so argmaxes are far from ties."""
    torch.manual_seed(seed)
    model = DominoDrafter(tiny_config(**overrides))
    if scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim > 1:
                    p.mul_(scale)
    return model.eval()


@pytest.fixture
def drafter() -> DominoDrafter:
    return random_drafter()


@pytest.fixture(scope="module")
def one_thread():
    """torch uses one thread for the module's tests (restored afterwards)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def fresh_cpu_fast_paths_switch(monkeypatch):
    """The CPU fast paths on (their default), $SGLANG_DOMINO_CPU_FAST_PATHS unset and this process's settings
    read afresh, before and after the test."""
    from sglang_domino.kernels import cpu_linear
    from sglang_domino.settings import CPU_FAST_PATHS_ENV, environment_settings

    monkeypatch.delenv(CPU_FAST_PATHS_ENV, raising=False)
    environment_settings.cache_clear()
    cpu_linear.configure(True)
    yield
    environment_settings.cache_clear()
    cpu_linear.configure(True)
