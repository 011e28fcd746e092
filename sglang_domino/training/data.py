"""Training data for the drafter: offline prompt sources, chat tokenisation with an assistant-only loss mask,
and self-distillation (the target answers the prompts itself, greedily).

This module is the command line; the work is done by :mod:`~sglang_domino.training.sources` (prompt sources),
:mod:`~sglang_domino.training.corpus` (held-out split, ``train.jsonl``), :mod:`~sglang_domino.training.distill`
(self-distillation, ``pending``, ``pack``), :mod:`~sglang_domino.training.tokenization` (chat tokenisation and
its loss mask) and :mod:`~sglang_domino.training.jsonl` (file I/O).

Command line (``python -m sglang_domino.training.data``):
  ``build --out DIR``        write DIR/train.jsonl, DIR/heldout.jsonl, DIR/stats.json
  ``heldout --write PATH``   select the held-out prompts anew (how the shipped file was made)
  ``pending --prompts P --exclude PARTS --out O``   the prompts no part answers yet (``--kinds`` to pick)
  ``distill --target DIR --prompts P --out O``   self-distil (resumable)
  ``pack OUTPUTS --out PART --exclude PARTS``   gzip answers into a shippable part
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

from sglang_domino.training.corpus import build_prompt_corpus, select_heldout
from sglang_domino.training.distill import pack_conversations, pending_prompts, self_distill
from sglang_domino.training.jsonl import write_jsonl
from sglang_domino.training.sources import collect_prompts


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m sglang_domino.training.data {build,heldout,pending,distill,pack}``."""
    ap = argparse.ArgumentParser(prog="python -m sglang_domino.training.data", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("build", help="write train.jsonl / heldout.jsonl / stats.json")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("heldout", help="select held-out prompts anew from the installed sources")
    p.add_argument("--write", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("distill", help="self-distil: the target answers the prompts (resumable)")
    p.add_argument("--target", type=Path, default=None, help="HF target dir (default: the embedded target)")
    p.add_argument("--prompts", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                   help="compute dtype; on CPUs without AVX512-BF16 float32 is ~3x faster per core")
    p.add_argument("--server", default=None, metavar="URL",
                   help="decode with a running SGLang server of the same target (e.g. `sglang-domino serve "
                        "--no-speculation --dtype float32`); --batch-size requests in flight")
    p.add_argument("--feature-cache", type=Path, default=None, metavar="DIR",
                   help="also store each conversation's target features into DIR, a `train --feature-cache` "
                        "directory (in-process decoder only; train with --target-dtype and --feature-dtype = --dtype)")
    p.add_argument("--feature-layers", default="2,15,27",
                   help="target layers of the features (the drafter's target_layer_ids; default: the embedded drafter's)")
    p.add_argument("--feature-max-len", type=int, default=640, help="the --max-len of the training run")
    p = sub.add_parser("pending", help="the prompts of a train.jsonl that no shipped part answers yet")
    p.add_argument("--prompts", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--exclude", type=Path, nargs="*", default=[], help="parts already answered (shipped or not)")
    p.add_argument("--kinds", default=None, help="comma-separated kinds to keep (default: all)")
    p = sub.add_parser("pack", help="gzip distillation outputs into a shippable part (dedup, optional validation split)")
    p.add_argument("inputs", type=Path, nargs="+")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--exclude", type=Path, nargs="*", default=[], help="parts already shipped (their prompts are skipped)")
    p.add_argument("--val-out", type=Path, default=None)
    p.add_argument("--val-every", type=int, default=0, help="every N-th conversation goes to --val-out")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    if args.cmd == "pending":
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] if args.kinds else None
        print(json.dumps(pending_prompts(args.prompts, args.out, exclude=args.exclude, kinds=kinds)))
    elif args.cmd == "pack":
        print(json.dumps(pack_conversations(args.inputs, args.out, exclude=args.exclude, val_out=args.val_out,
                                            val_every=args.val_every)))
    elif args.cmd == "build":
        train, held = build_prompt_corpus(args.out, args.seed)
        print((args.out / "stats.json").read_text())
    elif args.cmd == "heldout":
        chosen = select_heldout(collect_prompts(args.seed), args.seed)
        n = write_jsonl(args.write, (p.record() for p in chosen))
        print(f"wrote {n} held-out prompts to {args.write}: {dict(Counter(p.kind for p in chosen))}")
    else:
        target = args.target
        if target is None:
            from sglang_domino.embedded.target import prepare_target

            target = prepare_target()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        summary = self_distill(target, args.prompts, args.out, args.max_new_tokens, args.batch_size,
                               limit=args.limit, num_threads=args.threads or None, dtype=args.dtype,
                               server_url=args.server, feature_cache=args.feature_cache,
                               feature_layers=[int(x) for x in args.feature_layers.split(",") if x.strip()],
                               feature_max_len=args.feature_max_len)
        print(json.dumps(summary))
    return 0


__all__ = ["main"]


if __name__ == "__main__":
    sys.exit(main())
