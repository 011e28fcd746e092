"""Train a Domino drafter (or a plain DFlash backbone) against a frozen Hugging Face target, on CPU or GPU.

    sglang-domino train --target PATH --data FILE.jsonl [FILE.jsonl.gz ...] --out DIR [--feature-cache DIR] [...]

Pipeline:

1. Data: JSONL lines ``{"messages": [...]}`` (tokenised with the target's tokenizer by
   :func:`sglang_domino.training.tokenization.tokenize_conversation`; loss mask = assistant tokens) or pre-tokenised
   ``{"input_ids": [...], "loss_mask": [...]}``. Sequences without a single valid anchor are dropped (counted).
2. Target features: the target's hidden states at ``target_layer_ids`` (HF ``hidden_states[id + 1]``, exactly
   what :func:`sglang_domino.offline.target_features` feeds the drafter at inference). Only the layers up to
   ``max(id) + 1`` run and the target's lm_head never does. ``--feature-cache DIR`` computes them once per
   sequence into memory-mapped fp16/bf16 shards keyed by the sequence's tokens (the target forward otherwise
   dominates every step); a cache reused with more data runs the target on the new sequences only.
3. Step: sample ``--blocks-per-seq`` anchors per sequence, one backbone forward for all blocks (dense SDPA
   mask on CPU, flex-attention block mask on CUDA, :mod:`~sglang_domino.training.masks`), the objective of :mod:`~sglang_domino.training.loss`,
   AdamW + warmup/cosine|linear LR + grad clip, optional bf16 autocast.
4. Checkpoints every ``--save-every`` steps in ``OUT/ckpt/`` (model, optimizer, scheduler, RNG states,
   step, data position): ``--resume`` continues exactly (the next step's loss equals an uninterrupted run's).
   Metrics: ``OUT/metrics.jsonl`` (one line per step) and a tqdm bar. Export: ``OUT/drafter`` in the
   published format (:func:`sglang_domino.checkpoint.save_drafter`).

The target is never updated; the drafter shares its (frozen) input embedding and lm_head.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from sglang_domino.training.errors import TrainingError


def _layer_ids(text: str) -> list[int]:
    return [int(x) for x in text.replace(",", " ").split()]


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train`` on the ``sglang-domino`` subcommands."""
    p = subparsers.add_parser("train", help="train a Domino drafter (or a plain DFlash backbone) for a target",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--target", default=None, help="HF target dir (default: the embedded SmolLM2-135M-Instruct)")
    io.add_argument("--data", required=True, nargs="+", metavar="FILE",
                    help='JSONL (or .jsonl.gz) files of {"messages": [...]} conversations or pre-tokenised '
                         '{"input_ids", "loss_mask"} rows, e.g. data/distilled/*.jsonl.gz')
    io.add_argument("--val-data", nargs="+", default=None, metavar="FILE",
                    help="held-out conversations (same formats as --data, none of them in --data): teacher-forced "
                         "val_accept_len / val_base_accept_len / val losses in metrics.jsonl every --val-every steps")
    io.add_argument("--val-every", type=int, default=100, help="steps between validations (and at the end)")
    io.add_argument("--validate-only", action="store_true",
                    help="measure the --init-from drafter on --val-data (OUT/validation.json) and exit; no training")
    io.add_argument("--out", required=True, help="output dir: ckpt/, metrics.jsonl, drafter/ (published format)")
    io.add_argument("--max-len", type=int, default=1024, help="tokens per sequence (truncated)")
    io.add_argument("--limit", type=int, default=None, help="use the first N rows of --data only")
    io.add_argument("--feature-cache", default=None, metavar="DIR",
                    help="compute the target features once per sequence into DIR (fp16/bf16 shards, memory-mapped, "
                         "keyed by the tokens: reusing DIR with more data computes the new sequences only)")
    io.add_argument("--cache-only", action="store_true",
                    help="fill --feature-cache and exit (e.g. while more data is still being distilled)")
    io.add_argument("--feature-dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    io.add_argument("--feature-batch-tokens", type=int, default=4096, help="tokens per target forward when caching")
    io.add_argument("--shard-window", type=int, default=0, metavar="K",
                    help="with --feature-cache: order each epoch K random cache shards at a time (0 = fully random); "
                         "for a cache larger than memory, where random order waits on the disk (e.g. 16)")
    io.add_argument("--target-dtype", default="float32", choices=["float32", "bfloat16"],
                    help="dtype of the target forward that produces the features (bf16 only pays on CPUs with "
                         "bf16 units or on GPU; without AVX512-BF16/AMX it is ~40x slower than fp32)")
    io.add_argument("--export-dtype", default="bfloat16", choices=["bfloat16", "float32"])

    m = p.add_argument_group("drafter shape (ignored with --init-from, which brings its own)")
    m.add_argument("--num-layers", type=int, default=2, help="draft decoder layers")
    m.add_argument("--block-size", type=int, default=16)
    m.add_argument("--target-layer-ids", type=_layer_ids, default=None,
                   help="comma-separated target layers (default: DFlash's round(1 + i(T-4)/(L-1)))")
    m.add_argument("--intermediate-size", type=int, default=None, help="draft MLP width (default: the target's)")
    m.add_argument("--no-head", action="store_true", help="train a plain DFlash backbone (projector_type None)")
    m.add_argument("--gru-hidden-dim", type=int, default=None, help="Domino GRU width (default: hidden size)")
    m.add_argument("--emb-dim", type=int, default=256, help="rank of the Domino correction (embed_proj)")
    m.add_argument("--shift-label", action=argparse.BooleanOptionalAction, default=False,
                   help="slot k predicts x[a+k+1] (default: off, DFlash's slot k predicts x[a+k])")
    m.add_argument("--pure-draft-prefix-len", type=int, default=1,
                   help="leading proposal slots left uncorrected (1 = public checkpoints, upstream SGLang)")
    m.add_argument("--mask-token-id", type=int, default=None,
                   help="MASK id (default: the prepared target's record / tokenizer mask token / embedded default)")
    m.add_argument("--init-from", default=None, metavar="CKPT", help="start from a published-format drafter")
    m.add_argument("--norm-from-target", action=argparse.BooleanOptionalAction, default=True,
                   help="a fresh drafter's final norm starts at the target's final-norm gain")
    m.add_argument("--freeze-backbone", action="store_true",
                   help="train only the Domino head (prefix_gru, embed_proj) on a frozen backbone")

    o = p.add_argument_group("optimisation")
    o.add_argument("--max-steps", type=int, default=None, help="optimiser steps (default: --epochs over the data)")
    o.add_argument("--epochs", type=float, default=1.0)
    o.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    o.add_argument("--blocks-per-seq", type=int, default=4, help="anchored blocks per sequence per step")
    o.add_argument("--lr", type=float, default=6e-4)
    o.add_argument("--weight-decay", type=float, default=0.0)
    o.add_argument("--lr-scheduler", default="cosine", choices=["cosine", "linear", "constant"])
    o.add_argument("--warmup-ratio", type=float, default=0.04)
    o.add_argument("--warmup-steps", type=int, default=None, help="overrides --warmup-ratio")
    o.add_argument("--min-lr-ratio", type=float, default=0.0)
    o.add_argument("--grad-clip", type=float, default=1.0, help="max grad norm (0 = off)")
    o.add_argument("--loss-decay-gamma", type=float, default=None,
                   help="per-slot weight exp(-(k-offset)/gamma) (default: 7 for B=16, 5 for 10, 4 for 8, "
                        "interpolated otherwise; <= 0: uniform weights). The defaults suit drafters that accept "
                        "~5+ tokens; one that accepts ~2 gained with 2 (the embedded drafter v7)")
    o.add_argument("--lambda0", type=float, default=None,
                   help="initial base-loss weight (default 1; 0 with --freeze-backbone, where the base term is constant)")
    o.add_argument("--lambda-decay-ratio", type=float, default=0.5, help="λ reaches 0 at this fraction of training")
    o.add_argument("--bf16", action="store_true",
                   help="bf16 autocast, fp32 master weights (a loss on CPUs without bf16 matmul units)")
    o.add_argument("--loss-vocab", choices=["full", "data"], default="full",
                   help="softmax over the full vocabulary, or over the tokens that occur in the training sequences "
                        "(several times cheaper on CPU; the exported drafter still drafts over the full vocabulary)")
    o.add_argument("--distill-weight", type=float, default=0.0, metavar="ALPHA",
                   help="soft-label distillation: each slot's target is (1-ALPHA)·one-hot(data token) + "
                        "ALPHA·softmax(target logits at that position), the target's whole next-token distribution "
                        "rather than its argmax only (the feature cache then also stores the target's final hidden "
                        "state; a cache built without it cannot serve this); validation losses stay hard CE")
    o.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu; CUDA is untested here)")
    o.add_argument("--attention", choices=["auto", "sdpa", "flex"], default="auto",
                   help="block-mask attention: flex (sparse BlockMask) or sdpa (dense mask); auto = flex on CUDA")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")

    r = p.add_argument_group("checkpoints and logging")
    r.add_argument("--save-every", type=int, default=200, help="checkpoint every N steps into OUT/ckpt (0 = off)")
    r.add_argument("--keep-checkpoints", type=int, default=2, help="keep the newest N checkpoints (0 = all)")
    r.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from the newest OUT/ckpt checkpoint (or the given file) exactly")
    r.add_argument("--stop-at-step", type=int, default=None, help="stop (with a checkpoint) after this step")
    r.add_argument("--log-every", type=int, default=1, help="metrics.jsonl line every N steps")
    r.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.set_defaults(func=_cmd_train)
    return p


def _cmd_train(args: argparse.Namespace) -> int:
    from sglang_domino.training.pipeline import train  # torch: only when a run starts, not for --help

    try:
        summary = train(args)
    except TrainingError as exc:
        print(f"sglang-domino train: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: summary[k] for k in ("drafter", "steps", "stopped_at", "feature_cache", "num_sequences")
                      if k in summary}))
    return 0


def parse_train_args(argv: Sequence[str]) -> argparse.Namespace:
    """The ``train`` arguments parsed standalone (tests, scripts)."""
    parser = argparse.ArgumentParser(prog="sglang-domino")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    return parser.parse_args(["train", *argv])


__all__ = [
    "add_train_parser",
    "parse_train_args",
]
