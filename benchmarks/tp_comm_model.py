"""Communication MODEL (arithmetic, not a measurement): bytes each tensor-parallel rank receives per draft slot.

Under tensor parallelism (TP) the target's ``lm_head`` and input embedding are vocabulary-parallel: rank t holds rows
[t·V_s, (t+1)·V_s) with V_s = V_pad / TP, where SGLang pads V to a multiple of 64, or of 64·TP when that is not
divisible by TP (``sglang/srt/layers/vocab_parallel_embedding.py``: ``pad_vocab_size``, ``DEFAULT_VOCAB_PADDING_SIZE``).
Domino's W2 [V, r] is sharded like ``lm_head``; W1 and the GRU are small and replicated; the backbone's hidden z is
replicated. Per draft slot every strategy must (a) select the slot's token from logits spread over TP ranks and
(b) give every rank the GRU input of that token (its embedding row, held by one rank). This model counts the bytes a
rank receives for (a) and (b), per draft slot per decode step, for N requests.

Convention (ring collectives): an all-gather in which every rank contributes S bytes makes each rank receive
(TP-1)·S; an all-reduce of an S-byte buffer (reduce-scatter then all-gather) makes each rank receive
2·(TP-1)/TP·S. Latency, launch counts, NVLink/PCIe bandwidth, in-switch reductions and overlap are not modelled.

Strategies (b = N·H bf16 embedding rows all-reduced, as ``VocabParallelEmbedding.forward`` does, in all but one):

* ours, greedy (exact vocab-parallel; what the worker runs, ``sglang_domino/vocab_parallel.py``): each rank takes
  its shard's corrected maximum (fp32) and argmax (global id, exact in fp32 below 2^24) per row; one all-gather of
  N·8 bytes; ties go to the lowest global id. Then the all-reduce of N·H bf16::

      ours_greedy = (TP-1)·8N + 2(TP-1)/TP · 2NH

* ours, greedy with a gate table (proposed, not implemented): each rank precomputes x·W_ihᵀ (3G values, bf16) for its
  own vocabulary rows, so the all-reduce carries the GRU's input-gate pre-activations instead of the embedding row
  (extra memory V_s·3G·2 bytes per rank)::

      ours_gate_table = (TP-1)·8N + 2(TP-1)/TP · 2N·3G

* ours, sampled (what the worker runs): verification needs the draft probabilities q over the whole vocabulary
  (SGLang hands it the target's logits gathered), so each slot all-gathers the corrected logits [N, V_s] (fp32
  here; the worker gathers in the drafting dtype), every rank filters and normalises the same full row, rank 0's
  draw is broadcast (N int64: a broadcast of S bytes makes each other rank receive S), then the embedding
  all-reduce::

      ours_sampled = (TP-1)·N·V_s·4 + 8N + 2(TP-1)/TP · 2NH

* ours, sampled with Gumbel-max per shard (proposed, temperature only): the draw through the same (value fp32, id
  int32) all-gather as greedy; a second all-gather of the shards' log-sum-exp (fp32) lets every rank normalise its
  own shard of q, which would stay sharded for a vocabulary-parallel verification::

      ours_sampled_gumbel = (TP-1)·8N + (TP-1)·4N + 2(TP-1)/TP · 2NH

  Top-k / top-p / min-p filtering needs a distributed threshold (more collectives) and is not modelled.

* full-vocabulary gather: all-gather the corrected logits [N, V_s] per rank so every rank sees [N, V_pad], in fp32
  (4 bytes) or bf16 (2)::

      full_gather = (TP-1)·N·V_s·bytes + 2(TP-1)/TP · 2NH

  Upstream SGLang's full-vocabulary path (``domino_greedy_rollout``, ``domino_utils.py:422-436``) gathers the bf16
  base logits of all P proposal slots in one all-gather per block and computes the correction with a replicated W2:
  per slot that is exactly the bf16 column.

* upstream top-K pool (``sglang/srt/speculative/domino_utils.py``, SGLang 0.5.23; K =
  ``--speculative-domino-candidate-pool-size``, default 2048, ``arg_groups/fields/spec.py:74-77``), once per block of
  P = block_size - 1 proposals (``domino_utils.py:340``), so its collectives are divided by P here:

  - slot 0 (``_domino_tp_first_ids``, ``:36-59``): all-gathers of the shard maxima (bf16, logits are bf16) and ids
    (int64): (TP-1)·N·(2+8);
  - the pool for slots 1..P-1 (``_domino_tp_candidate_state``, ``:62-130``): each rank's top k_l = min(K, V_s) by
    the slots' maximum base logit, all-gathered as bf16 scores and int64 ids: (TP-1)·N·k_l·(2+8); the global top K
    are chosen on every rank, and their base logits [P-1, N, K] bf16 are rebuilt by a masked all-reduce:
    2(TP-1)/TP · 2·N·(P-1)·K. The correction is computed on the K candidates with replicated W2 rows, no collective.
    The pool is approximate: a token outside it cannot be drafted (the spec help calls it "approximate");
  - the GRU inputs: ``target_embedding`` (vocab-parallel, all-reduced) on [bonus, d_0] and then on d_1 .. d_{P-2}:
    P rows per request per block, one per slot on average, as in every other strategy::

      upstream_topk = [(TP-1)·10N + (TP-1)·10N·k_l + 2(TP-1)/TP · 2N(P-1)K] / P + 2(TP-1)/TP · 2NH

  Upstream takes the pool only when TP > 1, 0 < K < V and (``_domino_prefers_tp_candidate_pool``, ``:28-33``;
  dispatch ``:389-400``) inside a CUDA graph N > 1, or, eager, P·N·V·2 bytes > 96 MiB; otherwise the bf16 full
  gather above (so in a graph N = 1 gathers the full vocabulary, larger batches the pool).

Not modelled: the drafter backbone's and the target's own collectives (the same for every strategy), verification,
the catch-up of the first corrected slot (averaged into one row per slot above: P embedding rows per block).

Usage: ``python benchmarks/tp_comm_model.py [--json benchmarks/results/tp_comm_model.json]`` prints the tables and
writes the JSON and a ``.md`` beside it; ``benchmarks/verify_results.py`` (kind ``tp-comm-model``, option
``tp=2``) regenerates a table from the JSON. Standard library only.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from sglang_domino.benchmarks.kernel_cost import Dims as KernelDims

FORMAT = "tp-comm-model"
KIB = 1024
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
TP_SIZES = (2, 4, 8)
# sglang/srt/layers/vocab_parallel_embedding.py: DEFAULT_VOCAB_PADDING_SIZE
VOCAB_PAD_TO = 64
# sglang/srt/speculative/domino_utils.py: _DOMINO_TP_FULL_BASE_LOGITS_MAX_BYTES (the eager dispatch threshold)
UPSTREAM_EAGER_FULL_MAX_BYTES = 96 * 1024 * 1024
BF16, FP32, INT32, INT64 = 2, 4, 4, 8

_K = KernelDims()

STRATEGIES: dict[str, str] = {
    "ours_greedy": "ours, greedy (implemented): all-gather (max fp32, id fp32) + all-reduce of the embedding row "
                   "N×H bf16",
    "ours_greedy_gate_table": "ours, greedy, gate table (proposed): all-gather (max fp32, id fp32) + all-reduce of "
                              "the precomputed input-gate rows N×3G bf16",
    "ours_sampled": "ours, sampled (implemented, every filter): all-gather of the corrected logits [N, V/TP] fp32 + "
                    "broadcast of rank 0's draw N int64 + all-reduce N×H bf16",
    "ours_sampled_gumbel": "ours, sampled, Gumbel-max per shard (proposed, temperature only): all-gather (Gumbel "
                           "value fp32, id int32) + all-gather of the shards' log-sum-exp fp32 + all-reduce N×H bf16",
    "full_gather_fp32": "all-gather of the corrected logits [N, V/TP] fp32 + all-reduce N×H bf16",
    "full_gather_bf16": "all-gather of the corrected logits [N, V/TP] bf16 + all-reduce N×H bf16 (per slot, equal to "
                        "upstream's full-vocabulary path)",
    "upstream_topk": "upstream top-K pool, per block / P: slot 0 all-gathers (max bf16, id int64), the pool's "
                     "all-gathers (scores bf16, ids int64, k_l per rank) and all-reduce of its base logits "
                     "[N, P-1, K] bf16; + all-reduce N×H bf16 per slot",
}


@dataclass(frozen=True)
class Dims:
    """Model sizes: Qwen3-8B and the shipped drafter (``kernel_cost.Dims``) by default."""

    vocab: int = _K.vocab  # V
    hidden: int = _K.hidden  # H: the embedding row, the GRU input
    gru: int = _K.gru  # G: GRU hidden size (3G input-gate pre-activations)
    proposals: int = _K.proposals  # P = block size - 1
    pool: int = _K.pool  # upstream K (candidate_pool_size)
    pad_to: int = VOCAB_PAD_TO

    @property
    def candidates(self) -> int:
        """Upstream's K as it uses it: ``min(candidate_pool_size, V)``."""
        return min(self.pool, self.vocab)


# --------------------------------------------------------------------------------------------------- conventions


def all_gather_received(per_rank_bytes: float, tp: int) -> float:
    """Ring all-gather, every rank contributing ``per_rank_bytes``: bytes each rank receives."""
    return (tp - 1) * per_rank_bytes


def broadcast_received(buffer_bytes: float, tp: int) -> float:
    """Broadcast of ``buffer_bytes`` from one rank: bytes each other rank receives."""
    return buffer_bytes if tp > 1 else 0.0


def all_reduce_received(buffer_bytes: float, tp: int) -> float:
    """Ring all-reduce of a ``buffer_bytes`` buffer (reduce-scatter + all-gather): bytes each rank receives."""
    return 2 * (tp - 1) / tp * buffer_bytes


def _round_up(x: int, multiple: int) -> int:
    return (x + multiple - 1) // multiple * multiple


def padded_vocab(vocab: int, tp: int, pad_to: int = VOCAB_PAD_TO) -> int:
    """SGLang's padded vocabulary: a multiple of ``pad_to``, or of ``pad_to·tp`` when that is not divisible by tp."""
    if _round_up(vocab, pad_to) % tp != 0:
        pad_to *= tp
    return _round_up(vocab, pad_to)


def shard_rows(d: Dims, tp: int) -> int:
    """V_s: vocabulary rows per rank (padded)."""
    return padded_vocab(d.vocab, tp, d.pad_to) // tp


# --------------------------------------------------------------------------------------------------- strategies


def _with_total(parts: dict[str, float]) -> dict[str, float]:
    return {**parts, "total": sum(parts.values())}


def embedding_row(d: Dims, n: int, tp: int) -> float:
    """The GRU input: the drafted tokens' embedding rows, N×H bf16, all-reduced (masked sum over the owner ranks)."""
    return all_reduce_received(n * d.hidden * BF16, tp)


def ours_greedy(d: Dims, n: int, tp: int) -> dict[str, float]:
    return _with_total({"select": all_gather_received(n * (FP32 + INT32), tp), "gru_input": embedding_row(d, n, tp)})


def ours_greedy_gate_table(d: Dims, n: int, tp: int) -> dict[str, float]:
    return _with_total({"select": all_gather_received(n * (FP32 + INT32), tp),
                        "gru_input": all_reduce_received(n * 3 * d.gru * BF16, tp)})


def ours_sampled(d: Dims, n: int, tp: int) -> dict[str, float]:
    return _with_total({"select": all_gather_received(n * shard_rows(d, tp) * FP32, tp),
                        "draw": broadcast_received(n * INT64, tp), "gru_input": embedding_row(d, n, tp)})


def ours_sampled_gumbel(d: Dims, n: int, tp: int) -> dict[str, float]:
    return _with_total({"select": all_gather_received(n * (FP32 + INT32), tp),
                        "normalisers": all_gather_received(n * FP32, tp), "gru_input": embedding_row(d, n, tp)})


def full_gather(d: Dims, n: int, tp: int, elem_bytes: int) -> dict[str, float]:
    return _with_total({"select": all_gather_received(n * shard_rows(d, tp) * elem_bytes, tp),
                        "gru_input": embedding_row(d, n, tp)})


def upstream_local_k(d: Dims, tp: int) -> int:
    """k_l: candidates each rank contributes (``local_k = min(candidate_pool_size, local_vocab_size)``)."""
    k = d.candidates
    local_k = min(k, shard_rows(d, tp))
    if k > tp * local_k:
        raise ValueError("Domino TP shards do not cover the requested candidate pool.")  # upstream's check
    return local_k


def upstream_topk_block(d: Dims, n: int, tp: int) -> dict[str, float]:
    """Upstream's pool path, bytes received per rank per BLOCK (P proposal slots), excluding the GRU inputs."""
    k = d.candidates
    parts = {"first_argmax": all_gather_received(n * (BF16 + INT64), tp)}
    if d.proposals > 1:
        parts["pool_gather"] = all_gather_received(n * upstream_local_k(d, tp) * (BF16 + INT64), tp)
        parts["pool_base_all_reduce"] = all_reduce_received(n * (d.proposals - 1) * k * BF16, tp)
    return parts


def upstream_topk(d: Dims, n: int, tp: int) -> dict[str, float]:
    """Upstream's pool path per slot: the block's collectives divided by P, plus one embedding row per slot."""
    per_slot = {name: b / d.proposals for name, b in upstream_topk_block(d, n, tp).items()}
    return _with_total({**per_slot, "gru_input": embedding_row(d, n, tp)})


def upstream_uses_pool(d: Dims, n: int, tp: int, in_cuda_graph: bool) -> bool:
    """Upstream's dispatch (``domino_greedy_rollout``): the pool, else the full bf16 base-logit gather."""
    k = d.candidates
    if tp <= 1 or not 0 < k < d.vocab:
        return False
    if in_cuda_graph:
        return n > 1
    return d.proposals * n * d.vocab * BF16 > UPSTREAM_EAGER_FULL_MAX_BYTES


def upstream_eager_pool_min_n(d: Dims) -> int:
    """The smallest N at which eager upstream takes the pool (P·N·V·2 bytes > 96 MiB), at TP > 1."""
    return UPSTREAM_EAGER_FULL_MAX_BYTES // (d.proposals * d.vocab * BF16) + 1


def strategies(d: Dims, n: int, tp: int) -> dict[str, dict[str, float]]:
    """Bytes received per rank per draft slot, by strategy (parts and total)."""
    return {"ours_greedy": ours_greedy(d, n, tp), "ours_greedy_gate_table": ours_greedy_gate_table(d, n, tp),
            "ours_sampled": ours_sampled(d, n, tp), "ours_sampled_gumbel": ours_sampled_gumbel(d, n, tp),
            "full_gather_fp32": full_gather(d, n, tp, FP32),
            "full_gather_bf16": full_gather(d, n, tp, BF16), "upstream_topk": upstream_topk(d, n, tp)}


def model(d: Dims = Dims(), batch_sizes: tuple[int, ...] = BATCH_SIZES,
          tp_sizes: tuple[int, ...] = TP_SIZES) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "kind": "communication model (arithmetic, not a measurement)",
        "unit": "bytes received per rank per draft slot per decode step",
        "convention": "ring collectives: an all-gather of S bytes per rank -> (TP-1)·S received per rank; an "
                      "all-reduce of S bytes -> 2·(TP-1)/TP·S received per rank",
        "params": {"V": d.vocab, "H": d.hidden, "G": d.gru, "P": d.proposals, "K": d.pool, "vocab_pad_to": d.pad_to,
                   "N": list(batch_sizes), "TP": list(tp_sizes)},
        "strategies": STRATEGIES,
        "upstream": {"sglang": "0.5.23", "source": "sglang/srt/speculative/domino_utils.py",
                     "default_K": "sglang/srt/arg_groups/fields/spec.py:74-77 (2048)",
                     "eager_full_max_bytes": UPSTREAM_EAGER_FULL_MAX_BYTES},
        "tables": [{
            "TP": tp, "vocab_padded": padded_vocab(d.vocab, tp, d.pad_to), "shard_rows": shard_rows(d, tp),
            "upstream_local_k": upstream_local_k(d, tp), "upstream_eager_pool_from_N": upstream_eager_pool_min_n(d),
            "rows": [{"N": n, "bytes_per_slot": strategies(d, n, tp),
                      "upstream_path": {"cuda_graph": "pool" if upstream_uses_pool(d, n, tp, True) else "full",
                                        "eager": "pool" if upstream_uses_pool(d, n, tp, False) else "full"}}
                     for n in batch_sizes],
        } for tp in tp_sizes],
    }


# --------------------------------------------------------------------------------------------------- tables

COLUMNS = ("ours_greedy", "ours_sampled", "ours_greedy_gate_table", "ours_sampled_gumbel", "full_gather_fp32",
           "full_gather_bf16", "upstream_topk")
HEAD = ["N", "ours greedy", "ours sampled", "proposed: greedy, gate table", "proposed: sampled, Gumbel",
        "full gather fp32", "full gather bf16", "upstream top-K pool", "full fp32 / ours greedy",
        "top-K / ours greedy"]


def _kib(b: float) -> str:
    return f"{b / KIB:,.1f}"


def table(data: dict[str, Any], tp: int) -> str:
    """One TP's table (KiB received per rank per draft slot), with its MODEL sentence."""
    t = next((t for t in data["tables"] if t["TP"] == tp), None)
    if t is None:
        raise ValueError(f"no TP {tp} in the model (has {', '.join(str(t['TP']) for t in data['tables'])})")
    p = data["params"]
    lines = [f"MODEL, not a measurement: KiB received per rank per draft slot per decode step, TP {tp}, "
             f"V {p['V']:,} ({t['shard_rows']:,} rows per rank), H {p['H']}, G {p['G']}, P {p['P']}, "
             f"upstream K {p['K']}; ring all-gather (TP-1)·S, all-reduce 2(TP-1)/TP·S; every column includes "
             f"the GRU input's all-reduce (N×H bf16; N×3G with the gate table). \"ours\" columns are what the "
             f"worker runs; \"proposed\" ones are designs not implemented.", "",
             "| " + " | ".join(HEAD) + " |", "|" + " ---: |" * len(HEAD)]
    for row in t["rows"]:
        b = {k: row["bytes_per_slot"][k]["total"] for k in COLUMNS}
        ours = b["ours_greedy"]
        lines.append("| " + " | ".join([str(row["N"])] + [_kib(b[k]) for k in COLUMNS]
                                       + [f"{b['full_gather_fp32'] / ours:.1f}",
                                          f"{b['upstream_topk'] / ours:.2f}"]) + " |")
    graph_full = [r["N"] for r in t["rows"] if r["upstream_path"]["cuda_graph"] == "full"]
    lines += ["", f"Upstream dispatches: in a CUDA graph the pool at N > 1, the full bf16 gather at N = "
                  f"{', '.join(map(str, graph_full)) or 'none'}; eager, the pool from N = "
                  f"{t['upstream_eager_pool_from_N']} (P·N·V bf16 > 96 MiB). "
                  f"The pool is approximate (argmax within K candidates); ours is exact."]
    return "\n".join(lines)


def markdown(data: dict[str, Any], tp: Optional[int] = None) -> str:
    """The tables from the JSON: one TP's (``tp``), or all, separated by a blank line (kind ``tp-comm-model``)."""
    tps = [tp] if tp is not None else [t["TP"] for t in data["tables"]]
    return "\n\n".join(table(data, x) for x in tps)


def page(data: dict[str, Any], json_name: str) -> str:
    """The ``.md`` written beside the JSON."""
    def pool_share(t: dict[str, Any]) -> float:
        u = t["rows"][0]["bytes_per_slot"]["upstream_topk"]
        return (u["total"] - u["gru_input"]) / u["gru_input"]

    shares = [pool_share(t) for t in data["tables"]]
    pool_vs_rows = f"{min(shares):.1f}" if f"{min(shares):.1f}" == f"{max(shares):.1f}" else \
        f"{min(shares):.1f}× to {max(shares):.1f}"
    return "\n".join([
        "# TP communication model: bytes per draft slot (Qwen3-8B sizes)", "",
        f"A model, not a measurement: `python benchmarks/tp_comm_model.py --json benchmarks/results/{json_name}` "
        "(its docstring gives the formulas and the upstream lines they come from). The tables are regenerated from "
        "the JSON by `benchmarks/verify_results.py` (kind `tp-comm-model`, `tp=2` for one table).", "",
        markdown(data), "",
        "Reading it: every strategy is linear in N, so the ratios do not change down a column. Ours sends one "
        "(value, id) pair per row to select the token, (TP-1)·8N bytes against the full gather's (TP-1)·4N·V/TP "
        f"in fp32 (V/(2·TP) times more: {data['tables'][0]['shard_rows'] // 2:,} at TP {data['tables'][0]['TP']}); "
        "what remains of ours is the GRU input, the chosen "
        "token's embedding row (held by one rank), which every strategy pays, and which the gate table shrinks "
        "from H to 3G values. Upstream's pool moves K candidates' scores, ids and P-1 base logits once per block, "
        f"{pool_vs_rows}× what the embedding rows cost per slot, and drafts only within those K candidates.", ""])


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None, help="write the model (with provenance) here, and a .md beside")
    ap.add_argument("--gru", type=int, default=Dims.gru, help=f"GRU hidden size G (default {Dims.gru}, kernel_cost.Dims)")
    args = ap.parse_args(argv)
    data = model(Dims(gru=args.gru))
    if args.json is not None:
        from sglang_domino.provenance import write_model_json

        write_model_json(args.json, data)
        args.json.with_suffix(".md").write_text(page(data, args.json.name))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
