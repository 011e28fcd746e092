"""Cross-check ``benchmarks/serving.py`` with SGLang's own client, ``python -m sglang.bench_serving``.

Writes the held-out prompts in the format of bench_serving's ``custom`` dataset (one
``{"conversations": [{"content": user}, {"content": ""}]}`` line each; the output length is fixed by
``--sharegpt-output-len``) and runs bench_serving against a running server (``--base-url``): the
OpenAI-compatible completions backend (``sglang-oai``) with chat-templated prompts, greedy,
``--max-concurrency`` requests at a time. Its report (output tok/s, TTFT, ITL, and the server's accept length)
goes to stdout and ``--output-file``.

    sglang-domino serve --port 30000 &      # and/or --no-speculation on another port
    python benchmarks/bench_serving_crosscheck.py --base-url http://127.0.0.1:30000 --max-concurrency 1 \\
        --num-prompts 8 --output-len 128 --output-file benchmarks/results/bench_serving_domino_c1.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def write_custom_dataset(prompts_path: Path, out_path: Path) -> int:
    """Held-out ``{"messages": [user]}`` / ``{"prompt": ...}`` lines -> bench_serving ``custom`` lines."""
    from sglang_domino.evaluate import read_prompts

    n = 0
    with out_path.open("w", encoding="utf-8") as fh:
        for item in read_prompts(prompts_path):
            user = item["messages"][0]["content"] if "messages" in item else item["prompt"]
            fh.write(json.dumps({"conversations": [{"content": user}, {"content": ""}]}, ensure_ascii=False) + "\n")
            n += 1
    return n


def command(args: argparse.Namespace, dataset: Path, target: str) -> list[str]:
    cmd = [sys.executable, "-m", "sglang.bench_serving", "--backend", "sglang-oai", "--base-url", args.base_url,
           "--dataset-name", "custom", "--dataset-path", str(dataset), "--apply-chat-template",
           "--sharegpt-output-len", str(args.output_len), "--num-prompts", str(args.num_prompts),
           "--max-concurrency", str(args.max_concurrency), "--tokenizer", target, "--model", target,
           "--request-rate", "inf", "--seed", "0", "--disable-tqdm"]
    if args.output_file:
        cmd += ["--output-file", args.output_file]
    return cmd + ["--extra-request-body", json.dumps({"temperature": 0})]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", required=True)
    p.add_argument("--prompts", default=None, help="JSONL prompts (default: the held-out evaluation prompts)")
    p.add_argument("--target", default=None, help="tokenizer / model dir (default: the embedded target)")
    p.add_argument("--num-prompts", type=int, default=8)
    p.add_argument("--max-concurrency", type=int, default=1)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--output-file", default=None)
    p.add_argument("--dataset-out", default="benchmarks/results/cache/heldout_bench_serving.jsonl")
    p.add_argument("--print-command", action="store_true", help="print the bench_serving command only")
    args = p.parse_args(argv)

    from sglang_domino.embedded import HELDOUT_PROMPTS

    if args.target is None:
        from sglang_domino.embedded.target import prepare_target

        args.target = str(prepare_target())
    dataset = Path(args.dataset_out)
    dataset.parent.mkdir(parents=True, exist_ok=True)
    write_custom_dataset(Path(args.prompts or HELDOUT_PROMPTS), dataset)
    cmd = command(args, dataset, args.target)
    print(" ".join(cmd), flush=True)
    if args.print_command:
        return 0
    return subprocess.call(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})


if __name__ == "__main__":
    sys.exit(main())
