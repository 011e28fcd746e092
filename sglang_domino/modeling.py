"""The Domino drafter in one file: DFlash parallel backbone + optional GRU/low-rank causal head.

Backbone (DFlash): a few Qwen3-style decoder layers. Queries come from the block only
(the target's embeddings of ``[bonus, MASK × (B−1)]`` at absolute positions ``p .. p+B−1``); keys and
values are the concatenation of the *context* (target hidden states at ``target_layer_ids``, fused by
``fc`` + ``hidden_norm`` and projected by each layer's own ``k_proj``/``v_proj``) and the block.
Attention is non-causal inside the block. The final ``norm`` gives one hidden state per slot, whose
base logits are the target's ``lm_head``.

Head (Domino): ``prefix_gru`` runs over the target embeddings of the block's previous tokens and
``embed_proj`` (Linear → SiLU → Linear, rank ``emb_dim``) adds a causal correction to the base logits.
The sequential correction itself lives in :mod:`sglang_domino.rollout` / :mod:`sglang_domino.kernels`.

The drafter owns no embedding and no lm_head: it shares the target's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from sglang_domino.config import DominoConfig
from sglang_domino.kernels import DominoHeadWeights


class RMSNorm(nn.Module):
    """Qwen3/Llama RMSNorm: normalise in fp32, scale in the input dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.to(torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Neox-style RoPE tables for absolute ``positions`` [N, T] -> cos, sin [N, 1, T, head_dim]."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    freqs = positions.to(torch.float32)[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [N, heads, T, d]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class DraftAttention(nn.Module):
    def __init__(self, config: DominoConfig) -> None:
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, d
        self.rope_theta = config.rope_theta
        self.q_proj = nn.Linear(h, self.num_heads * d, bias=False)
        self.k_proj = nn.Linear(h, self.num_kv_heads * d, bias=False)
        self.v_proj = nn.Linear(h, self.num_kv_heads * d, bias=False)
        self.o_proj = nn.Linear(self.num_heads * d, h, bias=False)
        self.q_norm = RMSNorm(d, config.rms_norm_eps)
        self.k_norm = RMSNorm(d, config.rms_norm_eps)

    def project_kv(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K (normed, rotated) and V of x [N, T, H] at ``positions`` [N, T] -> [N, kv_heads, T, d] each."""
        n, t, _ = x.shape
        k = self.k_norm(self.k_proj(x).view(n, t, self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(n, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = rope_cos_sin(positions, self.head_dim, self.rope_theta, k.dtype)
        return apply_rope(k, cos, sin), v

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        ctx_k: torch.Tensor,
        ctx_v: torch.Tensor,
        mask: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """x [N, Q, H] block tokens; ctx_k/ctx_v [N, kv_heads, T, d]; mask [N, Q, T+Q] bool (True = visible), a
        flex-attention ``BlockMask`` of the same predicate, or None (everything visible)."""
        n, q_len, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(n, q_len, self.num_heads, self.head_dim)).transpose(1, 2)
        cos, sin = rope_cos_sin(positions, self.head_dim, self.rope_theta, q.dtype)
        q = apply_rope(q, cos, sin)
        k_blk, v_blk = self.project_kv(x, positions)
        k = torch.cat((ctx_k, k_blk), dim=2)
        v = torch.cat((ctx_v, v_blk), dim=2)
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        if mask is not None and not isinstance(mask, torch.Tensor):  # a flex-attention BlockMask (training)
            from torch.nn.attention.flex_attention import flex_attention

            out = flex_attention(q, k, v, block_mask=mask)
        else:
            attn_mask = mask[:, None] if mask is not None else None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=False)
        return self.o_proj(out.transpose(1, 2).reshape(n, q_len, self.num_heads * self.head_dim))


class DraftMLP(nn.Module):
    def __init__(self, config: DominoConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DraftDecoderLayer(nn.Module):
    def __init__(self, config: DominoConfig) -> None:
        super().__init__()
        self.self_attn = DraftAttention(config)
        self.mlp = DraftMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, positions, ctx_k, ctx_v, mask):  # noqa: ANN001 - shapes as in DraftAttention
        x = x + self.self_attn(self.input_layernorm(x), positions, ctx_k, ctx_v, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


@dataclass
class ContextKVCache:
    """Per-layer context K/V of a batch of requests that advance together.

    ``keys[l]``/``values[l]``: [N, kv_heads, T, d]; ``length`` = T context tokens (positions 0..T−1).
    Appending accepted context grows it; drafting a block reads it and leaves it untouched, so the block's
    own K/V are dropped by construction.
    """

    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    length: int = 0


class DominoDrafter(nn.Module):
    """DFlash backbone + optional Domino head, with the published parameter names (those of SpecForge / z-lab exports)."""

    def __init__(self, config: DominoConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.layers = nn.ModuleList(DraftDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(h, config.rms_norm_eps)
        self.fc = nn.Linear(config.num_context_features * h, h, bias=False)
        self.hidden_norm = RMSNorm(h, config.rms_norm_eps)
        self.prefix_gru: Optional[nn.GRU] = None
        self.embed_proj: Optional[nn.Sequential] = None
        if config.has_head:
            self.prefix_gru = nn.GRU(h, config.gru_hidden_dim, num_layers=1, bias=False, batch_first=True)
            self.embed_proj = nn.Sequential(
                nn.Linear(h + config.gru_hidden_dim, config.emb_dim, bias=False),
                nn.SiLU(),
                nn.Linear(config.emb_dim, config.vocab_size, bias=False),
            )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Linear N(0, 0.02), norms 1, GRU PyTorch default (SpecForge's init; nothing zero-initialised)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        if self.prefix_gru is not None:
            self.prefix_gru.reset_parameters()

    # ------------------------------------------------------------------ head
    @property
    def use_head(self) -> bool:
        return self.prefix_gru is not None

    def head_weights(self) -> Optional[DominoHeadWeights]:
        """The head's tensors for the correction kernels, or None for a backbone-only drafter."""
        if self.prefix_gru is None or self.embed_proj is None:
            return None
        return DominoHeadWeights(
            w_ih=self.prefix_gru.weight_ih_l0,
            w_hh=self.prefix_gru.weight_hh_l0,
            w1=self.embed_proj[0].weight,
            w2=self.embed_proj[2].weight,
        )

    def drop_head(self) -> None:
        """Switch the Domino head off: the same backbone drafts with base logits only."""
        self.prefix_gru = None
        self.embed_proj = None
        self.config = self.config.without_head()

    # -------------------------------------------------------------- backbone
    def project_context(self, target_hidden: torch.Tensor) -> torch.Tensor:
        """Fuse target features [N, T, n·H] (concatenated in target_layer_ids order) -> [N, T, H]."""
        expected = self.fc.in_features
        if target_hidden.shape[-1] != expected:
            raise ValueError(
                f"target_hidden has {target_hidden.shape[-1]} features, the drafter expects {expected} "
                f"({self.config.num_context_features} layers × hidden {self.config.hidden_size})"
            )
        return self.hidden_norm(self.fc(target_hidden))

    def context_kv(self, ctx: torch.Tensor, positions: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer context K/V of fused features ctx [N, T, H] at positions [N, T]."""
        return [layer.self_attn.project_kv(ctx, positions) for layer in self.layers]

    def forward(
        self,
        block_embeds: torch.Tensor,
        block_positions: torch.Tensor,
        context_kv: list[tuple[torch.Tensor, torch.Tensor]],
        mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The backbone forward.

        Args:
            block_embeds: [N, Q, H] target embeddings of the block tokens (one or more blocks).
            block_positions: [N, Q] their absolute positions.
            context_kv: per-layer (K, V) [N, kv_heads, T, d] from :meth:`context_kv` or a cache.
            mask: [N, Q, T+Q] bool, True = visible, or the same predicate as a flex-attention ``BlockMask``
                (training on CUDA); None = everything visible (one block, full context).

        Returns:
            draft_hidden [N, Q, H] after the final norm.
        """
        x = block_embeds
        for layer, (ctx_k, ctx_v) in zip(self.layers, context_kv):
            x = layer(x, block_positions, ctx_k.to(x.dtype), ctx_v.to(x.dtype), mask)
        return self.norm(x)

    # ------------------------------------------------- incremental decoding
    def new_cache(self) -> ContextKVCache:
        return ContextKVCache()

    @torch.no_grad()
    def append_context(self, cache: ContextKVCache, target_hidden: torch.Tensor) -> None:
        """Append accepted context: target features [N, t, n·H] of the next t positions."""
        n, t, _ = target_hidden.shape
        positions = torch.arange(cache.length, cache.length + t, device=target_hidden.device).expand(n, t)
        new_kv = self.context_kv(self.project_context(target_hidden.to(self.fc.weight.dtype)), positions)
        if not cache.keys:
            cache.keys = [k for k, _ in new_kv]
            cache.values = [v for _, v in new_kv]
        else:
            cache.keys = [torch.cat((old, k), dim=2) for old, (k, _) in zip(cache.keys, new_kv)]
            cache.values = [torch.cat((old, v), dim=2) for old, (_, v) in zip(cache.values, new_kv)]
        cache.length += t

    @torch.no_grad()
    def draft_block_hidden(self, cache: ContextKVCache, bonus_tokens: torch.Tensor, embed_weight: torch.Tensor,
                           block_size: Optional[int] = None) -> torch.Tensor:
        """Backbone hidden states of the next block ``[bonus, MASK × (B−1)]`` at positions T..T+B−1.

        bonus_tokens [N]; embed_weight [V, H] the target's embedding -> draft_hidden [N, B, H].
        ``block_size`` (default: the drafter's) is the verify width, as SGLang's
        ``--speculative-num-draft-tokens`` sets it. The cache is read, not changed.
        """
        n, b = bonus_tokens.shape[0], int(block_size or self.config.block_size)
        block_ids = torch.full((n, b), self.config.mask_token_id, dtype=torch.long, device=bonus_tokens.device)
        block_ids[:, 0] = bonus_tokens
        embeds = F.embedding(block_ids, embed_weight).to(self.fc.weight.dtype)
        positions = torch.arange(cache.length, cache.length + b, device=bonus_tokens.device).expand(n, b)
        return self(embeds, positions, list(zip(cache.keys, cache.values)))
