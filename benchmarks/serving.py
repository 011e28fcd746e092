"""Serving benchmark: the embedded target served (a) without speculation, (b) with Domino, (c) with the same
drafter's head switched off (DFlash backbone only), at several concurrency levels, in one run.

Within every repeat of a level the servers run back to back (rotating order), and each ratio (Domino / plain,
Domino / backbone) is taken from that repeat's adjacent runs, so a slow minute of this machine lands on both sides
of the ratio. A level reports the geometric mean of its per-repeat ratios with a 95 % t-interval
(``benchmarks/paired.py``) and keeps adding repeats (``--repeats`` to ``--max-repeats``) while the Domino / plain
interval is wider than ``--target-halfwidth``; tok/s per server are medians. The first configuration is what
``sglang-domino serve`` runs by default; the second is the other CPU dtype: ``--dtype float32`` where the default
is another, else ``--dtype bfloat16`` on a CPU with bf16 units (:func:`configurations`). Writes JSON (``configs``:
each configuration's ``levels``), a markdown table per configuration and a PNG plot. Also: ``sglang-domino bench ...``; ``--quick`` for a two-minute look.

The speculative servers inherit ``$SGLANG_DOMINO_MAX_SPECULATIVE_BATCH`` (default ``auto``: on CPU ``adaptive``,
drafting or plain-width steps per batch size by measured tokens/s). ``--compare-always-drafting`` adds a fourth
server, Domino drafting at every batch size (the switch off), so the switch's effect is measured in the same run.

    python benchmarks/serving.py --max-new-tokens 128 --json benchmarks/results/serving.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from sglang_domino.benchmarks.paired import (FASTER_ABOVE, METHOD, SLOWER_BELOW, keep_going, markdown,
                                             paired_ratio, ratio_cell, run_order)
from sglang_domino.resume import append_row, read_rows, start_rows
from sglang_domino.server.process import ServerProcess, ServerStartError
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


QUICK = {"concurrency": "1,4", "num_prompts": 4, "max_new_tokens": 32, "repeats": 2, "max_repeats": 2}
DEFAULTS = {"concurrency": "1,2,4,8,16,32", "num_prompts": None, "max_new_tokens": 128, "repeats": 3,
            "max_repeats": 8}
FLOAT32 = "float32"
BFLOAT16 = "bfloat16"


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the flags left unset from ``--quick``'s values or the defaults; check the repeat bounds."""
    base = QUICK if args.quick else DEFAULTS
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {args.repeats}")
    if args.max_repeats < args.repeats:
        raise SystemExit(f"--max-repeats ({args.max_repeats}) is below --repeats ({args.repeats})")
    return args


def _flag_value(args: list[str], flag: str) -> Optional[str]:
    """``--flag V`` or ``--flag=V`` in ``args``: V (the last one given); None when absent."""
    value = None
    for i, a in enumerate(args):
        if a == flag:
            value = args[i + 1] if i + 1 < len(args) else ""
        elif a.startswith(flag + "="):
            value = a.split("=", 1)[1]
    return value


def configurations(server_args: list[str], default_dtype: Optional[str], quick: bool = False,
                   bf16_units: bool = False) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The server configurations to measure, and the skipped ones with why.

    ``defaults``: what ``sglang-domino serve`` runs (plus ``--server-args``); ``default_dtype`` is the dtype it
    picks (``cpu_default_dtype()`` on CPU; None on CUDA, where SGLang takes the model's). The second one, the other
    CPU dtype worth serving: ``float32`` where the default is another, else ``bfloat16`` on a CPU with bf16 units
    (``bf16_units``; without them PyTorch emulates bf16, 3-40x slower). ``--quick`` runs the defaults only. A
    ``--dtype`` in ``server_args`` replaces both by one configuration named after it."""
    dtype = _flag_value(server_args, "--dtype")
    if dtype is not None:  # the user chose the dtype: one configuration, named after it
        return ({dtype: {"server_args": list(server_args), "dtype": dtype,
                         "description": f"--server-args sets --dtype {dtype}"}},
                {"defaults": f"--server-args sets --dtype {dtype}"})
    configs = {"defaults": {"server_args": list(server_args), "dtype": default_dtype or "auto",
                            "description": "sglang-domino serve defaults, "
                                           + (f"--dtype {default_dtype}" if default_dtype else "the model's dtype")}}
    if default_dtype is None:
        why = "CUDA: the servers run the model's dtype; float32 is no serving configuration there"
    elif default_dtype == FLOAT32:
        why = "it coincides with the defaults: serve runs float32 on every CPU"
        if quick:
            return configs, {FLOAT32: why, BFLOAT16: "--quick measures the defaults only"}
        if not bf16_units:
            return configs, {FLOAT32: why, BFLOAT16: "this CPU has no bf16 units (PyTorch would emulate bf16)"}
        configs[BFLOAT16] = {"server_args": list(server_args) + ["--dtype", BFLOAT16], "dtype": BFLOAT16,
                             "description": "--dtype bfloat16 (outputs can differ from plain decoding at near-ties)"}
    elif quick:
        why = "--quick measures the defaults only"
    else:
        configs[FLOAT32] = {"server_args": list(server_args) + ["--dtype", FLOAT32], "dtype": FLOAT32,
                            "description": "--dtype float32"}
        return configs, {}
    return configs, {FLOAT32: why}


def start_servers(make: dict[str, Callable[[], Server]], retries: int = 1, pause_s: float = 10.0
                  ) -> dict[str, Server]:
    """Start the servers one after another, each healthy before the next: SGLang's CPU engine sizes its KV pool
    from the memory free at start, and a pool being allocated beside it reads as missing memory ("Loaded weights
    leave no GPU memory for the KV cache"). One that fails to start is tried ``retries`` more times."""
    servers: dict[str, Server] = {}
    try:
        for name, make_one in make.items():
            for attempt in range(retries + 1):
                server = make_one()
                try:
                    servers[name] = server.wait_healthy()
                    break
                except ServerStartError as exc:
                    server.stop()
                    if attempt == retries:
                        raise
                    print(f"bench: the {name} server did not start ({str(exc).splitlines()[0]}); trying again",
                          flush=True)
                    time.sleep(pause_s)
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    return servers


def measure_level(run_one: Callable[[str], dict[str, Any]], names: tuple[str, ...], level_index: int,
                  min_repeats: int, max_repeats: int, target_half_width: float,
                  on_run: Optional[Callable[[int, int, Optional[dict[str, Any]]], None]] = None
                  ) -> list[dict[str, Any]]:
    """Repeats of one level: each runs every server once, back to back in rotating order (``run_one(name)`` returns
    a run), until ``paired.keep_going`` says the Domino / plain interval is narrow enough. Returns the repeats,
    ``{"order": [...], "runs": {name: run}}``. ``on_run(repeat, run_in_repeat, ratio_so_far)`` is called before
    every run (progress)."""
    repeats: list[dict[str, Any]] = []
    ratio = None
    while keep_going(ratio, min_repeats, max_repeats, target_half_width):
        order = run_order(names, level_index, len(repeats))
        runs = {}
        for i, name in enumerate(order):
            if on_run is not None:
                on_run(len(repeats), i, ratio)
            runs[name] = run_one(name)
        repeats.append({"order": order, "runs": runs})
        ratio = paired_ratio([r["runs"]["domino"]["output_tok_s"] for r in repeats],
                             [r["runs"]["plain"]["output_tok_s"] for r in repeats])
    return repeats


def summarise_level(concurrency: int, num_prompts: int, repeats: list[dict[str, Any]], max_repeats: int,
                    target_half_width: float) -> dict[str, Any]:
    """A level's record: median run per server, the paired ratios with their intervals, τ, latencies, output
    equality to plain, every run's tok/s and the order the servers ran in."""
    names = list(repeats[0]["runs"])
    runs = {name: [r["runs"][name] for r in repeats] for name in names}
    tok_s = {name: [r["output_tok_s"] for r in v] for name, v in runs.items()}
    measured = {name: median_run(r) for name, r in runs.items()}
    vs_plain = paired_ratio(tok_s["domino"], tok_s["plain"])
    vs_backbone = paired_ratio(tok_s["domino"], tok_s["backbone"])
    hw = vs_plain["half_width"]
    if hw is not None and hw <= target_half_width:
        stopped = f"half-width {hw:.3f} <= {target_half_width:g}"
    elif len(repeats) >= max_repeats:
        stopped = "max repeats" + (f" (half-width {hw:.3f} > {target_half_width:g})" if hw is not None else "")
    else:
        stopped = "min repeats"
    same = all(r["output_ids"] == runs["plain"][0]["output_ids"]
               for name in ("plain", "domino", ALWAYS) if name in runs for r in runs[name])
    level = {
        "concurrency": concurrency,
        "num_prompts": num_prompts,
        "repeats": len(repeats),
        "stopped": stopped,
        "plain_tok_s": measured["plain"]["output_tok_s"],
        "domino_tok_s": measured["domino"]["output_tok_s"],
        "backbone_tok_s": measured["backbone"]["output_tok_s"],
        "domino_vs_plain": vs_plain,
        "domino_vs_backbone": vs_backbone,
        "speedup_vs_plain": vs_plain["geomean"],  # the paired geometric means (not a ratio of the medians)
        "speedup_vs_backbone": vs_backbone["geomean"],
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
        "order": [r["order"] for r in repeats],
        "tok_s_runs": tok_s,
    }
    if ALWAYS in measured:
        always = paired_ratio(tok_s[ALWAYS], tok_s["plain"])
        level.update({"domino_always_tok_s": measured[ALWAYS]["output_tok_s"], "always_vs_plain": always,
                      "always_speedup_vs_plain": always["geomean"], "tau_domino_always": measured[ALWAYS]["tau"]})
    return level


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for style, (cname, cfg) in zip(("-", "--"), result["configs"].items()):
        levels = cfg["levels"]
        conc = [lv["concurrency"] for lv in levels]
        for key, label in (("plain_tok_s", "plain"), ("domino_tok_s", "Domino"), ("backbone_tok_s", "DFlash backbone"),
                           ("domino_always_tok_s", "Domino, always drafting")):
            if levels and all(key in lv for lv in levels):
                ax1.plot(conc, [lv[key] for lv in levels], style, marker="o", label=f"{label} ({cname})")
        for key, label in (("domino_vs_plain", "Domino / plain"), ("domino_vs_backbone", "Domino / backbone"),
                           ("always_vs_plain", "always drafting / plain")):
            if levels and all(key in lv for lv in levels):
                g = [lv[key]["geomean"] for lv in levels]
                err = [[gi - (lv[key]["low"] or gi) for gi, lv in zip(g, levels)],
                       [(lv[key]["high"] or gi) - gi for gi, lv in zip(g, levels)]]
                ax2.errorbar(conc, g, yerr=err, fmt=style, marker="o", capsize=3, label=f"{label} ({cname})")
    conc = sorted({lv["concurrency"] for cfg in result["configs"].values() for lv in cfg["levels"]})
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xticks(conc, [str(c) for c in conc])
        ax.minorticks_off()
        ax.legend(fontsize=7)
    ax1.set(xlabel="concurrency", ylabel="output tok/s (median run)", title="Throughput")
    ax2.axhline(1.0, color="grey", lw=0.8)
    ax2.axhline(SLOWER_BELOW, color="grey", lw=0.8, ls=":")
    ax2.set(xlabel="concurrency", ylabel="ratio (geometric mean, 95 % interval)", title="Paired speedup")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    from sglang_domino.benchmarks.loadgen import run_level
    from sglang_domino.embedded import HELDOUT_PROMPTS, prepare_embedded_pair
    from sglang_domino.hardware import cpu_has_bf16_units
    from sglang_domino.server.launch import cpu_default_dtype, cuda_available

    args = resolve_args(args)
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
    configs, skipped = configurations(extra, None if cuda_available() else cpu_default_dtype(), args.quick,
                                      bf16_units=cpu_has_bf16_units())
    for name, why in skipped.items():
        print(f"bench: configuration {name} not run: {why}", flush=True)
    names = CONFIGS + ((ALWAYS,) if args.compare_always_drafting else ())
    # Resume: finished levels of an interrupted run with the same settings are kept (one JSON line each, tagged
    # with its configuration).
    weights = draft / "model.safetensors"
    draft_logits_choice = os.environ.get(DRAFT_LOGITS_DTYPE_ENV) or "auto"  # the servers inherit it
    cpu_fast_paths = os.environ.get(CPU_FAST_PATHS_ENV) or "1"  # likewise, for all three servers
    max_speculative_batch = os.environ.get(MAX_SPECULATIVE_BATCH_ENV) or "auto"  # likewise (not domino_always)
    settings = {"target": str(target), "draft": str(draft), "draft_weights": [weights.stat().st_size,
                weights.stat().st_mtime_ns], "prompts": str(prompts), "max_new_tokens": args.max_new_tokens,
                "num_prompts": args.num_prompts, "block_size": args.block_size, "repeats": args.repeats,
                "max_repeats": args.max_repeats, "target_half_width": args.target_halfwidth,
                "draft_logits_dtype": draft_logits_choice, "cpu_fast_paths": cpu_fast_paths,
                "max_speculative_batch": max_speculative_batch, "servers": list(names),
                "configs": {k: v["server_args"] for k, v in configs.items()}}
    levels_path = out_json.with_name(out_json.name + ".levels.jsonl")
    done = [lv for lv in read_rows(levels_path, settings) if lv["concurrency"] in levels_c and lv["config"] in configs]
    if not done:
        start_rows(levels_path, settings)
    todo = {cname: [c for c in levels_c if not any(lv["config"] == cname and lv["concurrency"] == c for lv in done)]
            for cname in configs}
    progress = tqdm(total=len(configs) * len(levels_c) * len(names) * args.repeats,
                    initial=len(done) * len(names) * args.repeats, desc="bench", unit="run")
    for cname, cfg in configs.items():
        if not todo[cname]:
            continue
        spec_extra = cfg["server_args"]
        # The verify width applies to the speculative servers only (plain SGLang has no draft tokens).
        spec_extra = spec_extra + (["--speculative-num-draft-tokens", str(args.block_size)] if args.block_size else [])
        logs = out_json.parent / "logs" / cname
        make = {"plain": lambda: Server("plain", target, None, args.port, cfg["server_args"], logs),
                "domino": lambda: Server("domino", target, draft, args.port + 1, spec_extra, logs),
                "backbone": lambda: Server("backbone", target, backbone, args.port + 2, spec_extra, logs)}
        if args.compare_always_drafting:
            make[ALWAYS] = lambda: Server(ALWAYS, target, draft, args.port + 3, spec_extra, logs,
                                          env={MAX_SPECULATIVE_BATCH_ENV: "none"})
        progress.set_postfix_str(f"{cname}: starting {len(make)} servers")
        servers = start_servers(make)
        try:
            warm = load_payloads(prompts, target, 2, 16)
            for s in servers.values():  # first requests pay one-off costs (allocation, lazy init)
                asyncio.run(run_level(s.url, warm, 2))
            for conc in todo[cname]:
                payloads = load_payloads(prompts, target, args.num_prompts or max(2 * conc, 8), args.max_new_tokens)

                def run_one(name: str) -> dict[str, Any]:
                    res = asyncio.run(run_level(servers[name].url, payloads, conc))
                    if res["failed"] == len(payloads):
                        # A dead or wedged server: stop rather than record a level of zeros.
                        raise RuntimeError(f"every request to the {name} server failed at concurrency {conc}; "
                                           f"see {servers[name].log_path}")
                    return res

                def on_run(rep: int, i: int, ratio: Optional[dict[str, Any]]) -> None:
                    if rep or i:
                        progress.update(1)  # the run before this one finished (the level's last: below)
                    if rep >= args.repeats and i == 0:
                        progress.total += len(names)  # a repeat beyond --repeats: the interval is still too wide
                    progress.set_postfix_str(f"{cname} c={conc} repeat {rep + 1} D/plain {ratio_cell(ratio)}")
                    progress.refresh()

                repeats = measure_level(run_one, names, levels_c.index(conc), args.repeats, args.max_repeats,
                                        args.target_halfwidth, on_run)
                progress.update(1)
                level = {"config": cname, **summarise_level(conc, len(payloads), repeats, args.max_repeats,
                                                            args.target_halfwidth)}
                done.append(level)
                append_row(levels_path, level)
                progress.refresh()
        finally:
            for s in servers.values():
                s.stop()
    progress.close()
    result = {"format": "serving-paired", "target": str(target), "draft": str(draft),
              "max_new_tokens": args.max_new_tokens, "server_args": extra,
              "block_size": verify_width(args.block_size, draft), "quick": bool(args.quick),
              "repeats": {"min": args.repeats, "max": args.max_repeats, "target_half_width": args.target_halfwidth,
                          "stop_rule": "add repeats while the Domino/plain interval's half_width exceeds "
                                       "target_half_width, up to max"},
              "statistics": {"ratios": METHOD, "slower_below": SLOWER_BELOW, "faster_above": FASTER_ABOVE,
                             "tok_s": "median run per server (its τ and latencies come with it)"},
              "draft_logits_dtype": draft_logits_choice, "cpu_fast_paths": cpu_fast_paths,
              "max_speculative_batch": max_speculative_batch, "servers": list(names),
              "configs": {cname: {**cfg, "levels": sorted((lv for lv in done if lv["config"] == cname),
                                                          key=lambda lv: lv["concurrency"])}
                          for cname, cfg in configs.items()},
              "skipped": skipped}
    from sglang_domino.provenance import provenance

    result["provenance"] = provenance(draft, target)
    out_json.write_text(json.dumps(result, indent=2))
    text = markdown(result)
    out_json.with_suffix(".md").write_text(text + "\n")
    plot(result, out_json.with_suffix(".png"))
    print(text)
    return result


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median output tok/s (the lower middle one for an even count): its latencies and τ
    come with it, so a level's numbers stay those of one real run."""
    if not runs:
        raise ValueError("median_run needs at least one run")
    ranked = sorted(runs, key=lambda r: r["output_tok_s"])
    return ranked[(len(ranked) - 1) // 2]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="a two-minute look: concurrency 1,4, 4 prompts of 32 tokens, 2 repeats, the default "
                        "configuration only (flags given explicitly still win)")
    p.add_argument("--concurrency", default=None, help=f"default {DEFAULTS['concurrency']}")
    p.add_argument("--num-prompts", type=int, default=None, help="per level (default: max(2×concurrency, 8))")
    p.add_argument("--prompts", default=None, help="JSONL prompts (default: the held-out evaluation prompts)")
    p.add_argument("--max-new-tokens", type=int, default=None, help=f"default {DEFAULTS['max_new_tokens']}")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"least repeats per level (default {DEFAULTS['repeats']}); a repeat runs every server once, "
                        "back to back, and gives one paired ratio")
    p.add_argument("--max-repeats", type=int, default=None,
                   help=f"most repeats per level (default {DEFAULTS['max_repeats']})")
    p.add_argument("--target-halfwidth", type=float, default=0.03,
                   help="keep adding repeats while the Domino/plain 95 %% interval's half-width exceeds this "
                        "(default 0.03; 0: always --max-repeats)")
    p.add_argument("--target", default=None)
    p.add_argument("--draft", default=None)
    p.add_argument("--port", type=int, default=30100)
    p.add_argument("--server-args", default="",
                   help="extra flags for every server, one string (a --dtype here replaces the two dtype "
                        "configurations by this one)")
    p.add_argument("--block-size", type=int, default=None,
                   help="verify width of the speculative servers (--speculative-num-draft-tokens); default: what "
                        "sglang-domino serve picks (4 on CPU)")
    p.add_argument("--compare-always-drafting", action="store_true",
                   help=f"add a fourth server: Domino with {MAX_SPECULATIVE_BATCH_ENV}=none (drafting at every batch "
                        "size), to measure the automatic switch-off in the same run")
    p.add_argument("--json", required=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run(parser.parse_args())
