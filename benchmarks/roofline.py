"""How far a decode step sits above its floor on this machine: a roofline per step (bytes over the measured read
bandwidth, FLOPs over the measured GEMM peak) for plain decoding and for each Domino verify width, next to the
measured step.

Three parts:

1. **The machine** (:func:`measure_machine`): read bandwidth (``torch.sum`` over float32 arrays well above the last
   cache level, several sizes, best of k) and a copy's, and ``torch.mm`` peak in float32 and bfloat16 at a few
   large square shapes, all at torch's default thread count (the server's). bf16 is only fast with bf16 units
   (AVX512-BF16 / AMX; :func:`sglang_domino.hardware.cpu_has_bf16_units`): both are recorded.
2. **The model of a step** (:func:`step_parts`), for the embedded pair (SmolLM2-135M target, the shipped drafter),
   ``N`` requests, verify width ``W`` (``plain`` = a plain server's decode step; ``W = 1`` = the Domino worker's
   plain-width step, which also appends the committed tokens to the drafter's context), context ``C``:

   ============== ================================================ ================================================
   part           bytes                                            FLOPs
   ============== ================================================ ================================================
   target         linear weights once (lm_head included) + N·C KV  N·W · 2·params + N·W · 4·heads·head_dim·C·L
                  entries read + N·W written
   draft_context  fc [H, k·H] + the drafter layers' K/V            2·params · N (one committed token per request:
                  projections                                      a lower bound)
   draft_backbone the drafter layers' weights + N·C drafter KV     N·W · 2·params + attention over C
   draft_lm_head  the [V, H] head once, in the drafting dtype      2·V·H · N·(W−1)
   correction     GRU + W1 + W2 once (when a slot is corrected)    per request: (W−1) GRU steps, (W−1−pdl)
                                                                   corrected slots of W1 and W2 (2·V·r)
   logits         float32 logits written and read once: target     –
                  N·W·V, base N·(W−1)·V, correction N·(W−1−pdl)·V
   ============== ================================================ ================================================

   floor(part) = max(bytes / bandwidth, FLOPs / peak of the part's dtype); the step's floor is their sum: a lower
   bound (no kernel reaches either peak; caches, fusion across parts and overlap are ignored; every weight is
   read once per step even where a loop reads it once per slot).
3. **Measured steps** (:func:`aggregate_step_log`): the Domino worker's ``$SGLANG_DOMINO_STEP_LOG`` (one JSON line per
   decode step: batch_size, width, tokens, seconds; worker time), the median per (N, W); plain decoding from a
   plain server's median inter-token latency at concurrency N (ITL: a scheduler step, which includes what
   the worker clock does not see -- scheduling, detokenising, streaming). Efficiency = floor / measured. The
   "per extra verified row" cost is the least-squares slope of ms per step over the widths ≥ 2 measured at
   one N (width 1 runs no draft forward, so it is left out), next to the same slope of the floor and of the
   FLOPs alone at the GEMM peak.

``--measure`` produces all of it: it starts one Domino server (the embedded pair, float32, width up to 16,
``$SGLANG_DOMINO_MAX_SPECULATIVE_BATCH=adaptive`` so widths 1, 2, 3, 4, 8 and 16 are all run, the step log set)
and one plain server, sends the same prompts to each at concurrency 1 and 4, and records the load average
(other processes on the machine slow the steps; above 1.5 the JSON says the numbers are noisy)::

    python benchmarks/roofline.py --measure --json benchmarks/results/roofline_<machine>.json
    python benchmarks/roofline.py --step-log steps.jsonl --plain-ms 1=58.5 --json out.json   # numbers from elsewhere

Nothing here imports torch at module level: ``benchmarks/verify_results.py`` renders the tables with
:func:`markdown`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Union

WIDTHS: tuple[int, ...] = (1, 2, 3, 4, 8, 16)
BATCHES: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
LOGITS_BYTES = 4  # logits are float32 in both servers' samplers and in the drafting rollout
PLAIN = "plain"
PARTS = ("target", "draft_context", "draft_backbone", "draft_lm_head", "correction", "logits")
# Flags measured numbers as noisy: a 1-minute load average above NOISY_LOAD before anything starts, or, while this
# script's own work keeps every core busy (its GEMMs and the servers run one thread per core, so the load is about
# the core count), above the core count + NOISY_EXTRA_LOAD: someone else's work.
NOISY_LOAD = 1.5
NOISY_EXTRA_LOAD = 0.75
Width = Union[int, str]  # an int >= 1, or PLAIN


# --------------------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Transformer:
    """Dimensions of a Llama / Qwen3 decoder stack (no biases), enough to count its bytes and FLOPs."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "Transformer":
        heads = int(cfg["num_attention_heads"])
        return cls(hidden=int(cfg["hidden_size"]), intermediate=int(cfg["intermediate_size"]),
                   layers=int(cfg["num_hidden_layers"]), heads=heads,
                   kv_heads=int(cfg.get("num_key_value_heads", heads)),
                   head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // heads), vocab=int(cfg["vocab_size"]))

    @property
    def layer_params(self) -> int:
        """Linear weights of one layer: q, k, v, o and the gated MLP (norms are negligible and left out)."""
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return h * q + 2 * h * kv + q * h + 3 * h * self.intermediate

    @property
    def lm_head_params(self) -> int:
        return self.vocab * self.hidden

    def kv_elems_per_token(self) -> int:
        """K and V entries one token keeps in the cache (all layers)."""
        return 2 * self.layers * self.kv_heads * self.head_dim

    def attention_flops(self, rows: int, keys: int) -> int:
        """QKᵀ and PV of ``rows`` query rows against ``keys`` keys, all layers."""
        return 4 * self.heads * self.head_dim * keys * rows * self.layers


@dataclass(frozen=True)
class Drafter:
    """The Domino drafter: a DFlash backbone (``fc`` over k target layers' hidden states, a few decoder layers,
    the target's lm_head) and the Domino correction head (a GRU over the block's tokens, W1 [r, H+G], W2 [V, r])."""

    backbone: Transformer
    target_layers: int  # k: fc maps k·H -> H
    gru: int  # G
    rank: int  # r
    pure_draft_prefix_len: int

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "Drafter":
        d = cfg.get("dflash_config") or {}
        return cls(backbone=Transformer.from_config(cfg), target_layers=len(d.get("target_layer_ids") or [0]),
                   gru=int(d.get("gru_hidden_dim", 0)), rank=int(d.get("emb_dim", 0)),
                   pure_draft_prefix_len=int(d.get("pure_draft_prefix_len", 1)))

    @property
    def context_params(self) -> int:
        """Weights the context append applies per committed token: fc and each layer's K and V projections."""
        b = self.backbone
        return self.target_layers * b.hidden * b.hidden + b.layers * 2 * b.hidden * b.kv_heads * b.head_dim

    @property
    def gru_params(self) -> int:
        return 3 * self.gru * (self.backbone.hidden + self.gru)

    @property
    def w1_params(self) -> int:
        return self.rank * (self.backbone.hidden + self.gru)

    @property
    def w2_params(self) -> int:
        return self.backbone.vocab * self.rank

    def corrected_slots(self, width: int) -> int:
        """Proposal slots (W−1) that the head corrects: those at or after ``pure_draft_prefix_len``."""
        if self.gru <= 0:
            return 0
        return max(0, width - 1 - self.pure_draft_prefix_len)

    def gru_steps(self, width: int) -> int:
        """GRU steps per request: a catch-up over [bonus, d_0 .. d_{pdl-1}] at the first corrected slot, then one
        per later slot (``kernels/reference.py``): W−1 when any slot is corrected."""
        return width - 1 if self.corrected_slots(width) > 0 else 0


@dataclass(frozen=True)
class Part:
    name: str
    dtype: str  # whose peak applies
    bytes: float
    flops: float

    def floor_s(self, bandwidth: float, peaks: dict[str, float]) -> float:
        return max(self.bytes / bandwidth, self.flops / peaks[self.dtype])

    def bound(self, bandwidth: float, peaks: dict[str, float]) -> str:
        return "memory" if self.bytes / bandwidth >= self.flops / peaks[self.dtype] else "compute"


def step_parts(target: Transformer, drafter: Optional[Drafter], n: int, width: Width, context: int, dtype: str,
               draft_logits_dtype: Optional[str] = None, committed_per_request: float = 1.0) -> list[Part]:
    """Bytes and FLOPs of one decode step of ``n`` requests (see the module docstring's table).

    ``width``: :data:`PLAIN` (a plain server: the target alone, one row per request) or W >= 1 (a Domino step: W
    verified rows per request; W = 1 drafts nothing but still appends to the drafter's context). ``context``:
    keys each verified row attends to. ``dtype``: the server's (weights, KV, the peak that applies);
    ``draft_logits_dtype``: the drafting lm_head's (default ``dtype``). ``committed_per_request``: tokens the
    context append processes per request (the step's accepted tokens; 1 is a lower bound)."""
    e = DTYPE_BYTES[dtype]
    rows_per_request = 1 if width == PLAIN else int(width)
    if rows_per_request < 1:
        raise ValueError(f"width must be {PLAIN!r} or >= 1, got {width!r}")
    rows = n * rows_per_request
    t_params = target.layers * target.layer_params + target.lm_head_params
    kv_tok = target.kv_elems_per_token() * e
    parts = [Part("target", dtype, t_params * e + n * context * kv_tok + rows * kv_tok,
                  rows * 2 * t_params + target.attention_flops(rows, context))]
    logits_elems = rows * target.vocab
    if width == PLAIN or drafter is None:
        return parts + [Part("logits", dtype, 2 * logits_elems * LOGITS_BYTES, 0)]
    w = rows_per_request
    b = drafter.backbone
    ctx_rows = n * committed_per_request
    parts.append(Part("draft_context", dtype, drafter.context_params * e + ctx_rows * b.kv_elems_per_token() * e,
                      2 * drafter.context_params * ctx_rows))
    if w >= 2:
        d_params = b.layers * b.layer_params
        parts.append(Part("draft_backbone", dtype, d_params * e + n * context * b.kv_elems_per_token() * e,
                          rows * 2 * d_params + b.attention_flops(rows, context)))
        ddt = draft_logits_dtype or dtype
        proposals = n * (w - 1)
        parts.append(Part("draft_lm_head", ddt, target.lm_head_params * DTYPE_BYTES[ddt],
                          2 * target.lm_head_params * proposals))
        corrected = drafter.corrected_slots(w)
        if corrected:
            head_params = drafter.gru_params + drafter.w1_params + drafter.w2_params
            flops = n * (drafter.gru_steps(w) * 2 * drafter.gru_params
                         + corrected * 2 * (drafter.w1_params + drafter.w2_params))
            parts.append(Part("correction", dtype, head_params * e, flops))
        logits_elems += n * (w - 1) * target.vocab + n * corrected * target.vocab
    parts.append(Part("logits", dtype, 2 * logits_elems * LOGITS_BYTES, 0))
    return parts


def floor_record(parts: list[Part], bandwidth: float, peaks: dict[str, float]) -> dict[str, Any]:
    """Per part: bytes, FLOPs, floor ms, bound; and the step's floor (the sum), bytes and FLOPs."""
    out = {p.name: {"bytes": p.bytes, "flops": p.flops, "dtype": p.dtype,
                    "floor_ms": 1e3 * p.floor_s(bandwidth, peaks), "bound": p.bound(bandwidth, peaks)}
           for p in parts}
    return {"parts": out, "floor_ms": sum(v["floor_ms"] for v in out.values()),
            "bytes": sum(p.bytes for p in parts), "flops": sum(p.flops for p in parts),
            "compute_ms": 1e3 * sum(p.flops / peaks[p.dtype] for p in parts)}


def model_floors(target: Transformer, drafter: Drafter, bandwidth: float, peaks: dict[str, float], context: int,
                 dtypes: Iterable[str], draft_logits_dtypes: dict[str, str], batches: Iterable[int] = BATCHES,
                 widths: Iterable[int] = WIDTHS) -> list[dict[str, Any]]:
    """The floor of every (dtype, N, width) cell, plain first."""
    cells = []
    for dtype in dtypes:
        for n in batches:
            for width in (PLAIN, *widths):
                rec = floor_record(step_parts(target, drafter, n, width, context, dtype,
                                              draft_logits_dtypes.get(dtype)), bandwidth, peaks)
                cells.append({"dtype": dtype, "n": n, "width": width, **rec})
    return cells


def slope(points: list[tuple[float, float]]) -> Optional[float]:
    """Least-squares slope of y over x; None with fewer than two distinct x."""
    if len({x for x, _ in points}) < 2:
        return None
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


# --------------------------------------------------------------------------------------------------- measured steps


def read_step_log(path: Union[str, Path]) -> list[dict[str, Any]]:
    """The JSON lines of a ``$SGLANG_DOMINO_STEP_LOG`` file (blank and torn lines skipped)."""
    records = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a server killed mid-write
        if {"batch_size", "width", "tokens", "seconds"} <= rec.keys():
            records.append(rec)
    return records


def aggregate_step_log(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (batch size N, width): steps, median and mean ms per step, mean tokens per step, sorted by (N, width).
    The median, because a width's first steps pay one-time costs and a busy machine adds stray slow steps."""
    groups: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for r in records:
        groups.setdefault((int(r["batch_size"]), int(r["width"])), []).append((float(r["seconds"]), float(r["tokens"])))
    out = []
    for (n, w), vals in sorted(groups.items()):
        secs = [s for s, _ in vals]
        out.append({"n": n, "width": w, "steps": len(vals), "ms_median": 1e3 * statistics.median(secs),
                    "ms_mean": 1e3 * statistics.fmean(secs), "tokens_per_step": statistics.fmean(t for _, t in vals)})
    return out


def compare(steps: list[dict[str, Any]], plain: list[dict[str, Any]],
            target: Transformer, drafter: Drafter, bandwidth: float, peaks: dict[str, float], context: int,
            dtype: str, draft_logits_dtype: Optional[str], min_steps: int = 3) -> dict[str, Any]:
    """Measured rows next to their floors, and the per-extra-row slopes per N.

    ``steps``: :func:`aggregate_step_log` rows; ``plain``: ``{"n", "ms", "source"}`` per plain measurement. Rows
    with fewer than ``min_steps`` steps are left out. A row's floor uses its own tokens per step for the context
    append (tokens / N committed per request)."""
    rows = []
    for p in plain:
        rec = floor_record(step_parts(target, drafter, int(p["n"]), PLAIN, context, dtype), bandwidth, peaks)
        rows.append({"n": int(p["n"]), "width": PLAIN, "steps": p.get("steps"), "measured_ms": p["ms"],
                     "floor_ms": rec["floor_ms"], "efficiency": rec["floor_ms"] / p["ms"],
                     "tokens_per_step": float(p["n"]), "source": p.get("source", "")})
    for s in steps:
        if s["steps"] < min_steps:
            continue
        rec = floor_record(step_parts(target, drafter, s["n"], s["width"], context, dtype, draft_logits_dtype,
                                      committed_per_request=max(1.0, s["tokens_per_step"] / s["n"])),
                           bandwidth, peaks)
        rows.append({"n": s["n"], "width": s["width"], "steps": s["steps"], "measured_ms": s["ms_median"],
                     "floor_ms": rec["floor_ms"], "efficiency": rec["floor_ms"] / s["ms_median"],
                     "tokens_per_step": s["tokens_per_step"], "source": "step log (worker time, median)",
                     "floor_parts_ms": {k: v["floor_ms"] for k, v in rec["parts"].items()}})
    rows.sort(key=lambda r: (r["n"], -1 if r["width"] == PLAIN else r["width"]))
    slopes = []
    for n in sorted({r["n"] for r in rows}):
        mine = [r for r in rows if r["n"] == n and r["width"] != PLAIN and r["width"] >= 2]
        measured = slope([(r["width"], r["measured_ms"]) for r in mine])
        if measured is None:
            continue
        ws = [r["width"] for r in mine]
        recs = {w: floor_record(step_parts(target, drafter, n, w, context, dtype, draft_logits_dtype), bandwidth,
                                peaks) for w in ws}
        slopes.append({"n": n, "widths": ws, "measured_ms_per_row": measured,
                       "floor_ms_per_row": slope([(w, recs[w]["floor_ms"]) for w in ws]),
                       "compute_ms_per_row": slope([(w, recs[w]["compute_ms"]) for w in ws])})
    return {"rows": rows, "slopes": slopes}


# --------------------------------------------------------------------------------------------------- the machine


def measure_bandwidth(sizes_mb: Iterable[int] = (512, 1024, 2048), repeats: int = 10) -> dict[str, Any]:
    """Read (``x.sum()``) and copy (``y.copy_(x)``: read + write bytes) bandwidth over float32 arrays, best of
    ``repeats`` per size; the headline is the best size's (a floor wants the best the memory system gives)."""
    import torch

    per_size = []
    for mb in sizes_mb:
        x = torch.ones(mb * 2**20 // 4, dtype=torch.float32)
        y = torch.empty_like(x)
        x.sum()
        y.copy_(x)
        read = copy = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            x.sum()
            read = min(read, time.perf_counter() - t)
            t = time.perf_counter()
            y.copy_(x)
            copy = min(copy, time.perf_counter() - t)
        nbytes = x.numel() * 4
        per_size.append({"mb": mb, "read_gb_s": nbytes / read / 1e9, "copy_gb_s": 2 * nbytes / copy / 1e9})
        del x, y
    return {"read_bytes_per_s": 1e9 * max(s["read_gb_s"] for s in per_size),
            "copy_bytes_per_s": 1e9 * max(s["copy_gb_s"] for s in per_size), "sizes": per_size,
            "repeats": repeats, "method": "torch.sum / Tensor.copy_ of float32 arrays, best of repeats per size"}


def measure_gemm(dtype_name: str, sizes: Iterable[int] = (1024, 2048, 3072), repeats: int = 3) -> dict[str, Any]:
    """``torch.mm`` of square matrices in ``dtype_name``: GFLOP/s per size (best of ``repeats``) and the best."""
    import torch

    dtype = getattr(torch, dtype_name)
    per_size = []
    for m in sizes:
        a = torch.randn(m, m).to(dtype)
        b = torch.randn(m, m).to(dtype)
        torch.mm(a, b)
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t)
        per_size.append({"size": m, "gflop_s": 2 * m**3 / best / 1e9})
    return {"flop_per_s": 1e9 * max(s["gflop_s"] for s in per_size), "sizes": per_size, "repeats": repeats}


def measure_machine(bandwidth_sizes_mb: Iterable[int] = (512, 1024, 2048)) -> dict[str, Any]:
    import torch

    from sglang_domino.hardware import cpu_has_bf16_units

    load_before = os.getloadavg()
    out = {"threads": torch.get_num_threads(), "cpu_has_bf16_units": cpu_has_bf16_units(),
           "bandwidth": measure_bandwidth(bandwidth_sizes_mb),
           "gemm": {"float32": measure_gemm("float32"), "bfloat16": measure_gemm("bfloat16")}}
    out["load_average"] = {"before": load_before, "after": os.getloadavg()}
    return out


def best_machine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several :func:`measure_machine` results (e.g. before and after the servers ran, on a shared machine) as one:
    the best read and copy bandwidth and GEMM rate of any run (each is a best-of-k already), all runs kept."""
    best = json.loads(json.dumps(runs[0]))
    bw = best["bandwidth"]
    for key in ("read_bytes_per_s", "copy_bytes_per_s"):
        bw[key] = max(r["bandwidth"][key] for r in runs)
    for dtype, g in best["gemm"].items():
        g["flop_per_s"] = max(r["gemm"][dtype]["flop_per_s"] for r in runs)
    best["load_average"] = {"before": runs[0]["load_average"]["before"], "after": runs[-1]["load_average"]["after"]}
    best["runs"] = runs
    return best


# --------------------------------------------------------------------------------------------------- servers


def measure_servers(target: Path, draft: Path, prompts: Path, num_prompts: int, max_new_tokens: int,
                    concurrency: list[int], port: int, log_dir: Path, max_width: int,
                    max_total_tokens: int = 8192) -> dict[str, Any]:
    """A Domino server (adaptive widths up to ``max_width``, step log on) and a plain server, float32, the same
    prompts at each concurrency; returns the step log's records and the plain server's ITL per concurrency."""
    import asyncio

    from sglang_domino.benchmarks.loadgen import run_level
    from sglang_domino.benchmarks.serving import Server, load_payloads
    from sglang_domino.settings import MAX_SPECULATIVE_BATCH_ENV, STEP_LOG_ENV

    log_dir.mkdir(parents=True, exist_ok=True)
    step_log = log_dir / "roofline_steps.jsonl"
    step_log.unlink(missing_ok=True)
    payloads = load_payloads(prompts, target, num_prompts, max_new_tokens)
    warm = load_payloads(prompts, target, 2, 16)
    out: dict[str, Any] = {"num_prompts": num_prompts, "max_new_tokens": max_new_tokens, "concurrency": concurrency,
                           "prompt_tokens_mean": statistics.fmean(len(p["input_ids"]) for p in payloads),
                           "levels": {}}
    # A small KV pool: the launcher's default (65,536 tokens) is 3 GB of float32 KV for SmolLM2, and these prompts
    # need a few thousand tokens at most.
    extra = ["--dtype", "float32", "--max-total-tokens", str(max_total_tokens)]
    # One server at a time: the two would share the two cores.
    for name in ("domino", "plain"):
        env = {MAX_SPECULATIVE_BATCH_ENV: "adaptive", STEP_LOG_ENV: str(step_log)} if name == "domino" else {}
        server = Server(name, target, draft if name == "domino" else None, port, extra
                        + (["--speculative-num-draft-tokens", str(max_width)] if name == "domino" else []),
                        log_dir, env=env)
        try:
            server.wait_healthy()
            asyncio.run(run_level(server.url, warm, 2))
            if name == "domino":
                step_log.unlink(missing_ok=True)  # warm-up steps pay one-time costs
            for c in concurrency:
                level = asyncio.run(run_level(server.url, payloads, c))
                if level["failed"]:
                    raise RuntimeError(f"{level['failed']} requests to the {name} server failed: {level['errors']}")
                level.pop("output_ids", None)
                level["load_average"] = os.getloadavg()
                out["levels"].setdefault(name, []).append(level)
        finally:
            server.stop()
    out["step_log"] = read_step_log(step_log) if step_log.exists() else []
    return out


# --------------------------------------------------------------------------------------------------- output


def _w(width: Width) -> str:
    return PLAIN if width == PLAIN else str(width)


def _f(x: Optional[float], digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def markdown(result: dict[str, Any], table: str = "measured", dtype: Optional[str] = None,
             batch_sizes: Optional[set[int]] = None) -> str:
    """``measured``: per (N, width) measured ms, floor ms, efficiency, tokens per step, ms per token, the part
    with the largest floor (only the N in ``batch_sizes`` when given); ``slope``: ms per extra verified row,
    measured and floor; ``model``: the floor (ms) per N and width in ``dtype`` (default: the server's)."""
    if table == "model":
        dtype = dtype or result["model"]["server_dtype"]
        cells = [c for c in result["floors"] if c["dtype"] == dtype]
        widths = list(dict.fromkeys(c["width"] for c in cells))
        lines = ["| N | " + " | ".join(f"{'plain' if w == PLAIN else f'W={w}'} floor ms" for w in widths) + " |",
                 "| ---: |" + " ---: |" * len(widths)]
        for n in dict.fromkeys(c["n"] for c in cells):
            by_w = {c["width"]: c for c in cells if c["n"] == n}
            lines.append(f"| {n} | " + " | ".join(_f(by_w[w]["floor_ms"], 1) for w in widths) + " |")
        return "\n".join(lines)
    cmp_ = result["comparison"]
    if table == "slope":
        lines = ["| N | widths | measured ms per extra verified row | floor ms per row | FLOPs at peak ms per row | "
                 "measured / FLOPs |", "| ---: | --- | ---: | ---: | ---: | ---: |"]
        for s in cmp_["slopes"]:
            ratio = s["measured_ms_per_row"] / s["compute_ms_per_row"] if s["compute_ms_per_row"] else None
            lines.append(f"| {s['n']} | {', '.join(map(str, s['widths']))} | {_f(s['measured_ms_per_row'])} | "
                         f"{_f(s['floor_ms_per_row'], 2)} | {_f(s['compute_ms_per_row'], 2)} | "
                         f"{_f(ratio)}× |")
        return "\n".join(lines)
    if table != "measured":
        raise ValueError(f"table {table!r}: measured, slope or model")
    lines = ["| N | width | steps | measured ms/step | floor ms/step | efficiency | tokens/step | measured ms/token | "
             "largest floor part |", "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in cmp_["rows"]:
        if batch_sizes is not None and r["n"] not in batch_sizes:
            continue
        parts = r.get("floor_parts_ms")
        largest = f"target {_f(r['floor_ms'])}" if not parts else \
            "{} {:.1f}".format(*max(parts.items(), key=lambda kv: kv[1]))
        lines.append(f"| {r['n']} | {_w(r['width'])} | {r['steps'] if r['steps'] is not None else '–'} | "
                     f"{_f(r['measured_ms'])} | {_f(r['floor_ms'])} | {100 * r['efficiency']:.0f}% | "
                     f"{_f(r['tokens_per_step'], 2)} | {_f(r['measured_ms'] / r['tokens_per_step'])} | {largest} |")
    return "\n".join(lines)


def summary(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"machine (measured): read {m['bandwidth']['read_bytes_per_s'] / 1e9:.1f} GB/s (copy "
             f"{m['bandwidth']['copy_bytes_per_s'] / 1e9:.1f}), GEMM float32 "
             f"{m['gemm']['float32']['flop_per_s'] / 1e9:.0f} GFLOP/s, "
             f"bfloat16 {m['gemm']['bfloat16']['flop_per_s'] / 1e9:.0f} GFLOP/s "
             f"(bf16 units: {'yes' if m['cpu_has_bf16_units'] else 'no'}),"
             f" {m['threads']} threads; load average {m['load_average']['before'][0]:.2f} -> "
             f"{m['load_average']['after'][0]:.2f}"]
    if result.get("given"):
        g = result["given"]
        lines.append("floors use the given " + ", ".join(
            ([f"read bandwidth {g['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s"] if "bandwidth_bytes_per_s" in g else [])
            + [f"{k} peak {v / 1e9:.0f} GFLOP/s" for k, v in g.get("peaks_flop_per_s", {}).items()]))
    if result.get("noisy"):
        lines.append(f"NOISY: {result['noisy']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- main


def _parse_plain(spec: str) -> list[dict[str, Any]]:
    """``1=58.5,4=70`` -> plain ms per step at N."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        n, ms = item.split("=")
        out.append({"n": int(n), "ms": float(ms), "source": "--plain-ms"})
    return out


def noisy_load(before: float, during: list[float], cores: int) -> str:
    """Why the measured numbers are noisy ('' when they are not): 1-minute load averages before this script started
    and while it ran (when its own work accounts for about ``cores``)."""
    reasons = []
    if before > NOISY_LOAD:
        reasons.append(f"load average {before:.2f} before measuring (above {NOISY_LOAD})")
    if during and max(during) > cores + NOISY_EXTRA_LOAD:
        reasons.append(f"load average up to {max(during):.2f} while measuring on {cores} cores (this script's own "
                       f"work accounts for about {cores})")
    return "; ".join(reasons)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default=None, help="target directory (default: the embedded SmolLM2-135M)")
    p.add_argument("--draft", default=None, help="drafter directory (default: the embedded drafter)")
    p.add_argument("--measure", action="store_true", help="start a Domino and a plain server and measure steps")
    p.add_argument("--step-log", default=None, help="a $SGLANG_DOMINO_STEP_LOG file to compare with the floors")
    p.add_argument("--plain-ms", default="", help="plain ms per step at N, e.g. 1=58.5,4=75 (ITL medians)")
    p.add_argument("--context", type=int, default=None,
                   help="keys per verified row (default: --measure's mean prompt + max_new_tokens / 2, else 256)")
    p.add_argument("--prompts", default=None, help="JSONL prompts (default: the held-out prompts)")
    p.add_argument("--num-prompts", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--concurrency", default="1,4")
    p.add_argument("--max-width", type=int, default=max(WIDTHS), help="the Domino server's widest verify")
    p.add_argument("--port", type=int, default=31873)
    p.add_argument("--max-total-tokens", type=int, default=8192, help="the servers' KV pool (tokens)")
    p.add_argument("--bandwidth-sizes-mb", default="512,1024,2048")
    p.add_argument("--machine-json", default=None, help="reuse the machine numbers of an earlier JSON")
    p.add_argument("--bandwidth-gb-s", type=float, default=None,
                   help="use this read bandwidth instead of the measured one (recorded as given)")
    p.add_argument("--peak-gflop-s", default="", help="use these GEMM peaks, e.g. float32=179,bfloat16=401")
    p.add_argument("--render", action="store_true", help="only rewrite the .md of an existing --json")
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    if args.render:
        out_json = Path(args.json)
        report = report_markdown(json.loads(out_json.read_text()), out_json)
        out_json.with_suffix(".md").write_text(report + "\n")
        print(report)
        return 0

    from sglang_domino.embedded import HELDOUT_PROMPTS, prepare_embedded_pair
    from sglang_domino.hardware import cpu_has_bf16_units

    if args.target and args.draft:
        target_dir, draft_dir = Path(args.target), Path(args.draft)
    else:
        pair = prepare_embedded_pair()
        target_dir, draft_dir = Path(args.target or pair.target), Path(args.draft or pair.draft)
    target = Transformer.from_config(json.loads((target_dir / "config.json").read_text()))
    drafter = Drafter.from_config(json.loads((draft_dir / "config.json").read_text()))
    out_json = Path(args.json)
    out_json.parent.mkdir(parents=True, exist_ok=True)

    if args.machine_json:
        machine = json.loads(Path(args.machine_json).read_text())["machine"]
    else:
        machine = measure_machine([int(x) for x in args.bandwidth_sizes_mb.split(",")])
    bandwidth = machine["bandwidth"]["read_bytes_per_s"]
    peaks = {k: v["flop_per_s"] for k, v in machine["gemm"].items()}
    given: dict[str, Any] = {}
    if args.bandwidth_gb_s:
        bandwidth = given["bandwidth_bytes_per_s"] = 1e9 * args.bandwidth_gb_s
    for item in filter(None, (x.strip() for x in args.peak_gflop_s.split(","))):
        name, value = item.split("=")
        peaks[name] = given.setdefault("peaks_flop_per_s", {})[name] = 1e9 * float(value)
    server_dtype = "float32"
    # what rollout.draft_logits_dtype picks for a float32 target: bf16 only with bf16 units
    draft_logits = {"float32": "bfloat16" if cpu_has_bf16_units() else "float32", "bfloat16": "bfloat16"}

    steps_records: list[dict[str, Any]] = []
    plain = _parse_plain(args.plain_ms)
    servers = None
    if args.measure:
        servers = measure_servers(target_dir, draft_dir, Path(args.prompts or HELDOUT_PROMPTS), args.num_prompts,
                                  args.max_new_tokens, [int(c) for c in args.concurrency.split(",")], args.port,
                                  out_json.parent / "logs" / "roofline", args.max_width, args.max_total_tokens)
        steps_records = servers.pop("step_log")
        plain += [{"n": lv["concurrency"], "ms": lv["itl_ms"]["median"], "source":
                   f"plain server ITL median at concurrency {lv['concurrency']}"} for lv in servers["levels"]["plain"]]
        if not args.machine_json:  # the servers' time apart: the other run may have had a quieter machine
            machine = best_machine([machine, measure_machine([int(x) for x in args.bandwidth_sizes_mb.split(",")])])
            bandwidth = machine["bandwidth"]["read_bytes_per_s"] if not args.bandwidth_gb_s else bandwidth
            peaks = {k: given.get("peaks_flop_per_s", {}).get(k, v["flop_per_s"]) for k, v in machine["gemm"].items()}
    if args.step_log:
        steps_records += read_step_log(args.step_log)
    context = args.context or (round(servers["prompt_tokens_mean"] + args.max_new_tokens / 2) if servers else 256)

    result: dict[str, Any] = {
        "target": str(target_dir), "draft": str(draft_dir), "machine": machine,
        "bandwidth_bytes_per_s": bandwidth, "peaks_flop_per_s": peaks, "given": given,
        "model": {"target": asdict(target), "drafter": asdict(drafter), "context": context,
                  "server_dtype": server_dtype, "draft_logits_dtype": draft_logits,
                  "target_linear_params": target.layers * target.layer_params + target.lm_head_params,
                  "assumptions": [
                      "floor(part) = max(bytes / read bandwidth, FLOPs / torch.mm peak of the part's dtype); the "
                      "step's floor is the sum over parts",
                      "weights read once per step; KV read once per request per step; logits float32, written and "
                      "read once",
                      "context append: the step's committed tokens per request (measured rows) or 1 (model table)",
                      "norms, rotary, embeddings gathers, sampling arithmetic and the scheduler are not counted"]},
        "floors": model_floors(target, drafter, bandwidth, peaks, context, ("float32", "bfloat16"), draft_logits),
    }
    if servers is not None:
        result["servers"] = servers
    if steps_records or plain:
        result["measured_steps"] = aggregate_step_log(steps_records)
        result["measured_plain"] = plain
        result["comparison"] = compare(result["measured_steps"], plain, target, drafter, bandwidth,
                                       peaks, context, server_dtype, draft_logits[server_dtype])
    before = machine["load_average"]["before"][0]
    during = [machine["load_average"]["after"][0]]
    if servers:
        during += [lv["load_average"][0] for levels in servers["levels"].values() for lv in levels]
    result["load_average_1min"] = [before] + during
    result["noisy"] = noisy_load(before, during, os.cpu_count() or 1)
    from sglang_domino.provenance import provenance

    result["provenance"] = provenance(draft_dir, target_dir)
    out_json.write_text(json.dumps(result, indent=2))
    report = report_markdown(result, out_json)
    out_json.with_suffix(".md").write_text(report + "\n")
    print(report)
    return 0


def report_markdown(result: dict[str, Any], out_json: Path) -> str:
    """The run's ``.md``: the machine line, then the tables; inside the repository each table is wrapped in
    ``benchmarks/verify_results.py`` markers (KIND ``roofline``), so it is checked against the JSON."""
    repo = Path(__file__).resolve().parents[1]
    try:
        rel: Optional[str] = out_json.resolve().relative_to(repo).as_posix()
    except ValueError:
        rel = None

    def block(table: str, title: str) -> list[str]:
        body = markdown(result, table)
        if rel is None:
            return ["", title, "", body]
        return ["", title, "", f"<!-- results-table: roofline {rel} table={table} -->", body, "<!-- /results-table -->"]

    text = [f"# Roofline of a decode step: {out_json.stem}", "", summary(result).replace("\n", "\n\n")]
    text += block("model", f"Floor per step (ms), {result['model']['server_dtype']}, context "
                           f"{result['model']['context']} keys:")
    if "comparison" in result:
        text += block("measured", "Measured steps against their floors (efficiency = floor / measured):")
        text += block("slope", "Per extra verified row (slope of ms per step over the widths >= 2 at one N):")
    return "\n".join(text)


if __name__ == "__main__":
    sys.exit(main())
