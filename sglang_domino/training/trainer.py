"""The optimiser step: :func:`forward_blocks` (one backbone forward over every anchored block),
:class:`DominoTrainer` (the objective of :mod:`~sglang_domino.training.loss`, AdamW, warmup + cosine|linear LR,
grad clip, optional bf16 autocast; everything a checkpoint must restore) and the frozen target's embedding and
lm_head it borrows (:class:`FrozenTarget`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sglang_domino.modeling import DominoDrafter
from sglang_domino.training.batching import TrainBatch
from sglang_domino.training.errors import TrainingError
from sglang_domino.training.loss import LossVocab, default_decay_gamma, domino_loss, lambda_schedule
from sglang_domino.training.masks import (
    block_input_ids,
    block_positions,
    block_prefix_ids,
    build_block_mask,
    build_flex_block_mask,
    gather_labels,
    sample_anchors,
    teacher_hidden_for_slots,
)


@dataclass
class FrozenTarget:
    """The target's input embedding and lm_head, frozen (the drafter owns neither)."""

    embed_weight: torch.Tensor  # [V, H] float32
    lm_head_weight: torch.Tensor  # [V, H] float32
    lm_head_bf16: Optional[torch.Tensor] = None

    @classmethod
    def from_model(cls, model: nn.Module, bf16: bool = False) -> "FrozenTarget":
        emb = model.get_input_embeddings().weight
        head = model.get_output_embeddings().weight
        embed_weight = emb.detach().float().clone()
        lm_head = embed_weight if head.data_ptr() == emb.data_ptr() else head.detach().float().clone()
        return cls(embed_weight, lm_head, lm_head.to(torch.bfloat16) if bf16 else None)

    def head_for(self, bf16: bool) -> torch.Tensor:
        return self.lm_head_bf16 if (bf16 and self.lm_head_bf16 is not None) else self.lm_head_weight


def forward_blocks(
    drafter: DominoDrafter,
    embed_weight: torch.Tensor,
    features: torch.Tensor,
    input_ids: torch.Tensor,
    anchors: torch.Tensor,
    keep: torch.Tensor,
    attention: str = "sdpa",
) -> torch.Tensor:
    """One backbone forward over every anchored block -> draft hidden [N, W, B, H].

    features [N, T, n·H] target features; anchors/keep [N, W] from
    :func:`~sglang_domino.training.masks.sample_anchors`. Context keys at or after the last anchor are never
    visible, so the context is cut there before the projections. attention: ``sdpa`` (dense bool mask) or
    ``flex`` (the same predicate as a sparse flex-attention BlockMask).
    """
    cfg, b = drafter.config, drafter.config.block_size
    n, w = anchors.shape
    context_len = int(anchors[keep].max()) if bool(keep.any()) else 0
    feats = features[:, :context_len].to(drafter.fc.weight.dtype)
    ctx = drafter.project_context(feats)
    ctx_pos = torch.arange(context_len, device=feats.device).expand(n, context_len)
    kv = drafter.context_kv(ctx, ctx_pos)
    ids = block_input_ids(input_ids, anchors, b, cfg.mask_token_id)
    embeds = F.embedding(ids, embed_weight).to(drafter.fc.weight.dtype)
    if attention == "flex":
        mask = build_flex_block_mask(anchors, keep, context_len, b)
    else:
        mask = build_block_mask(anchors, keep, context_len, b)
    hidden = drafter(embeds, block_positions(anchors, b), kv, mask)
    return hidden.view(n, w, b, -1)


class DominoTrainer:
    """One optimiser step at a time over :class:`TrainBatch` es; carries everything a checkpoint must restore."""

    def __init__(
        self,
        drafter: DominoDrafter,
        frozen: FrozenTarget,
        *,
        total_steps: int,
        lr: float = 6e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 0,
        lr_scheduler: str = "cosine",
        min_lr_ratio: float = 0.0,
        grad_clip: float = 1.0,
        blocks_per_seq: int = 4,
        gamma: Optional[float] = None,
        lambda0: float = 1.0,
        lambda_decay_ratio: float = 0.5,
        bf16: bool = False,
        freeze_backbone: bool = False,
        seed: int = 0,
        loss_vocab: Optional[LossVocab] = None,
        attention: str = "sdpa",
        distill_weight: float = 0.0,
    ) -> None:
        self.drafter, self.frozen = drafter, frozen
        if not 0.0 <= float(distill_weight) <= 1.0:
            raise TrainingError(f"--distill-weight must be in [0, 1], got {distill_weight}")
        self.distill_weight = float(distill_weight)
        self.attention = attention
        self.loss_vocab = loss_vocab
        self.config = drafter.config
        self.total_steps = int(total_steps)
        self.blocks_per_seq = int(blocks_per_seq)
        if gamma is None:
            self.gamma = default_decay_gamma(self.config.block_size)
        else:  # <= 0: no decay (uniform slot weights), as in SpecForge
            self.gamma = float(gamma) if gamma > 0 else math.inf
        self.lambda0, self.lambda_decay_ratio = float(lambda0), float(lambda_decay_ratio)
        self.grad_clip, self.bf16 = float(grad_clip), bool(bf16)
        self.freeze_backbone = bool(freeze_backbone)
        if freeze_backbone and not drafter.use_head:
            raise TrainingError("--freeze-backbone trains the Domino head only, but this drafter has no head")
        for name, p in drafter.named_parameters():
            p.requires_grad_(not freeze_backbone or name.startswith(("prefix_gru.", "embed_proj.")))
        self.params = [p for p in drafter.parameters() if p.requires_grad]
        try:  # the fused kernel is ~8x faster than the per-tensor loop on CPU
            self.optimizer = torch.optim.AdamW(self.params, lr=lr, betas=betas, weight_decay=weight_decay, fused=True)
        except (RuntimeError, TypeError, ValueError):
            self.optimizer = torch.optim.AdamW(self.params, lr=lr, betas=betas, weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda_fn(lr_scheduler, self.total_steps, warmup_steps, min_lr_ratio)
        )
        self.generator = torch.Generator().manual_seed(int(seed))
        self.step = 0
        self.skipped_batches = 0

    # -- forward
    def lambda_at(self, step: int) -> float:
        return lambda_schedule(step, self.total_steps, self.lambda_decay_ratio, self.lambda0)

    def compute_loss(self, batch: TrainBatch, lam: float) -> Optional[tuple[torch.Tensor, dict]]:
        """Sample blocks, run the backbone once over all of them, return (loss, metrics); None = no valid anchor."""
        cfg, b = self.config, self.config.block_size
        anchors, keep = sample_anchors(batch.loss_mask, batch.lengths, b, self.blocks_per_seq, self.generator)
        if anchors.shape[1] == 0 or not bool(keep.any()):
            return None
        labels, valid = gather_labels(batch.input_ids, batch.loss_mask, batch.lengths, anchors, keep, b,
                                      cfg.shift_label)
        if not bool(valid.any()):
            return None
        teacher = None
        if self.distill_weight > 0:
            if batch.teacher_hidden is None:
                raise TrainingError("--distill-weight needs the target's final hidden states in the batch")
            teacher = teacher_hidden_for_slots(batch.teacher_hidden, anchors, b, cfg.shift_label)
        device_type = batch.features.device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.bf16):
            with torch.no_grad() if self.freeze_backbone else torch.enable_grad():
                hidden = forward_blocks(self.drafter, self.frozen.embed_weight, batch.features, batch.input_ids,
                                        anchors, keep, self.attention)
            prefix = block_prefix_ids(batch.input_ids, anchors, b)
            loss, metrics = domino_loss(
                self.drafter, hidden, labels, valid, prefix, self.frozen.embed_weight,
                self.frozen.head_for(self.bf16), lam=lam, gamma=self.gamma, loss_vocab=self.loss_vocab,
                teacher_hidden=teacher, distill_weight=self.distill_weight,
            )
        return loss, metrics

    @torch.no_grad()
    def validate(self, batches: Sequence[TrainBatch], seed: int = 0) -> dict:
        """Teacher-forced metrics on held-out batches: ``val_``-prefixed means over ``batches``.

        The anchors come from a generator seeded with ``seed`` (the same blocks every time, and the training
        anchor RNG is untouched, so resume stays exact) and the softmaxes span the full vocabulary, as drafting
        does (``--loss-vocab data`` only speeds up training). The losses are cross-entropies with the data's
        tokens, with or without ``--distill-weight``, so runs stay comparable."""
        saved = self.generator, self.loss_vocab, self.drafter.training, self.distill_weight
        self.generator, self.loss_vocab = torch.Generator().manual_seed(int(seed)), None
        self.distill_weight = 0.0
        self.drafter.eval()
        totals: dict[str, float] = {}
        blocks = 0.0
        try:
            for batch in batches:
                out = self.compute_loss(batch, self.lambda_at(self.step))
                if out is None:
                    continue
                metrics = out[1]
                weight = metrics["num_blocks"]
                blocks += weight
                for key in ("loss", "final_loss", "base_loss", "accuracy", "base_accuracy", "accept_len",
                            "base_accept_len", "inv_accept_len", "base_inv_accept_len"):
                    totals[key] = totals.get(key, 0.0) + metrics[key] * weight
        finally:
            self.generator, self.loss_vocab = saved[0], saved[1]
            self.drafter.train(saved[2])
            self.distill_weight = saved[3]
        out = {f"val_{k}": v / max(blocks, 1.0) for k, v in totals.items()} | {"val_blocks": blocks}
        if blocks:  # the τ decoding would see: harmonic mean of tokens per step (see domino_loss)
            out["val_decode_tau"] = 1.0 / out["val_inv_accept_len"]
            out["val_base_decode_tau"] = 1.0 / out["val_base_inv_accept_len"]
        return out

    def train_step(self, batch: TrainBatch) -> Optional[dict]:
        """One optimiser step; returns its metrics, or None (and counts it) when the batch has no valid anchor."""
        lam = self.lambda_at(self.step)
        self.drafter.train()
        out = self.compute_loss(batch, lam)
        if out is None:
            self.skipped_batches += 1
            return None
        loss, metrics = out
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip))
        else:
            grad_norm = float(torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in self.params if p.grad is not None])))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        metrics.update(step=self.step, lr=lr, grad_norm=grad_norm, skipped_batches=self.skipped_batches)
        return metrics

    # -- state
    def state_dict(self) -> dict:
        return {
            "model": self.drafter.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "skipped_batches": self.skipped_batches,
            "anchor_rng": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["config"] != self.config.to_dict():
            raise TrainingError("cannot resume: the checkpoint's drafter config differs from this run's")
        self.drafter.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.skipped_batches = int(state["skipped_batches"])
        self.generator.set_state(state["anchor_rng"])
        torch.set_rng_state(state["torch_rng"])


def resolve_attention(choice: str, device: torch.device) -> str:
    """``auto`` -> flex attention on CUDA (sparse block mask), the SDPA dense mask elsewhere. Both give the same
    hidden states (tested on CPU, forward only: torch's flex attention has no backward pass on CPU)."""
    if choice == "flex" and device.type == "cpu":
        raise TrainingError("--attention flex: torch's flex attention has no backward pass on CPU; use sdpa")
    if choice != "auto":
        return choice
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return "sdpa"
    return "flex" if device.type == "cuda" else "sdpa"


def lr_lambda_fn(kind: str, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> Callable[[int], float]:
    """Linear warmup to 1, then cosine / linear decay to ``min_lr_ratio`` (or constant)."""
    if kind not in ("cosine", "linear", "constant"):
        raise TrainingError(f"--lr-scheduler {kind!r}: expected cosine, linear or constant")

    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if kind == "cosine":
            return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - progress)

    return fn


__all__ = [
    "DominoTrainer",
    "FrozenTarget",
    "forward_blocks",
    "lr_lambda_fn",
    "resolve_attention",
]
