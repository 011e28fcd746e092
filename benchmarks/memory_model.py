"""Memory MODEL (arithmetic, not a measurement): the extra peak GPU memory Domino's drafting adds, per batch size.

Qwen3-8B sizes (V 151936, H 4096, GRU 1024, rank 256; ``benchmarks/kernel_cost.py``'s ``Dims``), block 16 so
P = 15 proposals, bf16 drafting. It counts the tensors the code materialises, read from the source:

* graph runner (``kernels/cuda_graph.py``): static inputs allocated once at the largest bucket Nmax (32 with the
  default buckets; with SGLang's decode graph sizes, the server's largest): base logits [Nmax, P, V] bf16, z
  [Nmax, P, H] bf16, bonus [Nmax] and tokens [Nmax, P] int64. Counted in both modes: a runner captured at server
  start keeps them whatever a batch samples.
* ``rollout.draft_from_hidden``: the fresh base logits of every step, one GEMM -> [N, P, V] bf16.
* greedy (fused kernels, ``kernels/triton_correction.py``): per slot u [N, r] fp32, tile maxima [N, ceil(V/64)]
  fp32 and their argmax int64, GRU state [N, G] bf16 (old and new), the tokens [N, P] int64.
* sampled drafting (the eager loop, ``kernels/reference.py``, with ``rollout.make_sampling_selector``): per slot the
  correction [N, V] bf16 and the corrected logits [N, V] bf16, then ``sampling.filtered_probs`` on [N, V]: the fp32
  upcast (4 B per element), softmax (4), sort values (4) and indices (int64, 8), the cumulative sum (4, with a
  4-byte temporary), a bool mask (1), the masked and renormalised copies (4 each, one alive at a time beside the
  previous one) and the scattered result (4): a peak of 29 B per element; the result is that slot's draft
  probabilities, kept in a list; ``torch.stack`` then copies the P slots into [N, P, V] fp32 while the list is
  alive (8 B per element of [N, P, V]).
* sampled verification (``verify.verify_sampling``): the draft probabilities [N, P, V] fp32 kept since drafting,
  and ``target_distributions``: ``filtered_probs`` on all N·(P+1) target rows, [N·(P+1), V] fp32, filtered in
  chunks of at most 2^24 elements (110 rows of V 151,936) at 29 B per element, so the rest costs its 4-byte
  result only; afterwards the target
  distributions and the zero-padded copy of q (``torch.cat``), [N, P+1, V] fp32 each. Plain SGLang samples from
  N rows per step without sorting, so all of it is Domino's.

Not modelled: the sort's and multinomial's internal workspaces (CUB may double-buffer keys and indices), the
caching allocator's rounding and fragmentation, the graph pool (the same scratch as the greedy loop at Nmax, under
1 MiB), seeded rows (a float64 [M, 1, V] per slot), mixed batches with greedy rows (two more [N, V] fp32 in
``filtered_probs``), and the drafter backbone and target forwards (plain SGLang's own). Assumed: SGLang hands the
verifier fp32 logits (no copy). ``scripts/gpu_check.py`` measures what graph capture adds on a real GPU.

Usage: ``python benchmarks/memory_model.py [--json benchmarks/results/memory_model.json]`` prints the table;
``benchmarks/verify_results.py`` (kind ``memory-model``) regenerates it from the JSON.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from sglang_domino.benchmarks.kernel_cost import Dims as KernelDims

MIB = 2**20
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 48, 64)
# filtered_probs on one [rows, V] block: bytes per element at its peak (see the module docstring).
FILTER_PEAK_BYTES = 29
# sglang_domino.sampling.FILTER_CHUNK_ELEMENTS: filtered_probs takes its rows in chunks of at most this many elements
# (not imported: this model imports no torch).
FILTER_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class Dims(KernelDims):
    """The kernel cost model's Qwen3-8B sizes (``kernel_cost.Dims``: V, H, G, r, block, tile, bf16) plus the
    largest graph bucket."""

    nmax: int = 32  # largest graph bucket (DEFAULT_BUCKETS)


def static_buffers(d: Dims) -> int:
    """The graph runner's static inputs and output, allocated once at Nmax."""
    p = d.proposals
    return d.nmax * p * d.vocab * d.elem + d.nmax * p * d.hidden * d.elem + d.nmax * 8 + d.nmax * p * 8


def base_logits(d: Dims, n: int) -> int:
    return n * d.proposals * d.vocab * d.elem


def fused_scratch(d: Dims, n: int) -> int:
    """One slot of the fused greedy loop, plus the tokens of the block."""
    tiles = math.ceil(d.vocab / d.block_v)
    return n * d.rank * 4 + n * tiles * (4 + 8) + 2 * n * d.gru * d.elem + n * d.proposals * 8


def greedy(d: Dims, n: int) -> dict[str, int]:
    parts = {"static_buffers": static_buffers(d), "base_logits": base_logits(d, n), "fused_scratch": fused_scratch(d, n)}
    parts["extra_peak"] = sum(parts.values())
    return parts


def filter_peak(rows: int, vocab: int) -> int:
    """``sampling.filtered_probs`` on [rows, V]: the fp32 result, plus one chunk of at most
    ``FILTER_CHUNK_ELEMENTS`` elements filtered at a time (the whole block when it fits one chunk)."""
    chunk_rows = max(1, FILTER_CHUNK_ELEMENTS // vocab)
    if rows <= chunk_rows:
        return FILTER_PEAK_BYTES * rows * vocab
    return 4 * rows * vocab + FILTER_PEAK_BYTES * chunk_rows * vocab


def sampled(d: Dims, n: int) -> dict[str, int]:
    p, v, b = d.proposals, d.vocab, d.block
    nv = n * v
    per_slot = 2 * nv * d.elem + filter_peak(n, v)  # correction + corrected logits, then the filtering
    last_slot = (p - 1) * 4 * nv + per_slot  # P-1 slots' probabilities kept while the last one filters
    stack = 2 * p * 4 * nv + 2 * nv * d.elem  # the list and the stacked copy, beside the last slot's logits
    drafting_peak = base_logits(d, n) + max(last_slot, stack)
    draft_probs = p * 4 * nv
    verify_filter = draft_probs + filter_peak(b * n, v)
    verify_after = draft_probs + 2 * b * 4 * nv
    verification_peak = max(verify_filter, verify_after)
    static = static_buffers(d)
    return {"static_buffers": static, "base_logits": base_logits(d, n), "drafting_peak": drafting_peak,
            "draft_probs_kept": draft_probs, "verification_peak": verification_peak,
            "extra_peak": static + max(drafting_peak, verification_peak)}


def model(d: Dims = Dims(), batch_sizes: tuple[int, ...] = BATCH_SIZES) -> dict[str, Any]:
    return {
        "kind": "memory model (arithmetic from the source, not a measurement)",
        "dims": {**asdict(d), "proposals": d.proposals},
        "filter_peak_bytes_per_element": FILTER_PEAK_BYTES, "filter_chunk_elements": FILTER_CHUNK_ELEMENTS,
        "rows": [{"N": n, "greedy": greedy(d, n), "sampled": sampled(d, n)} for n in batch_sizes],
    }


def _mib(x: int) -> str:
    return f"{x / MIB:,.1f}"


def markdown(data: dict[str, Any]) -> str:
    """The published table (MiB) from the JSON (``verify_results.py`` kind ``memory-model``)."""
    d = data["dims"]
    head = ["N", "static buffers (Nmax)", "base logits [N, P, V]", "greedy extra peak", "sampled drafting peak",
            "draft probs kept [N, P, V] fp32", "sampled verification peak", "sampled extra peak"]
    lines = [f"MODEL, not a measurement: extra peak GPU memory (MiB) of Domino drafting, V {d['vocab']:,}, "
             f"H {d['hidden']}, P {d['proposals']}, bf16, graph buckets up to Nmax {d['nmax']}.", "",
             "| " + " | ".join(head) + " |", "|" + " ---: |" * len(head)]
    for row in data["rows"]:
        g, s = row["greedy"], row["sampled"]
        lines.append("| " + " | ".join([str(row["N"]), _mib(g["static_buffers"]), _mib(g["base_logits"]),
                                        _mib(g["extra_peak"]), _mib(s["drafting_peak"]), _mib(s["draft_probs_kept"]),
                                        _mib(s["verification_peak"]), _mib(s["extra_peak"])]) + " |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None, help="write the model with provenance here")
    ap.add_argument("--nmax", type=int, default=Dims.nmax, help="largest graph bucket (default 32)")
    args = ap.parse_args(argv)
    data = model(Dims(nmax=args.nmax))
    if args.json is not None:
        from sglang_domino.provenance import write_model_json

        write_model_json(args.json, data)
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
