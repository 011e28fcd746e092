"""The ``sglang-domino`` console script: prepare, serve, eval, train, bench.

Each subcommand imports its machinery lazily, so ``sglang-domino --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_prepare(args: argparse.Namespace) -> int:
    from sglang_domino.embedded import prepare_embedded_pair

    pair = prepare_embedded_pair()
    print(json.dumps({"target": str(pair.target), "draft": str(pair.draft)}))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from sglang_domino.evaluate import evaluate
    from sglang_domino.settings import environment_settings

    env = environment_settings()  # the server's switches are the defaults of their offline twins
    target, draft = args.target, args.draft
    if target is None or draft is None:
        from sglang_domino.embedded import prepare_embedded_pair

        pair = prepare_embedded_pair()
        target, draft = target or pair.target, draft or pair.draft
    result = evaluate(target, draft, args.prompts, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                      dtype=getattr(torch, args.dtype), limit=args.limit, workers=args.workers,
                      rows_path=args.json + ".rows.jsonl", block_size=args.block_size,
                      draft_logits_dtype=args.draft_logits_dtype or env.draft_logits_dtype,
                      draft_temperature_scale=(env.draft_temperature_scale if args.draft_temperature_scale is None
                                               else args.draft_temperature_scale))
    with open(args.json, "w") as fh:
        json.dump(result, fh, indent=2)
    summary = {k: result[k] for k in ("num_prompts", "tau_domino", "tau_backbone", "tau_ratio", "tau_domino_point_mass",
                                      "tau_ratio_sampled_vs_point_mass") if k in result}
    if "lossless" in result:
        summary["lossless"] = result["lossless"]
    print(json.dumps(summary))
    return 0 if result.get("lossless", True) else 1


def _cmd_bench(args: argparse.Namespace) -> int:
    from sglang_domino.benchmarks import serving

    serving.run(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sglang-domino", description="Domino speculative decoding for SGLang")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="convert the embedded target and locate the shipped drafter; prints JSON")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("eval", help="acceptance (tau) with and without the Domino head on the offline loop")
    p.add_argument("--prompts", required=True, help='JSONL of {"prompt": ...} or {"messages": [...]}')
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--target", default=None, help="HF target dir (default: the embedded target)")
    p.add_argument("--draft", default=None, help="drafter checkpoint dir (default: the embedded drafter)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="float32 keeps greedy comparisons free of bf16 near-ties")
    p.add_argument("--limit", type=int, default=None, help="first N prompts only")
    p.add_argument("--workers", type=int, default=1, help="processes (one thread each) sharing the prompts")
    p.add_argument("--block-size", type=int, default=None,
                   help="verify width: bonus + drafts per step (default: the drafter's block_size), as SGLang's "
                        "--speculative-num-draft-tokens")
    p.add_argument("--draft-logits-dtype", default=None, choices=["auto", "float32", "bfloat16"],
                   help="precision of the drafting lm_head GEMM, as the server's $SGLANG_DOMINO_DRAFT_LOGITS_DTYPE "
                        "(default: that, else auto: bf16 for a float32 target where the device multiplies bf16 "
                        "natively)")
    p.add_argument("--draft-temperature-scale", type=float, default=None,
                   help="with --temperature T > 0, drafts are drawn at T × this scale and verified with their own "
                        "probabilities (lossless for any value > 0), as the server's "
                        "$SGLANG_DOMINO_DRAFT_TEMPERATURE_SCALE (default: that, else 0.6)")
    p.add_argument("--json", required=True,
                   help="output JSON path (rows also go to JSON.rows.jsonl as they finish; a rerun resumes)")
    p.set_defaults(func=_cmd_eval)

    # Training and serving register their own parsers (imported here, so their heavy imports stay lazy inside).
    from sglang_domino.server.launch import add_serve_parser
    from sglang_domino.training.cli import add_train_parser

    add_train_parser(sub)
    add_serve_parser(sub)
    from sglang_domino.benchmarks.serving import add_arguments as add_bench_arguments

    p = sub.add_parser("bench", help="serving benchmark: plain vs Domino vs backbone-only at several concurrencies")
    add_bench_arguments(p)
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    from sglang_domino.settings import SettingsError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SettingsError as exc:  # a bad SGLANG_DOMINO_* variable: one line, no traceback
        print(f"sglang-domino: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
