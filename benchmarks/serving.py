"""Serving benchmark: the embedded target served (a) without speculation, (b) with Domino, (c) with the same
drafter's head switched off (DFlash backbone only), at several concurrency levels, in one run.

The three servers run side by side and the configurations are interleaved within every level (rotating
order), so slow drift of this machine's speed lands on all three alike. Writes JSON (``levels``), a
markdown table and a PNG plot. Also: ``sglang-domino bench ...``.

The speculative servers inherit ``$SGLANG_DOMINO_MAX_SPECULATIVE_BATCH`` (default ``auto``: on CPU ``adaptive``,
drafting or plain-width steps per batch size by measured tokens/s). ``--compare-always-drafting`` adds a fourth
server, Domino drafting at every batch size (the switch off), so the switch's effect is measured in the same run.

    python benchmarks/serving.py --concurrency 1,2,4,8,16 --max-new-tokens 128 --json benchmarks/results/serving.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

from sglang_domino.resume import append_row, read_rows, start_rows
from sglang_domino.server.process import ServerProcess
from sglang_domino.settings import CPU_FAST_PATHS_ENV, DRAFT_LOGITS_DTYPE_ENV, MAX_SPECULATIVE_BATCH_ENV

CONFIGS = ("plain", "domino", "backbone")
ALWAYS = "domino_always"  # optional: Domino with the automatic switch-off disabled


def backbone_only_checkpoint(draft: Path, cache_root: Path) -> Path:
    """The same drafter with the Domino head switched off (identical backbone tensors), written once."""
    from sglang_domino import load_drafter, save_drafter

    out = cache_root / f"backbone-only-{draft.resolve().name}-{int((draft / 'model.safetensors').stat().st_mtime)}"
    if not (out / "model.safetensors").is_file():
        model = load_drafter(draft, use_head=False)
        save_drafter(model, out)
    return out


class Server(ServerProcess):
    """A ``sglang-domino serve`` subprocess on loopback, started at once; ``draft=None`` serves without speculation.
    ``env`` is added to this process's environment. Log: ``log_dir/server-NAME.log``."""

    def __init__(self, name: str, target: Path, draft: Optional[Path], port: int, extra: list[str], log_dir: Path,
                 env: Optional[dict[str, str]] = None):
        cmd = [sys.executable, "-m", "sglang_domino.cli", "serve", "--target", str(target), "--port", str(port)]
        cmd += ["--draft", str(draft)] if draft is not None else ["--no-speculation"]
        super().__init__(name, cmd + list(extra), {**os.environ, **(env or {})}, log_dir / f"server-{name}.log")
        self.start()

    @property
    def log_path(self) -> Path:
        return self.log


def verify_width(requested: Optional[int], draft: Path) -> int:
    """The verify width the speculative servers run: ``--block-size`` if given, else what ``sglang-domino serve``
    picks (4 on CPU, the drafter's block size on CUDA)."""
    if requested:
        return int(requested)
    from sglang_domino.evaluate import load_config_block_size
    from sglang_domino.server.launch import CPU_DEFAULT_VERIFY_WIDTH, cuda_available

    return load_config_block_size(draft) if cuda_available() else CPU_DEFAULT_VERIFY_WIDTH


def load_payloads(prompts_path: Path, target: Path, num: int, max_new_tokens: int) -> list[dict[str, Any]]:
    from transformers import AutoTokenizer

    from sglang_domino.evaluate import encode_prompt, read_prompts

    tokenizer = AutoTokenizer.from_pretrained(target)
    items = read_prompts(prompts_path)
    payloads = []
    for i in range(num):
        ids = encode_prompt(tokenizer, items[i % len(items)])[0].tolist()
        payloads.append({"input_ids": ids, "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0.0,
                                                               "ignore_eos": False}})
    return payloads


def markdown_table(levels: list[dict[str, Any]]) -> str:
    always = all("domino_always_tok_s" in lv for lv in levels) and bool(levels)
    head = ["concurrency", "plain tok/s", "Domino tok/s", "backbone tok/s"]
    head += ["Domino always drafting tok/s"] if always else []
    head += ["Domino/plain", "Domino/backbone"] + (["always drafting/plain"] if always else [])
    head += ["τ Domino", "τ backbone", "TTFT ms (D, median)", "ITL ms (D, median / p90)", "D output = plain"]
    rows = ["| " + " | ".join(head) + " |", "|" + " ---: |" * len(head)]
    for lv in levels:
        cells = [str(lv["concurrency"]), f"{lv['plain_tok_s']:.1f}", f"{lv['domino_tok_s']:.1f}",
                 f"{lv['backbone_tok_s']:.1f}"]
        cells += [f"{lv['domino_always_tok_s']:.1f}"] if always else []
        cells += [f"{lv['speedup_vs_plain']:.2f}×", f"{lv['speedup_vs_backbone']:.2f}×"]
        cells += [f"{lv['always_speedup_vs_plain']:.2f}×"] if always else []
        cells += [f"{lv['tau_domino'] or float('nan'):.2f}", f"{lv['tau_backbone'] or float('nan'):.2f}",
                  f"{lv['ttft_ms']['domino']['median']:.0f}",
                  f"{lv['itl_ms']['domino']['median']:.0f} / {lv['itl_ms']['domino']['p90']:.0f}",
                  f"{lv.get('domino_requests_equal_plain', '?')}/{lv['num_prompts']}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot(levels: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conc = [lv["concurrency"] for lv in levels]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("plain_tok_s", "plain"), ("domino_tok_s", "Domino"), ("backbone_tok_s", "DFlash backbone"),
                       ("domino_always_tok_s", "Domino, always drafting")):
        if all(key in lv for lv in levels):
            ax1.plot(conc, [lv[key] for lv in levels], marker="o", label=label)
    ax1.set(xscale="log", xlabel="concurrency", ylabel="output tok/s", title="Throughput")
    ax1.set_xticks(conc, [str(c) for c in conc])
    ax1.legend()
    ax2.plot(conc, [lv["speedup_vs_plain"] for lv in levels], marker="o", label="Domino / plain")
    ax2.plot(conc, [lv["speedup_vs_backbone"] for lv in levels], marker="o", label="Domino / backbone")
    if all("always_speedup_vs_plain" in lv for lv in levels):
        ax2.plot(conc, [lv["always_speedup_vs_plain"] for lv in levels], marker="o",
                 label="Domino always drafting / plain")
    ax2.axhline(1.0, color="grey", lw=0.8)
    ax2.set(xscale="log", xlabel="concurrency", ylabel="ratio", title="Speedup")
    ax2.set_xticks(conc, [str(c) for c in conc])
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    from sglang_domino.benchmarks.loadgen import run_level

    if args.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {args.repeats}")

    from sglang_domino.embedded import HELDOUT_PROMPTS, prepare_embedded_pair

    if args.target and args.draft:
        target, draft = Path(args.target), Path(args.draft)
    else:
        pair = prepare_embedded_pair()
        target, draft = Path(args.target or pair.target), Path(args.draft or pair.draft)
    out_json = Path(args.json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    backbone = backbone_only_checkpoint(draft, out_json.parent / "cache")
    levels_c = [int(c) for c in args.concurrency.split(",")]
    prompts = Path(args.prompts or HELDOUT_PROMPTS)
    extra = args.server_args.split() if args.server_args else []
    # The verify width applies to the speculative servers only (plain SGLang has no draft tokens).
    spec_extra = extra + (["--speculative-num-draft-tokens", str(args.block_size)] if args.block_size else [])
    servers = {
        "plain": Server("plain", target, None, args.port, extra, out_json.parent / "logs"),
        "domino": Server("domino", target, draft, args.port + 1, spec_extra, out_json.parent / "logs"),
        "backbone": Server("backbone", target, backbone, args.port + 2, spec_extra, out_json.parent / "logs"),
    }
    configs = CONFIGS
    if args.compare_always_drafting:
        servers[ALWAYS] = Server(ALWAYS, target, draft, args.port + 3, spec_extra, out_json.parent / "logs",
                                 env={MAX_SPECULATIVE_BATCH_ENV: "none"})
        configs = CONFIGS + (ALWAYS,)
    # Resume: finished levels of an interrupted run with the same settings are kept (one JSON line each).
    weights = draft / "model.safetensors"
    draft_logits_choice = os.environ.get(DRAFT_LOGITS_DTYPE_ENV) or "auto"  # the servers inherit it
    cpu_fast_paths = os.environ.get(CPU_FAST_PATHS_ENV) or "1"  # likewise, for all three servers
    max_speculative_batch = os.environ.get(MAX_SPECULATIVE_BATCH_ENV) or "auto"  # likewise (not domino_always)
    settings = {"target": str(target), "draft": str(draft), "draft_weights": [weights.stat().st_size,
                weights.stat().st_mtime_ns], "prompts": str(prompts), "max_new_tokens": args.max_new_tokens,
                "num_prompts": args.num_prompts, "server_args": extra, "block_size": args.block_size,
                "repeats": args.repeats, "draft_logits_dtype": draft_logits_choice, "cpu_fast_paths": cpu_fast_paths,
                "max_speculative_batch": max_speculative_batch, "configs": list(configs)}
    levels_path = out_json.with_name(out_json.name + ".levels.jsonl")
    levels = [lv for lv in read_rows(levels_path, settings) if lv["concurrency"] in levels_c]
    if not levels:
        start_rows(levels_path, settings)
    todo = [c for c in levels_c if c not in {lv["concurrency"] for lv in levels}]
    try:
        for s in servers.values():
            s.wait_healthy()
        warm = load_payloads(prompts, target, 2, 16)
        for s in servers.values():  # first requests pay one-off costs (allocation, lazy init)
            asyncio.run(run_level(s.url, warm, 2))
        progress = tqdm(total=len(levels_c) * len(configs) * args.repeats,
                        initial=len(levels) * len(configs) * args.repeats, desc="bench",
                        unit="run")
        for conc in todo:
            li = levels_c.index(conc)
            payloads = load_payloads(prompts, target, args.num_prompts or max(2 * conc, 8), args.max_new_tokens)
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
            for rep in range(args.repeats):
                first = (li + rep) % len(configs)  # rotate who goes first, per level and per repeat
                for name in configs[first:] + configs[:first]:
                    run = asyncio.run(run_level(servers[name].url, payloads, conc))
                    if run["failed"] == len(payloads):
                        # A dead or wedged server: stop rather than record a level of zeros.
                        raise RuntimeError(f"every request to the {name} server failed at concurrency {conc}; "
                                           f"see {servers[name].log_path}")
                    runs[name].append(run)
                    progress.update(1)
            measured = {name: median_run(r) for name, r in runs.items()}
            same = all(r["output_ids"] == runs["plain"][0]["output_ids"]
                       for name in ("plain", "domino", ALWAYS) if name in runs for r in runs[name])
            levels.append({
                "concurrency": conc,
                "num_prompts": len(payloads),
                "plain_tok_s": measured["plain"]["output_tok_s"],
                "domino_tok_s": measured["domino"]["output_tok_s"],
                "backbone_tok_s": measured["backbone"]["output_tok_s"],
                "speedup_vs_plain": measured["domino"]["output_tok_s"] / max(measured["plain"]["output_tok_s"], 1e-9),
                "speedup_vs_backbone": measured["domino"]["output_tok_s"] / max(measured["backbone"]["output_tok_s"], 1e-9),
                "tau_domino": measured["domino"]["tau"],
                "tau_backbone": measured["backbone"]["tau"],
                "ttft_ms": {k: v["ttft_ms"] for k, v in measured.items()},
                "itl_ms": {k: v["itl_ms"] for k, v in measured.items()},
                "tpot_ms": {k: v["tpot_ms"] for k, v in measured.items()},
                "failed": {k: v["failed"] for k, v in measured.items()},
                "domino_output_equals_plain": same,
                # per request, median runs: in bf16 a multi-token verify and a one-token decode round differently
                "domino_requests_equal_plain": sum(a == b for a, b in zip(measured["domino"]["output_ids"],
                                                                          measured["plain"]["output_ids"])),
                "repeats": args.repeats,
                "tok_s_runs": {k: [r["output_tok_s"] for r in v] for k, v in runs.items()},
            })
            if ALWAYS in measured:
                levels[-1].update({
                    "domino_always_tok_s": measured[ALWAYS]["output_tok_s"],
                    "always_speedup_vs_plain": measured[ALWAYS]["output_tok_s"]
                    / max(measured["plain"]["output_tok_s"], 1e-9),
                    "tau_domino_always": measured[ALWAYS]["tau"],
                })
            append_row(levels_path, levels[-1])
        progress.close()
    finally:
        for s in servers.values():
            s.stop()
    levels.sort(key=lambda lv: lv["concurrency"])
    result = {"target": str(target), "draft": str(draft), "max_new_tokens": args.max_new_tokens,
              "server_args": extra, "block_size": verify_width(args.block_size, draft),
              "repeats": args.repeats, "draft_logits_dtype": draft_logits_choice, "cpu_fast_paths": cpu_fast_paths,
              "max_speculative_batch": max_speculative_batch, "configs": list(configs), "levels": levels}
    from sglang_domino.provenance import provenance

    result["provenance"] = provenance(draft, target)
    out_json.write_text(json.dumps(result, indent=2))
    table = markdown_table(levels)
    out_json.with_suffix(".md").write_text(table + "\n")
    plot(levels, out_json.with_suffix(".png"))
    print(table)
    return result


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median output tok/s (the lower middle one for an even count): its latencies and τ
    come with it, so a level's numbers stay those of one real run."""
    if not runs:
        raise ValueError("median_run needs at least one run")
    ranked = sorted(runs, key=lambda r: r["output_tok_s"])
    return ranked[(len(ranked) - 1) // 2]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concurrency", default="1,2,4,8,16")
    p.add_argument("--num-prompts", type=int, default=None, help="per level (default: max(2×concurrency, 8))")
    p.add_argument("--prompts", default=None, help="JSONL prompts (default: the held-out evaluation prompts)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=1,
                   help="runs per configuration and level, interleaved; the median run's numbers are reported")
    p.add_argument("--target", default=None)
    p.add_argument("--draft", default=None)
    p.add_argument("--port", type=int, default=30100)
    p.add_argument("--server-args", default="", help="extra flags for every server, one string")
    p.add_argument("--block-size", type=int, default=None,
                   help="verify width of the speculative servers (--speculative-num-draft-tokens); default: the "
                        "drafter's block_size")
    p.add_argument("--compare-always-drafting", action="store_true",
                   help=f"add a fourth server: Domino with {MAX_SPECULATIVE_BATCH_ENV}=none (drafting at every batch "
                        "size), to measure the automatic switch-off in the same run")
    p.add_argument("--json", required=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run(parser.parse_args())
