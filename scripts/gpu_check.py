#!/usr/bin/env python
"""The prepared device check: everything this repository says about CUDA, run on one GPU in under 8 minutes.

A lent GPU machine has torch, triton, transformers, safetensors, numpy and pytest, no SGLang and no network, and
gets the working tree as files (this package is not installed there). ``scripts/gpu_check_imports.py`` maps the
package onto the tree (and blocks ``import sglang``). Steps, each recorded as a check (passed / failed / skipped):

1. ``kernel-tests``: ``pytest tests/kernels`` in a subprocess (the kernel tests run on CUDA when there is one).
2. ``gru-*``, ``oracle-*``: the Triton GRU step and the fused correction loop at the embedded drafter's head
   (SmolLM2-135M: H 576, V 49152, GRU 256, rank 64, from its config.json) and at Qwen3-8B head sizes (H 4096,
   V 151936, GRU 1024, rank 256: ``benchmarks/kernel_cost.py``'s ``Dims``), block 16 (P = 15), bf16, against an
   fp32 oracle (the eager loop on the same bf16 values upcast): tokens must be equal wherever the oracle's top-2
   gap exceeds a bf16 tolerance, per slot with the oracle's own history (teacher-forced, plus the pruned argmax,
   which must equal the unpruned one exactly) and along the whole chain up to each row's first near-tie.
3. ``graph-replay``: :class:`CorrectionLoopGraphRunner` against the uncaptured loop at batch sizes 1, 2, 3, 4,
   31, 32, 33, 48 (bucket edges; beyond the largest bucket it must fall back), two draws each, the zero-copy
   ``static_inputs`` path, and the CUDA memory the capture adds.
4. ``offline-*``: ``speculative_generate`` end to end on the device: the embedded drafter over a random-weight
   target of the embedded target's shape (SmolLM2-135M, tied embeddings, float32) must equal plain greedy
   decoding token for token; the tiny predictable pair of ``benchmarks/tiny_pair.py`` (drafts accepted) must too,
   with the same accept lengths as the eager CPU run.
5. ``timings``: ms per drafted block, eager / fused / graph, per batch size N (1, 4, 16, 32, 64) at Qwen3-8B sizes.

Writes ``gpu_check.json`` (checks, failed count, timings, versions) and ``gpu_check.log`` into ``--out``; exits 1
when a check failed. A wall-clock guard (``--budget-s``, 480) skips the remaining heavy steps when time runs low;
they are recorded as skipped, not passed.

``TRITON_INTERPRET=1 python scripts/gpu_check.py --small --out DIR`` runs the same checks on a CPU at small sizes
(tiny vocabulary and hidden sizes, a tiny random drafter and target) through the Triton interpreter; there the
graph runner falls back to the eager reference (the JSON says graphs were not captured). CI runs it
(``tests/test_gpu_check.py``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
import gpu_check_imports  # noqa: E402  (maps sglang_domino onto the tree, blocks sglang)

REPO = gpu_check_imports.REPO
EMBEDDED_DRAFTER = REPO / "sglang_domino" / "embedded" / "drafter"
# The embedded target (SmolLM2-135M-Instruct) as converted by sglang_domino/embedded/target.py; only its shape is
# used (the weights are not in the tree).
SMOLLM2_TARGET = dict(
    hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
    head_dim=64, vocab_size=49152, max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
    tie_word_embeddings=True, hidden_act="silu", bos_token_id=1, eos_token_id=2, pad_token_id=2,
)
DEFAULT_BUDGET_S = 480.0
GRAPH_SIZES = (1, 2, 3, 4, 31, 32, 33, 48)
log = logging.getLogger("gpu_check")


@dataclass(frozen=True)
class HeadDims:
    """A Domino head and block: hidden H, GRU hidden G, rank r, vocabulary V, proposals P (block − 1)."""

    name: str
    hidden: int
    gru: int
    rank: int
    vocab: int
    proposals: int = 15
    pure_draft_prefix_len: int = 1


def embedded_head_dims() -> HeadDims:
    cfg = json.loads((EMBEDDED_DRAFTER / "config.json").read_text())
    dflash = cfg.get("dflash_config", {})
    return HeadDims("smollm2-135m", int(cfg["hidden_size"]), int(dflash["gru_hidden_dim"]), int(dflash["emb_dim"]),
                    int(cfg["vocab_size"]), int(cfg["block_size"]) - 1, int(dflash["pure_draft_prefix_len"]))


QWEN3_8B = HeadDims("qwen3-8b", hidden=4096, gru=1024, rank=256, vocab=151936)  # benchmarks/kernel_cost.py Dims
SMALL_A = HeadDims("small-a", hidden=64, gru=32, rank=16, vocab=300, proposals=5)
SMALL_B = HeadDims("small-b", hidden=96, gru=48, rank=24, vocab=1000, proposals=7, pure_draft_prefix_len=2)


@dataclass
class Plan:
    """What a run checks: full sizes on a GPU, small ones with ``--small``."""

    oracle: list[tuple[HeadDims, int]]  # (dims, N)
    gru: list[tuple[HeadDims, tuple[int, ...]]]
    graph_dims: HeadDims
    timing_dims: HeadDims
    timing_ns: tuple[int, ...]
    timing_iters: int
    max_new_tokens: int
    embedded_full: bool  # the embedded drafter + a SmolLM2-shaped target, else tiny random ones
    estimates_s: dict[str, float]  # rough cost per step on the plan's device, for the wall-clock guard


def make_plan(small: bool) -> Plan:
    if small:
        return Plan(oracle=[(SMALL_A, 3), (SMALL_B, 5)], gru=[(SMALL_A, (1, 33)), (SMALL_B, (5,))],
                    graph_dims=SMALL_A, timing_dims=SMALL_B, timing_ns=(1, 4), timing_iters=2, max_new_tokens=16,
                    embedded_full=False,
                    estimates_s=dict(tests=40, gru=3, oracle=5, graph=8, offline=10, tiny_pair=8, timings=10))
    emb = embedded_head_dims()
    return Plan(oracle=[(emb, 1), (emb, 16), (QWEN3_8B, 4), (QWEN3_8B, 32)],
                gru=[(emb, (1, 33)), (QWEN3_8B, (1, 32, 64))],
                graph_dims=QWEN3_8B, timing_dims=QWEN3_8B, timing_ns=(1, 4, 16, 32, 64), timing_iters=20,
                max_new_tokens=48, embedded_full=True,
                estimates_s=dict(tests=120, gru=8, oracle=15, graph=40, offline=40, tiny_pair=20, timings=40))


# ------------------------------------------------------------------------------------------------ check runner


class Skip(Exception):
    """A check that cannot run here; the message says why (recorded as skipped)."""


class Checks:
    def __init__(self, budget_s: float) -> None:
        self.start = time.monotonic()
        self.budget_s = budget_s
        self.results: list[dict[str, Any]] = []

    def remaining(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def run(self, name: str, fn: Callable[[], tuple[bool, dict[str, Any]]], estimate_s: float) -> Optional[dict]:
        left = self.remaining()
        if left < estimate_s:
            return self._record(name, "skipped", {"reason": f"wall-clock guard: {left:.0f} s of the {self.budget_s:.0f} s "
                                                            f"budget left, this step needs about {estimate_s:.0f} s"}, 0.0)
        t0 = time.monotonic()
        log.info("[%5.0f s] %s ...", time.monotonic() - self.start, name)
        try:
            passed, detail = fn()
            status = "passed" if passed else "failed"
        except Skip as exc:
            status, detail = "skipped", {"reason": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a crashing check is a failed check, the rest still run
            status = "failed"
            detail = {"error": repr(exc), "traceback": traceback.format_exc(limit=8)[-3000:]}
        return self._record(name, status, detail, time.monotonic() - t0)

    def _record(self, name: str, status: str, detail: dict, seconds: float) -> dict:
        entry = {"name": name, "passed": status == "passed", "status": status, "seconds": round(seconds, 2),
                 "detail": detail}
        self.results.append(entry)
        brief = {k: v for k, v in detail.items() if k in ("reason", "error", "summary")}
        log.info("  %-8s %s (%.1f s) %s", status.upper(), name, seconds, json.dumps(brief) if brief else "")
        if status == "failed":
            log.info("  detail: %s", json.dumps(detail, default=str)[:4000])
        return entry


# ---------------------------------------------------------------------------------------------- random tensors


def _randn(gen, device, *shape: int, scale: float = 1.0):
    import torch

    return torch.randn(*shape, generator=gen, device=device) * scale


def random_head(d: HeadDims, device, dtype, seed: int):
    """A head (and embedding table) whose correction is comparable to the base logits' spread."""
    import torch

    from sglang_domino.kernels.reference import DominoHeadWeights

    gen = torch.Generator(device=device).manual_seed(seed)
    head = DominoHeadWeights(
        w_ih=_randn(gen, device, 3 * d.gru, d.hidden, scale=d.hidden ** -0.5).to(dtype),
        w_hh=_randn(gen, device, 3 * d.gru, d.gru, scale=d.gru ** -0.5).to(dtype),
        w1=_randn(gen, device, d.rank, d.hidden + d.gru, scale=2 * (d.hidden + d.gru) ** -0.5).to(dtype),
        w2=_randn(gen, device, d.vocab, d.rank, scale=2 * d.rank ** -0.5).to(dtype),
    )
    embed = _randn(gen, device, d.vocab, d.hidden).to(dtype)
    return head, embed


def random_inputs(d: HeadDims, n: int, device, dtype, seed: int):
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    base = _randn(gen, device, n, d.proposals, d.vocab, scale=2.0).to(dtype)
    z = _randn(gen, device, n, d.proposals, d.hidden).to(dtype)
    bonus = torch.randint(0, d.vocab, (n,), generator=gen, device=device)
    return base, z, bonus


def _f32(head):
    from sglang_domino.kernels.reference import DominoHeadWeights

    return DominoHeadWeights(*(t.float() for t in (head.w_ih, head.w_hh, head.w1, head.w2)))


def torch_no_grad(fn: Callable) -> Callable:
    def wrapped(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapped


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------------- step 1


def run_group(cmd: list[str], timeout_s: float, **kwargs) -> tuple[Optional[int], str]:
    """Run ``cmd`` in its own process group; on timeout kill the whole group. -> (returncode or None, output)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            **kwargs)
    try:
        output, _ = proc.communicate(timeout=max(timeout_s, 1))
        return proc.returncode, output
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        output, _ = proc.communicate()
        return None, output


def check_kernel_tests(out: Path, timeout_s: float, paths: list[str]) -> tuple[bool, dict]:
    junit = out / "kernel_tests.xml"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SCRIPTS), *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, "-m", "pytest", "-p", "gpu_check_imports", "-p", "no:cacheprovider", *paths,
           "-q", "-rfEs", f"--junitxml={junit}"]
    returncode, output = run_group(cmd, timeout_s, cwd=REPO, env=env)
    (out / "kernel_tests.log").write_text(output)
    if returncode is None:
        return False, {"error": f"pytest {' '.join(paths)} ran past {timeout_s:.0f} s", "output_tail": output[-3000:]}
    proc = subprocess.CompletedProcess(cmd, returncode, output, "")
    counts: dict[str, Any] = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed, needs_sglang = [], []
    try:
        for case in ET.parse(junit).getroot().iter("testcase"):
            counts["tests"] += 1
            name = f"{case.get('classname')}::{case.get('name')}"
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            if case.find("skipped") is not None:
                counts["skipped"] += 1
            elif bad is not None:
                # A test that imports SGLang cannot run on the device machines (none installed): not a kernel fault.
                text = f"{bad.get('message', '')}\n{bad.text or ''}"
                (needs_sglang if gpu_check_imports.BLOCKED_MESSAGE in text else failed).append(name)
                counts["failures" if bad.tag == "failure" else "errors"] += 1
    except (OSError, ET.ParseError) as exc:
        counts["junit_error"] = repr(exc)
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    skips = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    passed = not failed and "junit_error" not in counts and counts["passed"] > 0 and (
        proc.returncode == 0 or len(needs_sglang) == counts["failures"] + counts["errors"])
    return passed, {"paths": paths, "summary": f"{counts['passed']} passed, {len(failed)} failed, {len(needs_sglang)} need SGLang "
                               f"(not here), {counts['skipped']} skipped", "returncode": proc.returncode, **counts,
                    "failed_tests": failed, "tests_needing_sglang": needs_sglang, "skip_reasons": skips[:20],
                    "output_tail": proc.stdout[-2000:]}


# --------------------------------------------------------------------------------------------------- step 2


def check_gru(d: HeadDims, ns: tuple[int, ...], device) -> tuple[bool, dict]:
    """The Triton GRU step (strided x, the strided token-column variant) against fp32 aten.gru_cell."""
    import torch

    from sglang_domino.kernels.triton_gru import gru_cell, gru_cell_tokens

    head, embed = random_head(d, device, torch.bfloat16, seed=11)
    rows = []
    ok = True
    for n in ns:
        gen = torch.Generator(device=device).manual_seed(100 + n)
        wide = _randn(gen, device, n, d.hidden + 8).to(torch.bfloat16)
        x = wide[:, 4:4 + d.hidden]  # row stride H + 8: a non-contiguous view
        h = _randn(gen, device, n, d.gru, scale=0.5).to(torch.bfloat16)
        block_ids = torch.randint(0, d.vocab, (n, 3), generator=gen, device=device)
        tokens = block_ids[:, 1]  # a column view (stride 3)
        ref = torch.ops.aten.gru_cell.default(x.float(), h.float(), head.w_ih.float(), head.w_hh.float(), None, None)
        ref_tok = torch.ops.aten.gru_cell.default(embed[tokens].float(), h.float(), head.w_ih.float(),
                                                  head.w_hh.float(), None, None)
        got = gru_cell(x, h, head.w_ih, head.w_hh).float()
        got_tok = gru_cell_tokens(tokens, embed, h, head.w_ih, head.w_hh).float()
        # The kernel rounds only its output to bf16: within half a bf16 ulp (<= 2^-8 relative) of the fp32 result,
        # plus fp32 summation-order differences over H terms (1e-4 absolute).
        err = ((got - ref).abs() / (ref.abs() * 2.0**-8 + 1e-4)).max().item()
        err_tok = ((got_tok - ref_tok).abs() / (ref_tok.abs() * 2.0**-8 + 1e-4)).max().item()
        rows.append({"N": n, "max_err_in_bf16_ulps_strided_x": round(err, 3), "max_err_tokens": round(err_tok, 3)})
        ok &= err <= 1.0 and err_tok <= 1.0
    return ok, {"dims": asdict(d), "rows": rows, "tolerance": "|got - fp32| <= 2^-8 |fp32| + 1e-4"}


class _Oracle:
    """fp32 eager correction loop that records, per slot, the corrected logits' top-2 gap and the tolerance."""

    def __init__(self, base32) -> None:
        self.base32 = base32
        self.gaps: list = []
        self.tols: list = []

    def __call__(self, logits, slot: int):
        import torch

        top2 = logits.topk(2, dim=-1).values
        corr = (logits - self.base32[:, slot]).abs().amax(dim=-1)
        self.gaps.append(top2[:, 0] - top2[:, 1])
        # bf16 h and u in the fused path are off by ~2^-9 relative: 2^-7 of the largest correction covers it
        # several times over; the second term covers fp32 summation order.
        self.tols.append(corr * 2.0**-7 + top2[:, 0].abs() * 2.0**-16)
        return torch.argmax(logits, dim=-1), None


def check_oracle(d: HeadDims, n: int, device, heads: dict) -> tuple[bool, dict]:
    import torch

    from sglang_domino.kernels.cuda_graph import correction_loop_fused
    from sglang_domino.kernels.reference import correction_loop_eager
    from sglang_domino.kernels.triton_correction import fused_correction_argmax
    from sglang_domino.kernels.triton_gru import gru_cell_tokens

    if d.name not in heads:
        heads.clear()  # one head's tables at a time (Qwen3-8B: 1.2 GB bf16 + 2.5 GB fp32 embedding)
        head, embed = random_head(d, device, torch.bfloat16, seed=7)
        heads[d.name] = (head, embed, _f32(head), embed.float())
    head, embed, head32, embed32 = heads[d.name]
    base, z, bonus = random_inputs(d, n, device, torch.bfloat16, seed=1000 + n)
    base32 = base.float()
    oracle = _Oracle(base32)
    with torch.no_grad():
        ref, _ = correction_loop_eager(base32, z.float(), bonus, embed32, head32, d.pure_draft_prefix_len, oracle)
    gaps, tols = torch.stack(oracle.gaps, 1), torch.stack(oracle.tols, 1)
    clear = gaps > tols  # [N, P] slots whose token is decided beyond bf16 error

    # Per slot, teacher-forced: the fused argmax on the bf16 GRU state fed the oracle's tokens.
    pdl = d.pure_draft_prefix_len
    h = torch.zeros((n, d.gru), dtype=torch.bfloat16, device=device)
    slot_tokens, pruned_equal = [], True
    for k in range(d.proposals):
        if k < pdl:
            slot_tokens.append(torch.argmax(base[:, k], dim=-1))
            continue
        for prev in ([bonus, *ref[:, :k].unbind(1)] if k == pdl else [ref[:, k - 1]]):
            h = gru_cell_tokens(prev, embed, h, head.w_ih, head.w_hh)
        tok, _ = fused_correction_argmax(base[:, k], z[:, k], h, head.w1, head.w2)
        tok_pruned, _ = fused_correction_argmax(base[:, k], z[:, k], h, head.w1, head.w2, prune=True)
        pruned_equal &= bool(torch.equal(tok, tok_pruned))
        slot_tokens.append(tok)
    per_slot = torch.stack(slot_tokens, 1)
    slot_mismatch = int(((per_slot != ref) & clear).sum())

    # The whole chain, compared up to each row's first near-tie (after it the histories may differ legitimately).
    chain = correction_loop_fused(base, z, bonus, embed, head, pdl)
    before_tie = torch.cumsum((~clear).int(), dim=1) == 0
    chain_mismatch = int(((chain != ref) & before_tie).sum())
    _sync(device)
    detail = {
        "dims": asdict(d), "N": n, "dtype": "bfloat16 (oracle: the same values in float32, eager loop)",
        "slots": n * d.proposals, "slots_clear": int(clear.sum()), "per_slot_mismatches_at_clear_slots": slot_mismatch,
        "chain_slots_compared": int(before_tie.sum()), "chain_mismatches": chain_mismatch,
        "pruned_equals_unpruned": pruned_equal,
        "median_top2_gap": round(float(gaps.median()), 4), "median_tolerance": round(float(tols.median()), 4),
    }
    detail["summary"] = (f"{slot_mismatch} of {detail['slots_clear']} clear slots differ; chain {chain_mismatch} of "
                         f"{detail['chain_slots_compared']}")
    # A vacuous comparison is no pass: most slots must be decided beyond the tolerance.
    enough = detail["slots_clear"] >= 0.5 * detail["slots"]
    if not enough:
        detail["error"] = "fewer than half of the slots are beyond the tolerance: the check says nothing"
    return slot_mismatch == 0 and chain_mismatch == 0 and pruned_equal and enough, detail


# --------------------------------------------------------------------------------------------------- step 3


def _make_runner(d: HeadDims, head, embed, dtype):
    """A CorrectionLoopGraphRunner, passing only the keywords its constructor takes (the API is evolving)."""
    from sglang_domino.kernels.cuda_graph import CorrectionLoopGraphRunner

    params = inspect.signature(CorrectionLoopGraphRunner).parameters
    kwargs = dict(num_proposals=d.proposals, vocab_size=d.vocab, hidden_size=d.hidden, base_dtype=dtype,
                  z_dtype=dtype)
    missing = [k for k in kwargs if k not in params]
    if missing:
        raise Skip(f"CorrectionLoopGraphRunner no longer takes {missing}; update scripts/gpu_check.py")
    return CorrectionLoopGraphRunner(head, embed, d.pure_draft_prefix_len, **kwargs)


def _runner_failures(runner) -> dict:
    failed = getattr(runner, "failed", None)
    if failed:
        return {str(k): v for k, v in failed.items()}
    reason = getattr(runner, "disabled_reason", None)
    return {"all": reason} if reason else {}


def check_graph_replay(d: HeadDims, device, state: dict) -> tuple[bool, dict]:
    import torch

    from sglang_domino.kernels.cuda_graph import correction_loop_fused

    on_gpu = device.type == "cuda"
    # On CPU the runner runs the eager fp32 reference: compare in fp32 (bf16 eager rounds differently by design).
    dtype = torch.bfloat16 if on_gpu else torch.float32
    head, embed = random_head(d, device, dtype, seed=21)
    runner = _make_runner(d, head, embed, dtype)
    buckets = tuple(runner.buckets)
    detail: dict[str, Any] = {"dims": asdict(d), "dtype": str(dtype).replace("torch.", ""), "buckets": list(buckets)}
    if on_gpu:
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        if hasattr(runner, "capture_all"):
            report = runner.capture_all()
            detail["capture_report"] = {k: v for k, v in vars(report).items()} if hasattr(report, "__dict__") else str(report)
        else:
            runner.capture()
        _sync(device)
        detail["capture_seconds"] = round(time.perf_counter() - t0, 2)
        after, peak = torch.cuda.memory_allocated(device), torch.cuda.max_memory_allocated(device)
        static = max(buckets) * d.proposals * (d.vocab + d.hidden) * dtype.itemsize + max(buckets) * (1 + d.proposals) * 8
        detail["memory"] = {"allocated_before_mib": round(before / 2**20, 1),
                            "capture_added_mib": round((after - before) / 2**20, 1),
                            "capture_peak_added_mib": round((peak - before) / 2**20, 1),
                            "static_buffers_expected_mib": round(static / 2**20, 1)}
        detail["graphs_captured"] = sorted(getattr(runner, "captured_buckets", getattr(runner, "_graphs", {})))
    else:
        detail["graphs_captured"] = []
        detail["note"] = ("CPU: no CUDA graph was captured; CorrectionLoopGraphRunner.run falls back to the eager "
                          "reference, compared here with the uncaptured fused loop (Triton interpreter)")
    rows, ok = [], True
    for n in GRAPH_SIZES:
        for draw in range(2):
            base, z, bonus = random_inputs(d, n, device, dtype, seed=3000 + 10 * n + draw)
            expected = correction_loop_fused(base, z, bonus, embed, head, d.pure_draft_prefix_len)
            got = runner.run(base, z, bonus)
            equal = bool(torch.equal(got, expected))
            ok &= equal
            if draw == 0:
                rows.append({"N": n, "bucket": runner.bucket_for(n), "equal": equal})
            else:
                rows[-1]["equal_second_draw"] = equal
    if on_gpu:  # the zero-copy path: write into the static buffers, run on the views
        n = 3
        base, z, bonus = random_inputs(d, n, device, dtype, seed=4242)
        sb, sz, sbonus = runner.static_inputs(n)
        sb.copy_(base), sz.copy_(z), sbonus.copy_(bonus)
        zero_copy = bool(torch.equal(runner.run(sb, sz, sbonus),
                                     correction_loop_fused(base, z, bonus, embed, head, d.pure_draft_prefix_len)))
        detail["zero_copy_static_inputs_equal"] = zero_copy
        ok &= zero_copy
    failures = _runner_failures(runner)
    detail.update(rows=rows, capture_failures=failures)
    if on_gpu and failures:
        ok = False
    detail["summary"] = f"{sum(r['equal'] and r.get('equal_second_draw', True) for r in rows)} of {len(rows)} sizes equal"
    state["runner"] = (d, runner, head, embed, dtype)
    return ok, detail


# --------------------------------------------------------------------------------------------------- step 4


@torch_no_grad
def _smollm2_shaped_target(device):
    """Random weights in the embedded target's shapes. Not tied: with tied random embeddings every token votes for
    itself and greedy decoding repeats one token; here (as in benchmarks/tiny_pair.py) token t votes for perm(t)
    through a permuted copy of the embedding, and the 30 random layers bend that, so the output varies."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{**SMOLLM2_TARGET, "tie_word_embeddings": False})
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).float().eval()
        embed = torch.randn(config.vocab_size, config.hidden_size)
        perm = torch.randperm(config.vocab_size)
        model.model.embed_tokens.weight.copy_(embed)
        model.lm_head.weight.copy_(0.15 * embed[torch.argsort(perm)])
    return model


def _tiny_random_pair(device):
    """A tiny random drafter (tests/conftest.py's tiny_config) and a 4-layer Llama target of its shapes."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from sglang_domino.config import DominoConfig
    from sglang_domino.modeling import DominoDrafter

    cfg = DominoConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, vocab_size=96, block_size=8, target_layer_ids=[0, 2],
                       num_target_layers=4, mask_token_id=95, projector_type="domino", shift_label=True,
                       pure_draft_prefix_len=1, gru_hidden_dim=32, emb_dim=24, rope_theta=10000.0)
    torch.manual_seed(0)
    drafter = DominoDrafter(cfg).to(device).eval()
    target = LlamaForCausalLM(LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rope_theta=10000.0,
        tie_word_embeddings=False)).to(device).float().eval()
    return drafter, target


def _graph_runners_used() -> Optional[list[dict]]:
    """The cached graph runners of kernels.correction_loop (None when the module keeps none we can read)."""
    from sglang_domino.kernels import cuda_graph

    cache = getattr(cuda_graph, "_RUNNERS", None)
    if cache is None:
        return None
    return [{"buckets_captured": sorted(getattr(r, "captured_buckets", getattr(r, "_graphs", {}))),
             "failures": _runner_failures(r)} for r in cache.values()]


def check_offline_embedded(device, plan: Plan) -> tuple[bool, dict]:
    import torch

    from sglang_domino.checkpoint import load_drafter
    from sglang_domino.offline import plain_generate, speculative_generate

    on_gpu = device.type == "cuda"
    if plan.embedded_full:
        drafter = load_drafter(EMBEDDED_DRAFTER, device=device, dtype=torch.bfloat16 if on_gpu else torch.float32)
        target = _smollm2_shaped_target(device)
        what = ("embedded drafter + random-weight target in SmolLM2-135M's shapes (float32; lm_head untied: a "
                "permuted copy of the embedding)")
    else:
        drafter, target = _tiny_random_pair(device)
        what = "tiny random drafter + tiny random Llama target (float32)"
    vocab = target.config.vocab_size
    gen = torch.Generator().manual_seed(5)
    rows, ok = [], True
    for length in (12, 29):
        ids = torch.randint(3, vocab, (1, length), generator=gen).to(device)
        plain = plain_generate(target, ids, plan.max_new_tokens)
        spec = speculative_generate(target, drafter, ids, plan.max_new_tokens)
        equal = spec.tokens == plain
        ok &= equal
        first_diff = next((i for i, (a, b) in enumerate(zip(spec.tokens, plain)) if a != b), None)
        rows.append({"prompt_tokens": length, "new_tokens": len(plain), "equal_plain_greedy": equal,
                     "first_difference": first_diff, "tau": round(spec.tau, 3), "distinct_tokens": len(set(plain))})
    detail = {"pair": what, "device": str(device), "rows": rows,
              "drafter_dtype": str(next(drafter.parameters()).dtype).replace("torch.", "")}
    if on_gpu:
        used = _graph_runners_used()
        detail["graph_runners"] = used
        if used is not None and not used:
            ok = False
            detail["error"] = "drafting on CUDA never reached the graph runner (kernels.correction_loop took eager)"
    detail["summary"] = f"{sum(r['equal_plain_greedy'] for r in rows)} of {len(rows)} prompts equal plain greedy"
    return ok, detail


def check_offline_tiny_pair(device, plan: Plan) -> tuple[bool, dict]:
    """Accepted blocks on the device: the predictable pair, against plain greedy and the eager CPU run."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from sglang_domino.benchmarks.tiny_pair import build_pair
    from sglang_domino.checkpoint import load_drafter
    from sglang_domino.offline import plain_generate, speculative_generate

    with tempfile.TemporaryDirectory(prefix="gpu_check_pair_") as tmp:
        pair = build_pair(Path(tmp))
        tok = AutoTokenizer.from_pretrained(pair.target)
        models = {}
        for dev in {device, torch.device("cpu")}:
            models[dev] = (LlamaForCausalLM.from_pretrained(pair.target, dtype=torch.float32).to(dev).eval(),
                           load_drafter(pair.drafter, device=dev, dtype=torch.float32))
    rows, ok = [], True
    for text in ("The quick brown fox jumps over", "Speculative decoding drafts several tokens"):
        ids = torch.tensor([tok.encode(text)])
        runs = {}
        for dev, (target, drafter) in models.items():
            x = ids.to(dev)
            # float32 drafting logits on both devices, so device and CPU drafts are comparable.
            spec = speculative_generate(target, drafter, x, plan.max_new_tokens, eos_token_ids=[pair.eos_token_id],
                                        draft_logits_dtype="float32")
            runs[dev.type] = (spec, plain_generate(target, x, plan.max_new_tokens, [pair.eos_token_id]))
        spec, plain = runs[device.type]
        cpu_spec = runs["cpu"][0]
        row = {"prompt": text, "equal_plain_greedy": spec.tokens == plain, "tau": round(spec.tau, 3),
               "accept_lengths_equal_cpu_eager": spec.accept_lengths == cpu_spec.accept_lengths,
               "tau_cpu_eager": round(cpu_spec.tau, 3)}
        ok &= row["equal_plain_greedy"] and row["accept_lengths_equal_cpu_eager"] and spec.tau > 1.0
        rows.append(row)
    detail = {"pair": "benchmarks/tiny_pair.py (predictable target, hand-set Domino head), float32",
              "device": str(device), "rows": rows}
    if device.type == "cuda":
        detail["graph_runners"] = _graph_runners_used()
    detail["summary"] = ", ".join(f"τ {r['tau']} (CPU eager {r['tau_cpu_eager']})" for r in rows)
    return ok, detail


# --------------------------------------------------------------------------------------------------- step 5


def _time_ms(fn: Callable[[], Any], device, iters: int) -> float:
    for _ in range(2):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / iters * 1e3


def check_timings(plan: Plan, device, state: dict, results: dict) -> tuple[bool, dict]:
    import torch

    from sglang_domino.kernels.cuda_graph import correction_loop_fused
    from sglang_domino.kernels.reference import correction_loop_eager

    d = plan.timing_dims
    on_gpu = device.type == "cuda"
    prev = state.get("runner")
    if prev is not None and prev[0] == d and prev[4] == (torch.bfloat16 if on_gpu else torch.float32):
        _, runner, head, embed, dtype = prev
    else:
        dtype = torch.bfloat16 if on_gpu else torch.float32
        head, embed = random_head(d, device, dtype, seed=21)
        runner = _make_runner(d, head, embed, dtype)
    rows = []
    for n in plan.timing_ns:
        base, z, bonus = random_inputs(d, n, device, dtype, seed=5000 + n)
        pdl = d.pure_draft_prefix_len
        with torch.no_grad():
            row = {"N": n,
                   "eager_ms": _time_ms(lambda: correction_loop_eager(base, z, bonus, embed, head, pdl), device,
                                        plan.timing_iters),
                   "fused_ms": _time_ms(lambda: correction_loop_fused(base, z, bonus, embed, head, pdl), device,
                                        plan.timing_iters),
                   "graph_ms": _time_ms(lambda: runner.run(base, z, bonus), device, plan.timing_iters)}
        bucket = runner.bucket_for(n)
        row = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}
        row["graph_bucket"] = bucket
        row["graph_replayed"] = bool(on_gpu and bucket is not None and bucket in getattr(
            runner, "captured_buckets", getattr(runner, "_graphs", {})))
        rows.append(row)
    results["timings"] = {"dims": asdict(d), "dtype": str(dtype).replace("torch.", ""), "iters": plan.timing_iters,
                          "unit": "ms per drafted block (P proposals, correction loop only)", "rows": rows,
                          "note": ("graph_ms: CorrectionLoopGraphRunner.run (input copy + replay + output clone); "
                                   "N above the largest bucket runs uncaptured" if on_gpu else
                                   "CPU: fused = Triton interpreter, graph = the runner's eager fallback; not speeds")}
    return True, {"summary": "; ".join(f"N={r['N']}: eager {r['eager_ms']}, fused {r['fused_ms']}, graph "
                                       f"{r['graph_ms']} ms" for r in rows)}


# ------------------------------------------------------------------------------------------------------ main


def versions(device) -> dict[str, Any]:
    import torch
    import triton
    import transformers

    record = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
              "transformers": transformers.__version__, "cuda": torch.version.cuda,
              "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "triton_interpreter": os.environ.get("TRITON_INTERPRET") == "1"}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        record["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        record["capability"] = f"{props.major}.{props.minor}"
    return record


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="folder for gpu_check.json and gpu_check.log")
    ap.add_argument("--small", action="store_true", help="small sizes (CPU under TRITON_INTERPRET=1, or a quick GPU run)")
    ap.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="wall-clock budget (default 480)")
    ap.add_argument("--kernel-tests", nargs="+", default=["tests/kernels"],
                    help="what step 1 runs under pytest (default tests/kernels; CI passes one file: it runs the "
                         "whole folder itself)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s",
                        handlers=[logging.StreamHandler(sys.stdout), logging.FileHandler(args.out / "gpu_check.log", "w")])
    checks = Checks(args.budget_s)

    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        if not args.small:
            log.error("no CUDA device: run with --small (and TRITON_INTERPRET=1) on a CPU")
            return 2
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            log.error("triton was imported before TRITON_INTERPRET=1 could be set")
            return 2
        os.environ["TRITON_INTERPRET"] = "1"  # before the first import of triton in this process
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    else:
        torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 oracle and targets in true fp32
        torch.backends.cudnn.allow_tf32 = False
    plan = make_plan(args.small)
    results: dict[str, Any] = {"script": "scripts/gpu_check.py", "argv": sys.argv[1:], "small": args.small,
                               "budget_s": args.budget_s, "versions": versions(device),
                               "layout": gpu_check_imports.check_layout()}
    log.info("gpu_check on %s (%s), %s sizes; versions %s", device, results["versions"].get("gpu") or "CPU",
             "small" if args.small else "full", json.dumps(results["versions"]))
    est = plan.estimates_s
    # What the later steps need, so the tests cannot eat their time.
    reserve = (len(plan.gru) * est["gru"] + len(plan.oracle) * est["oracle"] + est["graph"] + est["offline"]
               + est["tiny_pair"] + est["timings"])
    checks.run("kernel-tests", lambda: check_kernel_tests(args.out, checks.remaining() - reserve, args.kernel_tests),
               est["tests"])
    for d, ns in plan.gru:
        checks.run(f"gru-{d.name}", lambda d=d, ns=ns: check_gru(d, ns, device), est["gru"])
    heads: dict = {}
    for d, n in plan.oracle:
        checks.run(f"oracle-{d.name}-N{n}", lambda d=d, n=n: check_oracle(d, n, device, heads), est["oracle"])
    heads.clear()
    state: dict = {}
    checks.run("graph-replay", lambda: check_graph_replay(plan.graph_dims, device, state), est["graph"])
    checks.run("offline-embedded" if plan.embedded_full else "offline-tiny-random",
               lambda: check_offline_embedded(device, plan), est["offline"])
    checks.run("offline-tiny-pair", lambda: check_offline_tiny_pair(device, plan), est["tiny_pair"])
    checks.run("timings", lambda: check_timings(plan, device, state, results), est["timings"])

    statuses = [c["status"] for c in checks.results]
    results.update(checks=checks.results, failed=statuses.count("failed"), skipped=statuses.count("skipped"),
                   passed=statuses.count("passed"), seconds=round(time.monotonic() - checks.start, 1))
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    log.info("%d passed, %d failed, %d skipped in %.0f s -> %s", results["passed"], results["failed"],
             results["skipped"], results["seconds"], args.out / "gpu_check.json")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
