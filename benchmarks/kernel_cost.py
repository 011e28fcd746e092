"""Cost MODEL (not a measurement) of the Domino per-block correction loop on an H100.

For Qwen3-8B dimensions it counts, per drafted block, the DRAM bytes moved and the FLOPs of

  (a) eager PyTorch over the full vocabulary (``correction_loop_eager``): per corrected slot the [N, V]
      correction is written, read back for the add, the sum written, and read again by argmax;
  (b) upstream SGLang's default block-shared top-2048 candidate pool
      (``sglang/srt/speculative/domino_utils.py::domino_greedy_rollout``, candidate_pool_size=2048):
      amax over slots, top-k, gathers of the candidates' base logits and W2 rows, then per slot a
      [N, K, r] x [N, r] bmm. Approximate: the argmax is restricted to the pool;
  (c) the fused Triton kernel of this package (``fused_correction_argmax``): W2 streamed once per
      slot, base logits read once, only [N, num_tiles] tile maxima written; exact full vocabulary.
  (c') optionally (``--prune-keep``), (c) with exact pruning keeping a given fraction of W2 tiles.
      The fraction depends on the checkpoint and the text; it is an input here, not a result.

and turns them into time floors: max(bytes / bandwidth, FLOPs / peak). Real kernels reach neither
peak (small grids, launch latency, L2 effects are ignored), so these are lower bounds for ranking
designs, not predictions. Nothing here was run on a GPU.

Modelling assumptions (also written into the JSON):
* bf16 weights and activations (2 bytes); token ids int64; fp32 for the fused kernel's scratch.
* every tensor an op reads or writes crosses DRAM once per op (no cross-op L2 reuse) - the usual
  floor for eager PyTorch; inside the fused kernels, re-reads of tiny buffers (u, tile maxima) are
  counted once.
* scattered gathers of single bf16 elements cost one 32-byte sector each (the candidate base-logit
  gather in (b)); row gathers of W2 / embeddings are contiguous.
* the GRU and W1 parts are the same math in all three; eager/upstream additionally round-trip their
  intermediates ([N, 3G] gate pre-activations, the [z | h] concatenation, SiLU input/output).
* the base-logit GEMM (lm_head over all P slots) is common to all methods and reported separately.

Usage: ``python benchmarks/kernel_cost.py [--json OUT] [--prune-keep 0.1,0.3]``.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict, dataclass, field
from typing import Optional

H100_BANDWIDTH = 3.35e12  # bytes/s, H100 SXM HBM3
H100_BF16_DENSE = 990e12  # FLOP/s, dense bf16 tensor core


@dataclass(frozen=True)
class Dims:
    hidden: int = 4096  # H (Qwen3-8B)
    gru: int = 1024  # G
    rank: int = 256  # r
    vocab: int = 151936  # V
    block: int = 16  # B; P = B - 1 proposals
    pure_draft_prefix_len: int = 1  # public checkpoints
    pool: int = 2048  # upstream candidate_pool_size default
    block_v: int = 64  # fused kernel vocab tile (GPU default)
    elem: int = 2  # bf16 bytes
    sector: int = 32  # bytes per scattered DRAM access

    @property
    def proposals(self) -> int:
        return self.block - 1

    @property
    def corrected(self) -> int:
        return max(0, self.proposals - self.pure_draft_prefix_len)

    @property
    def gru_steps(self) -> int:
        # Catch-up over [bonus, d_0 .. d_{pdl-1}] at the first corrected slot, then one per later slot.
        return self.proposals if self.corrected > 0 else 0

    @property
    def tiles(self) -> int:
        return math.ceil(self.vocab / self.block_v)


@dataclass
class Cost:
    """Bytes and FLOPs of one drafted block, split into parts."""

    parts: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (bytes, flops)

    def add(self, name: str, nbytes: float, flops: float = 0.0) -> None:
        b, f = self.parts.get(name, (0.0, 0.0))
        self.parts[name] = (b + nbytes, f + flops)

    @property
    def bytes(self) -> float:
        return sum(b for b, _ in self.parts.values())

    @property
    def flops(self) -> float:
        return sum(f for _, f in self.parts.values())


def floor_us(nbytes: float, flops: float) -> float:
    return max(nbytes / H100_BANDWIDTH, flops / H100_BF16_DENSE) * 1e6


def _gru(c: Cost, d: Dims, n: int, fused: bool) -> None:
    e, H, G = d.elem, d.hidden, d.gru
    w = 3 * G * (H + G) * e
    flops = 2 * n * 3 * G * (H + G) + 12 * n * G
    if fused:
        # Embedding rows gathered in-kernel, h read (mat-vec + blend, counted once), h' written.
        per = w + n * H * e + n * G * e + n * G * e
    else:
        # embedding -> x (write + read), two GEMMs write [N, 3G] each, the pointwise kernel reads them + h.
        per = w + 2 * n * H * e + n * G * e + 2 * (2 * n * 3 * G * e) + n * G * e + n * G * e
    c.add("gru", d.gru_steps * per, d.gru_steps * flops)


def _w1(c: Cost, d: Dims, n: int, fused: bool) -> None:
    e, H, G, r = d.elem, d.hidden, d.gru, d.rank
    w = r * (H + G) * e
    flops = 2 * n * r * (H + G) + 4 * n * r
    if fused:
        per = w + n * H * e + n * G * e + n * r * 4  # u kept as fp32
    else:
        # cat writes/reads [N, H+G]; linear writes [N, r]; SiLU reads and writes it.
        per = w + n * (H + G) * e + 2 * n * (H + G) * e + n * r * e + 2 * n * r * e
    c.add("w1", d.corrected * per, d.corrected * flops)


def _base_only_slots(c: Cost, d: Dims, n: int) -> None:
    c.add("base_only_argmax", d.pure_draft_prefix_len * (n * d.vocab * d.elem + n * 8))


def eager_full_vocab(d: Dims, n: int) -> Cost:
    c = Cost()
    e, V, r = d.elem, d.vocab, d.rank
    _gru(c, d, n, fused=False)
    _w1(c, d, n, fused=False)
    _base_only_slots(c, d, n)
    per = (
        V * r * e + n * r * e + n * V * e  # W2 GEMM: weights + u in, [N, V] correction out
        + 3 * n * V * e  # base + corr: two reads, one write
        + n * V * e + n * 8  # argmax
    )
    c.add("vocab", d.corrected * per, d.corrected * (2 * n * V * r + n * V))
    return c


def upstream_candidate_pool(d: Dims, n: int) -> Cost:
    c = Cost()
    e, V, r, K, P = d.elem, d.vocab, d.rank, min(d.pool, d.vocab), d.proposals
    _gru(c, d, n, fused=False)
    _w1(c, d, n, fused=False)
    _base_only_slots(c, d, n)
    feedback = P - 1  # base logits of slots 1..P-1 define the block-shared pool
    setup = (
        feedback * n * V * e + n * V * e  # amax over slots: read all, write [N, V]
        + n * V * e + n * K * (e + 8)  # top-k (one pass floor): values + int64 ids out
        + feedback * n * K * (d.sector + 8) + feedback * n * K * e  # scattered gather of candidate base logits
        + n * K * 8 + n * K * r * e + n * K * r * e  # W2 row gather: ids, rows in, [N, K, r] out
    )
    c.add("vocab_setup", setup, 0.0)
    per = (
        n * K * r * e + n * r * e + n * K * e  # bmm: candidate W2 rows + u in, [N, K] out
        + 3 * n * K * e  # add
        + n * K * e + n * 8 + n * 8 + n * 8  # argmax + gather of the winning id
    )
    c.add("vocab", d.corrected * per, d.corrected * (2 * n * K * r + n * K))
    return c


def fused(d: Dims, n: int, keep: Optional[float] = None) -> Cost:
    c = Cost()
    e, V, r, T = d.elem, d.vocab, d.rank, d.tiles
    _gru(c, d, n, fused=True)
    _w1(c, d, n, fused=True)
    _base_only_slots(c, d, n)
    tiles_rw = 2 * n * T * (4 + 8)  # tile (max fp32, argmax int64) written, then read by the reduce
    if keep is None:
        per = V * r * e + n * V * e + n * r * 4 + tiles_rw + n * 8 + n * 4
        flops = 2 * n * V * r + n * V
    else:
        per = (
            keep * V * r * e  # only the kept W2 tiles
            + n * V * e + n * T * 4  # tile-max pass over the base logits, [N, T] out
            + n * T * 4 + T * 4 + n * d.block_v * (r * e + e)  # lower bound: tile maxima, norms, one tile
            + keep * n * V * e  # base logits of the kept tiles
            + n * r * 4 + n * T * 4 + tiles_rw + n * 8 + n * 4
        )
        flops = keep * (2 * n * V * r + n * V) + 2 * n * d.block_v * r
    c.add("vocab", d.corrected * per, d.corrected * flops)
    return c


def common_base_logits(d: Dims, n: int) -> Cost:
    c = Cost()
    P, V, H, e = d.proposals, d.vocab, d.hidden, d.elem
    c.add("lm_head", V * H * e + n * P * H * e + n * P * V * e, 2 * n * P * H * V)
    return c


def _row(method: str, n: int, cost: Cost, label: str) -> dict:
    vb, vf = (0.0, 0.0)
    for name in ("vocab", "vocab_setup", "base_only_argmax"):
        b, f = cost.parts.get(name, (0.0, 0.0))
        vb, vf = vb + b, vf + f
    return {
        "batch": n,
        "method": method,
        "label": label,
        "bytes": cost.bytes,
        "flops": cost.flops,
        "floor_us": floor_us(cost.bytes, cost.flops),
        "bound": "memory" if cost.bytes / H100_BANDWIDTH >= cost.flops / H100_BF16_DENSE else "compute",
        "vocab_part_bytes": vb,
        "vocab_part_flops": vf,
        "vocab_part_floor_us": floor_us(vb, vf),
        "parts": {k: {"bytes": b, "flops": f} for k, (b, f) in cost.parts.items()},
    }


def build(d: Dims, batches: list[int], prune_keep: list[float]) -> dict:
    rows = []
    for n in batches:
        rows.append(_row("eager_full_vocab", n, eager_full_vocab(d, n), "(a) eager PyTorch, full vocab, exact"))
        rows.append(_row("upstream_top2048", n, upstream_candidate_pool(d, n),
                         f"(b) upstream SGLang top-{d.pool} pool, approximate"))
        rows.append(_row("fused_triton", n, fused(d, n), "(c) fused Triton, full vocab, exact"))
        for f in prune_keep:
            rows.append(_row(f"fused_prune_keep{f:g}", n, fused(d, n, keep=f),
                             f"(c') fused + pruning, keeping {f:.0%} of W2 tiles (assumed)"))
        # Break-even: the kept fraction at which pruned (c') moves as few bytes as (b).
        pool_bytes = upstream_candidate_pool(d, n).bytes
        at0, at1 = fused(d, n, keep=0.0).bytes, fused(d, n, keep=1.0).bytes
        breakeven = (pool_bytes - at0) / (at1 - at0)
        rows[-1 - len(prune_keep)]["prune_breakeven_keep_vs_top2048"] = min(max(breakeven, 0.0), 1.0)
    common = [_row("common_lm_head", n, common_base_logits(d, n), "base logits GEMM (all methods; excluded)")
              for n in batches]
    return {
        "kind": "cost_model",
        "disclaimer": "Analytic cost MODEL (bytes and FLOPs counted by hand, H100 peak numbers). "
                      "Not a measurement; no GPU was used.",
        "hardware": {"name": "H100 SXM (peak figures)", "bandwidth_bytes_per_s": H100_BANDWIDTH,
                     "bf16_dense_flops_per_s": H100_BF16_DENSE},
        "dims": {**asdict(d), "proposals": d.proposals, "corrected_slots": d.corrected,
                 "gru_steps": d.gru_steps, "vocab_tiles": d.tiles},
        "assumptions": [
            "bf16 tensors; each op's inputs/outputs cross DRAM once (no cross-op L2 reuse)",
            "scattered single-element gathers cost a 32-byte sector each",
            "floor = max(bytes/bandwidth, flops/peak); launch latency and partial occupancy ignored",
            "pruned rows use an assumed kept-tile fraction; the real fraction depends on weights and text",
            "upstream top-2048 pool restricts the argmax to the pool (not exact); (a), (c), (c') are exact",
        ],
        "rows": rows,
        "common": common,
    }


def _fmt_table(result: dict) -> str:
    lines = [
        "COST MODEL - not a measurement. Per drafted block, Qwen3-8B dims "
        f"(H {result['dims']['hidden']}, G {result['dims']['gru']}, r {result['dims']['rank']}, "
        f"V {result['dims']['vocab']}, {result['dims']['proposals']} proposals, "
        f"{result['dims']['corrected_slots']} corrected), H100 floors "
        f"({H100_BANDWIDTH / 1e12:.2f} TB/s, {H100_BF16_DENSE / 1e12:.0f} TFLOP/s bf16).",
        f"{'N':>3}  {'method':<28} {'MB/block':>10} {'GFLOP':>8} {'floor us':>9} {'bound':>7} "
        f"{'vocab MB':>9} {'vocab us':>9} {'vs (a)':>7}",
    ]
    eager = {r["batch"]: r["floor_us"] for r in result["rows"] if r["method"] == "eager_full_vocab"}
    for r in result["rows"]:
        lines.append(
            f"{r['batch']:>3}  {r['method']:<28} {r['bytes'] / 1e6:>10.1f} {r['flops'] / 1e9:>8.2f} "
            f"{r['floor_us']:>9.1f} {r['bound']:>7} {r['vocab_part_bytes'] / 1e6:>9.1f} "
            f"{r['vocab_part_floor_us']:>9.1f} {eager[r['batch']] / r['floor_us']:>6.2f}x"
        )
        if "prune_breakeven_keep_vs_top2048" in r:
            lines.append(f"{'':>5}pruning break-even vs top-{result['dims']['pool']}: keep <= "
                         f"{r['prune_breakeven_keep_vs_top2048']:.1%} of W2 tiles")
    lines.append("Common to all methods (not in the rows above): base-logit GEMM over all slots")
    for r in result["common"]:
        lines.append(f"{r['batch']:>3}  {'lm_head':<28} {r['bytes'] / 1e6:>10.1f} {r['flops'] / 1e9:>8.2f} "
                     f"{r['floor_us']:>9.1f} {r['bound']:>7}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="OUT", help="write the model's numbers to this JSON file")
    ap.add_argument("--batches", default="1,2,4,8,16,32", help="comma-separated batch sizes")
    ap.add_argument("--prune-keep", default="", help="comma-separated assumed kept-tile fractions for (c')")
    ap.add_argument("--pool", type=int, default=2048, help="upstream candidate pool size")
    ap.add_argument("--pure-draft-prefix-len", type=int, default=1)
    args = ap.parse_args(argv)
    batches = [int(x) for x in args.batches.split(",") if x.strip()]
    keeps = [float(x) for x in args.prune_keep.split(",") if x.strip()]
    if any(not 0.0 <= k <= 1.0 for k in keeps):
        ap.error("--prune-keep fractions must be in [0, 1]")
    d = Dims(pool=args.pool, pure_draft_prefix_len=args.pure_draft_prefix_len)
    result = build(d, batches, keeps)
    print(_fmt_table(result))
    if args.json:
        from sglang_domino.provenance import write_model_json

        write_model_json(args.json, result, indent=2)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
