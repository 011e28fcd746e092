"""Where a speculative round spends its time on this machine: draft backbone forward, draft logits (base
projection + Domino correction + selection), target verify forward, the accept rule, context bookkeeping -- and,
from a real SGLang server at concurrency 1, what is left for the scheduler and everything around the model.

Offline part: the reference loop (:func:`sglang_domino.offline.speculative_generate`, HF target, batch 1) with
per-phase timers, for Domino and for the same drafter without its head; plus the target's plain decode cost per
token. Server part (skip with ``--no-server``): one Domino server (``sglang-domino serve``) answers the same
prompts one at a time; milliseconds per verify step = median time per output token after the first × τ. The
"scheduler and framework" row is that server step time minus the offline model phases -- an estimate: SGLang's
target forward is its own (paged attention, torch_native backend), not HF's.

    python benchmarks/round_profile.py --num-prompts 4 --max-new-tokens 96 --block-size 4 --server-args "--dtype float32" \
        --json benchmarks/results/round_profile.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from sglang_domino.benchmarks.loadgen import run_level

from sglang_domino.settings import MAX_SPECULATIVE_BATCH_ENV, environment_settings
from sglang_domino.rollout import draft_logits_dtype
from sglang_domino.benchmarks.serving import Server, load_payloads

PHASES = ("draft_backbone", "draft_logits", "target_verify", "accept", "context_append")


def offline_profile(target_dir: Path, draft_dir: Path, prompts: Path, num: int, max_new_tokens: int,
                    threads: int, block_size: int | None = None) -> dict[str, Any]:
    """Per-phase seconds per round for Domino and backbone-only, and plain decode seconds per token."""
    from sglang_domino import load_drafter
    from sglang_domino.evaluate import encode_prompt, eos_token_ids, load_target, read_prompts
    from sglang_domino.offline import plain_generate, speculative_generate

    torch.set_num_threads(threads)
    target, tokenizer = load_target(target_dir, torch.float32)
    drafter = load_drafter(draft_dir, dtype=torch.float32)
    eos = eos_token_ids(tokenizer, target)
    items = read_prompts(prompts)[:num]
    out: dict[str, Any] = {}
    for name, use_head in (("domino", True), ("backbone", False)):
        times: dict[str, float] = {}
        rounds = tokens = 0
        for item in tqdm(items, desc=f"offline {name}", unit="prompt"):
            ids = encode_prompt(tokenizer, item)
            res = speculative_generate(target, drafter, ids, max_new_tokens, eos_token_ids=eos, use_head=use_head,
                                       block_size=block_size, phase_times=times)
            rounds += res.verify_steps
            tokens += sum(res.accept_lengths)
        out[name] = {"rounds": rounds, "tokens": tokens, "tau": tokens / max(rounds, 1),
                     "ms_per_round": {k: 1e3 * times.get(k, 0.0) / max(rounds, 1) for k in PHASES}}
        out[name]["ms_per_round_total"] = sum(out[name]["ms_per_round"].values())
    start, tokens = time.perf_counter(), 0
    for item in tqdm(items, desc="offline plain", unit="prompt"):
        tokens += len(plain_generate(target, encode_prompt(tokenizer, item), max_new_tokens, eos_token_ids=eos))
    out["plain_ms_per_token"] = 1e3 * (time.perf_counter() - start) / max(tokens, 1)
    return out


def server_profile(target_dir: Path, draft_dir: Path, prompts: Path, num: int, max_new_tokens: int, port: int,
                   log_dir: Path, extra: list[str]) -> dict[str, Any]:
    """Seconds per verify step of a real Domino server answering one request at a time."""
    # Drafting at every step: this profiles speculative rounds, not the adaptive switch's plain-width steps.
    server = Server("domino", target_dir, draft_dir, port, extra, log_dir, env={MAX_SPECULATIVE_BATCH_ENV: "none"})
    try:
        server.wait_healthy()
        payloads = load_payloads(prompts, target_dir, num, max_new_tokens)
        asyncio.run(run_level(server.url, payloads[:1], 1))  # warm-up
        level = asyncio.run(run_level(server.url, payloads, 1))
    finally:
        server.stop()
    tau = level["tau"] or float("nan")
    return {"tau": level["tau"], "output_tokens": level["output_tokens"],
            "ms_per_step": level["tpot_ms"]["median"] * tau, "tpot_ms": level["tpot_ms"],
            "ttft_ms": level["ttft_ms"], "itl_ms": level["itl_ms"]}


def markdown(result: dict[str, Any], table_only: bool = False) -> str:
    """The table of ms per phase of a speculative round (+ the server step), then the τ sentence."""
    off = result["offline"]
    dom, bb = off["domino"], off["backbone"]
    total = dom["ms_per_round_total"]
    rows = ["| phase (per speculative round) | Domino ms | share | backbone-only ms |", "| --- | ---: | ---: | ---: |"]
    for k in PHASES:
        rows.append(f"| {k} | {dom['ms_per_round'][k]:.1f} | {100 * dom['ms_per_round'][k] / total:.0f}% | "
                    f"{bb['ms_per_round'][k]:.1f} |")
    rows.append(f"| **model phases, offline loop** | **{total:.1f}** | 100% | **{bb['ms_per_round_total']:.1f}** |")
    srv = result.get("server")
    if srv:
        rest = srv["ms_per_step"] - total
        rows.append(f"| SGLang server step (concurrency 1) | {srv['ms_per_step']:.1f} | | |")
        rows.append(f"| scheduler + framework (server step − model phases, estimate) | {rest:.1f} | "
                    f"{100 * rest / srv['ms_per_step']:.0f}% of server step | |")
    if table_only:
        return "\n".join(rows)
    rows.append("")
    rows.append(f"τ offline: Domino {dom['tau']:.2f}, backbone {bb['tau']:.2f}"
                + (f"; server τ {srv['tau']:.2f}" if srv else "")
                + f". Plain decoding (HF, batch 1): {off['plain_ms_per_token']:.1f} ms/token, so a round must "
                f"emit > {total / off['plain_ms_per_token']:.2f} tokens to beat it offline.")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default=None)
    p.add_argument("--draft", default=None)
    p.add_argument("--prompts", default=None, help="JSONL prompts (default: the held-out evaluation prompts)")
    p.add_argument("--num-prompts", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--threads", type=int, default=1, help="torch threads for the offline loop")
    p.add_argument("--no-server", action="store_true", help="offline phases only")
    p.add_argument("--port", type=int, default=30200)
    p.add_argument("--server-args", default="", help="extra flags for the server, one string")
    p.add_argument("--block-size", type=int, default=None,
                   help="verify width (bonus + drafts per round) offline and in the server "
                        "(--speculative-num-draft-tokens); default: the drafter's block_size")
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)

    from sglang_domino.embedded import HELDOUT_PROMPTS, prepare_embedded_pair

    if args.target and args.draft:
        target, draft = Path(args.target), Path(args.draft)
    else:
        pair = prepare_embedded_pair()
        target, draft = Path(args.target or pair.target), Path(args.draft or pair.draft)
    prompts = Path(args.prompts or HELDOUT_PROMPTS)
    out_json = Path(args.json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"target": str(target), "draft": str(draft), "num_prompts": args.num_prompts,
                              "max_new_tokens": args.max_new_tokens, "threads": args.threads,
                              "block_size": args.block_size,
                              # the offline loop and the server resolve $SGLANG_DOMINO_DRAFT_LOGITS_DTYPE alike
                              "draft_logits_dtype": str(draft_logits_dtype(torch.empty(0), environment_settings().draft_logits_dtype)).removeprefix("torch."),
                              "offline": offline_profile(target, draft, prompts, args.num_prompts,
                                                         args.max_new_tokens, args.threads, args.block_size)}
    if not args.no_server:
        result["server"] = server_profile(target, draft, prompts, args.num_prompts, args.max_new_tokens, args.port,
                                          out_json.parent / "logs",
                                          (args.server_args.split() if args.server_args else [])
                                          + (["--speculative-num-draft-tokens", str(args.block_size)]
                                             if args.block_size else []))
    from sglang_domino.provenance import provenance

    result["provenance"] = provenance(draft, target)
    out_json.write_text(json.dumps(result, indent=2))
    table = markdown(result)
    out_json.with_suffix(".md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
