"""The training run behind ``sglang-domino train``: :func:`train` reads the data, builds the drafter, fills the
feature cache, steps the trainer, validates, checkpoints and exports (the stages are described in
:mod:`sglang_domino.training.cli`, whose docstring is the command's ``--help``)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Iterator, Optional

import torch

from sglang_domino.config import DominoConfigError
from sglang_domino.training.batching import BatchStream, Example, TrainBatch, load_examples, pad_batch, usable
from sglang_domino.training.checkpoints import (
    CKPT_FORMAT,
    keep_best,
    latest_checkpoint,
    read_best,
    save_checkpoint,
    trim_metrics,
)
from sglang_domino.training.drafter_build import (
    build_drafter,
    init_output_norm_from_target,
    resolve_mask_token_id,
    text_config,
)
from sglang_domino.training.errors import TrainingError
from sglang_domino.training.features import FeatureCache, TargetFeatureExtractor, progress_bar
from sglang_domino.training.loss import LossVocab
from sglang_domino.training.tokenization import tokenizer_loader
from sglang_domino.training.trainer import DominoTrainer, FrozenTarget, resolve_attention

logger = logging.getLogger("sglang_domino.train")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def train(args: argparse.Namespace) -> dict:
    """Run a training job described by the ``train`` parser's arguments; returns a summary dict."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.cache_only and not args.feature_cache:
        raise TrainingError("--cache-only needs --feature-cache DIR")
    if args.shard_window < 0 or (args.shard_window and not args.feature_cache):
        raise TrainingError(f"--shard-window {args.shard_window}: needs --feature-cache DIR and K >= 0")
    if args.validate_only and (not (args.val_data and args.init_from) or args.resume):
        raise TrainingError("--validate-only needs --val-data FILE and --init-from DRAFTER (the drafter to measure), "
                            "and trains nothing (no --resume)")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"--device {args.device}: CUDA is not available on this machine")
    if args.threads:
        torch.set_num_threads(int(args.threads))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.target is None:
        from sglang_domino.embedded.target import prepare_target

        target_dir = prepare_target()
    else:
        target_dir = Path(args.target)
    from transformers import AutoConfig, AutoModelForCausalLM

    target_cfg = AutoConfig.from_pretrained(str(target_dir))
    text_cfg = text_config(target_cfg)
    mask_token_id = resolve_mask_token_id(args, target_dir, int(text_cfg.vocab_size))
    drafter = build_drafter(args, target_cfg, mask_token_id)
    config = drafter.config
    try:
        config.validate_for_target(num_target_layers=int(text_cfg.num_hidden_layers),
                                   hidden_size=int(text_cfg.hidden_size), vocab_size=int(text_cfg.vocab_size))
    except DominoConfigError as exc:
        raise TrainingError(f"the drafter does not fit the target: {exc}") from exc
    try:
        config.validate_for_target(num_target_layers=int(text_cfg.num_hidden_layers),
                                   hidden_size=int(text_cfg.hidden_size), vocab_size=int(text_cfg.vocab_size),
                                   serving=True)
    except DominoConfigError as exc:
        logger.warning("warning: %s (SGLang serving will refuse this drafter)", exc)

    if args.bf16 or args.target_dtype == "bfloat16":
        cap = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else ""
        if not torch.cuda.is_available() and "AVX512" not in cap.upper():
            logger.warning("warning: bf16 requested on a CPU without bf16 matmul units (%s): expect it to be tens "
                           "of times slower than float32 (measured 93 s vs 3.6 s per step on an AVX2 machine)", cap)

    examples_all = load_examples(args.data, tokenizer_loader(target_dir), args.max_len, args.limit)
    examples = [e for e in examples_all if usable(e, config.block_size)]
    dropped = len(examples_all) - len(examples)
    if not examples:
        raise TrainingError(f"no sequence of --data has a valid anchor for block_size={config.block_size} "
                            "(two consecutive loss-masked tokens and a whole block inside the sequence)")
    num_tokens = sum(len(e) for e in examples)
    logger.info("data: %d sequences (%d dropped: no valid anchor), %d tokens, %d supervised",
                len(examples), dropped, num_tokens, sum(int(e.loss_mask.sum()) for e in examples))

    val_examples: list[Example] = []
    if args.val_data:
        val_examples = [e for e in load_examples(args.val_data, tokenizer_loader(target_dir), args.max_len)
                        if usable(e, config.block_size)]
        train_keys = {FeatureCache.sequence_key(e.input_ids) for e in examples}
        overlap = sum(FeatureCache.sequence_key(e.input_ids) in train_keys for e in val_examples)
        if overlap:
            raise TrainingError(f"--val-data shares {overlap} sequences with --data; hold them out of --data")
        if not val_examples:
            raise TrainingError("--val-data has no sequence with a valid anchor")
        logger.info("validation: %d sequences, every %d steps", len(val_examples), args.val_every)

    loss_vocab = None
    if args.loss_vocab == "data":
        loss_vocab = LossVocab.from_token_ids(torch.cat([e.input_ids for e in examples]), int(text_cfg.vocab_size))
        logger.info("loss vocabulary: the %d distinct tokens of the training sequences (of %d)", len(loss_vocab),
                    int(text_cfg.vocab_size))

    target_dtype = _DTYPES[args.target_dtype]
    target = AutoModelForCausalLM.from_pretrained(str(target_dir), dtype=target_dtype).eval().to(device)
    for p in target.parameters():
        p.requires_grad_(False)
    frozen = FrozenTarget.from_model(target, bf16=args.bf16)
    if not args.init_from and args.norm_from_target:
        init_output_norm_from_target(drafter, target)
    drafter.to(device)
    distill = args.distill_weight > 0
    # A cache built for distillation serves every run; a new sequence added to it must carry the teacher too.
    teacher_columns = distill or bool(args.feature_cache and FeatureCache.stores_teacher_hidden(args.feature_cache))
    extractor = TargetFeatureExtractor(target, config.target_layer_ids, with_teacher=teacher_columns)
    cache: Optional[FeatureCache] = None
    if args.feature_cache:
        fp = FeatureCache.fingerprint(target_dir, config.target_layer_ids, args.feature_dtype, args.target_dtype)
        t0 = time.time()
        cache = FeatureCache.open(args.feature_cache, examples + val_examples, fp, _DTYPES[args.feature_dtype],
                                  lambda: extractor,
                                  batch_tokens=args.feature_batch_tokens, progress=not args.no_progress,
                                  with_teacher=teacher_columns)
        logger.info("feature cache %s ready (%.1f s)", args.feature_cache, time.time() - t0)
        if args.cache_only:
            return {"feature_cache": str(args.feature_cache), "num_sequences": len(examples)}
        # Only the frozen embedding / lm_head copies are needed from here on.
        extractor, target = None, None

    steps_per_epoch = math.ceil(len(examples) / args.batch_size)
    total_steps = args.max_steps or max(1, int(args.epochs * steps_per_epoch))
    warmup = args.warmup_steps if args.warmup_steps is not None else int(args.warmup_ratio * total_steps)
    lambda0 = args.lambda0 if args.lambda0 is not None else (0.0 if args.freeze_backbone else 1.0)
    trainer = DominoTrainer(
        drafter, frozen, total_steps=total_steps, lr=args.lr, weight_decay=args.weight_decay,
        warmup_steps=warmup, lr_scheduler=args.lr_scheduler, min_lr_ratio=args.min_lr_ratio,
        grad_clip=args.grad_clip, blocks_per_seq=args.blocks_per_seq, gamma=args.loss_decay_gamma,
        lambda0=lambda0, lambda_decay_ratio=args.lambda_decay_ratio, bf16=args.bf16,
        freeze_backbone=args.freeze_backbone, seed=args.seed, loss_vocab=loss_vocab,
        attention=resolve_attention(args.attention, device), distill_weight=args.distill_weight,
    )
    groups = cache.shard_names(len(examples)) if cache is not None and args.shard_window > 0 else None
    if cache is not None and groups is None:
        cache_bytes = sum((Path(args.feature_cache) / name).stat().st_size for name in set(cache.shard_names(len(examples))))
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if cache_bytes > 0.6 * ram:
            logger.warning("the training features take %.1f GB of this machine's %.1f GB of memory: random order will "
                           "wait on the disk; --shard-window 16 reads them a few shards at a time",
                           cache_bytes / 1e9, ram / 1e9)
    stream = BatchStream(len(examples), args.batch_size, args.seed, groups=groups, window=args.shard_window)
    n_params = sum(p.numel() for p in drafter.parameters())
    n_train = sum(p.numel() for p in trainer.params)
    logger.info("drafter: %.2f M params (%.2f M trainable), head=%s, shift_label=%s, B=%d, layers=%s, steps=%d",
                n_params / 1e6, n_train / 1e6, config.has_head, config.shift_label, config.block_size,
                config.target_layer_ids, total_steps)
    run_info = {"total_steps": total_steps, "num_examples": len(examples), "args": _jsonable(vars(args))}

    n_feat = len(config.target_layer_ids) * int(text_cfg.hidden_size)
    n_columns = n_feat + (int(text_cfg.hidden_size) if distill else 0)  # a teacher cache's extra H only if used

    def features_for(idx: list[int], ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if cache is not None:
            t = ids.shape[1]
            feats = torch.zeros(len(idx), t, n_columns, dtype=torch.float32)
            for row, i in enumerate(idx):
                f = cache.get(i)
                feats[row, : f.shape[0]] = f[:, :n_columns].float()
            return feats
        att = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
        feats = extractor(ids, att).float().cpu()
        return feats * att[:, :, None]

    def batch_of(idx: list[int]) -> TrainBatch:
        """Sequences ``idx`` of ``examples + val_examples`` (the feature cache's numbering) on the device."""
        ids, lmask, lengths = pad_batch([examples[i] if i < len(examples) else val_examples[i - len(examples)]
                                         for i in idx])
        columns = features_for(idx, ids, lengths).to(device)
        teacher = columns[..., n_feat:] if distill else None  # the target's final hidden state
        return TrainBatch(ids.to(device), lmask.to(device), lengths.to(device), columns[..., :n_feat], teacher)

    def val_batches() -> Iterator[TrainBatch]:
        offset = len(examples)
        for lo in range(0, len(val_examples), args.batch_size):
            yield batch_of(list(range(offset + lo, offset + min(lo + args.batch_size, len(val_examples)))))

    if args.validate_only:
        result = {"drafter": str(args.init_from), **trainer.validate(list(val_batches()), seed=args.seed)}
        (out / "validation.json").write_text(json.dumps(result, indent=2) + "\n")
        logger.info("validation of %s: %s", args.init_from, json.dumps(result))
        return result

    ckpt_dir = out / "ckpt"
    metrics_path = out / "metrics.jsonl"
    if args.resume:
        ckpt = latest_checkpoint(ckpt_dir) if args.resume == "auto" else Path(args.resume)
        if ckpt is None or not ckpt.is_file():
            raise TrainingError(f"--resume: no checkpoint in {ckpt_dir}" if ckpt is None else f"--resume {ckpt}: missing")
        state = torch.load(ckpt, weights_only=True)
        if state.get("format") != CKPT_FORMAT:
            raise TrainingError(f"{ckpt}: unknown checkpoint format {state.get('format')!r}")
        if state["run"]["total_steps"] != total_steps:
            raise TrainingError(f"cannot resume: {ckpt} was written by a run of {state['run']['total_steps']} steps, "
                                f"this run has {total_steps} (λ and the LR schedule depend on it)")
        trainer.load_state_dict(state["trainer"])
        stream.load_state_dict(state["stream"])
        trim_metrics(metrics_path, trainer.step)
        logger.info("resumed from %s at step %d", ckpt, trainer.step)
    elif metrics_path.exists():
        metrics_path.unlink()

    bar = progress_bar(total=total_steps, desc="train", unit="step", enabled=not args.no_progress, initial=trainer.step)
    last: dict = {}
    best = read_best(out) if args.resume else None
    if val_examples and trainer.step == 0:  # where the run starts (e.g. the --init-from drafter)
        m0 = {"step": 0, **trainer.validate(list(val_batches()), seed=args.seed)}
        with metrics_path.open("a") as mfh:
            mfh.write(json.dumps(m0) + "\n")
        best = keep_best(out, drafter, 0, m0, None, _DTYPES[args.export_dtype])
    consecutive_skips = 0
    t_step = time.time()
    with metrics_path.open("a") as mfh:
        while trainer.step < total_steps:
            m = trainer.train_step(batch_of(stream.next_indices()))
            if m is None:
                consecutive_skips += 1
                if consecutive_skips > 10 * steps_per_epoch + 10:
                    raise TrainingError("no batch with a valid anchor in many attempts")
                continue
            consecutive_skips = 0
            now = time.time()
            m.update(epoch=stream.epoch, step_time=round(now - t_step, 4))
            if val_examples and (trainer.step % args.val_every == 0 or trainer.step == total_steps):
                m.update(trainer.validate(list(val_batches()), seed=args.seed))
                bar.write(f"step {trainer.step}: validation decode τ {m['val_decode_tau']:.3f} "
                          f"(backbone {m['val_base_decode_tau']:.3f}), accept_len {m['val_accept_len']:.3f}, "
                          f"loss {m['val_final_loss']:.3f}")
                best = keep_best(out, drafter, trainer.step, m, best, _DTYPES[args.export_dtype])
            t_step = time.time()
            last = m
            if trainer.step % args.log_every == 0 or trainer.step == total_steps:
                mfh.write(json.dumps(m) + "\n")
                mfh.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['accuracy']:.3f}", tau=f"{m['accept_len']:.2f}",
                            lam=f"{m['lambda']:.2f}")
            if args.save_every and (trainer.step % args.save_every == 0 or trainer.step == total_steps):
                save_checkpoint(ckpt_dir, trainer, stream, args.keep_checkpoints, run_info)
            if args.stop_at_step and trainer.step >= args.stop_at_step and trainer.step < total_steps:
                if not args.save_every or trainer.step % args.save_every:
                    save_checkpoint(ckpt_dir, trainer, stream, args.keep_checkpoints, run_info)
                bar.close()
                logger.info("stopped at step %d (--stop-at-step); continue with --resume", trainer.step)
                return {"stopped_at": trainer.step, "last": last, "skipped_batches": trainer.skipped_batches}
    bar.close()

    from sglang_domino.checkpoint import save_drafter

    drafter.eval()
    export = save_drafter(drafter, out / "drafter", dtype=_DTYPES[args.export_dtype])
    summary = {"drafter": str(export), "steps": trainer.step, "skipped_batches": trainer.skipped_batches,
               "dropped_sequences": dropped, "num_sequences": len(examples), "last": last,
               "best": best, "config": config.to_dict()}
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    logger.info("exported %s", export)
    return summary


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if callable(v):
            continue
        out[k] = v if isinstance(v, (int, float, str, bool, type(None), list)) else str(v)
    return out


__all__ = [
    "train",
]
