"""benchmarks/tp_comm_model.py: the ring conventions, SGLang's vocabulary padding, hand-counted cells on a toy model,
upstream's dispatch, properties at Qwen3-8B sizes, and the CLI's JSON through verify_results' kind. No torch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sglang_domino.benchmarks import tp_comm_model as cm
from sglang_domino.benchmarks import verify_results as vr

# Toy model, small enough to count by hand: V 128 (already a multiple of 64), H 4, G 2, P 3, K 8.
TOY = cm.Dims(vocab=128, hidden=4, gru=2, proposals=3, pool=8)
QWEN = cm.Dims()


def test_ring_conventions() -> None:
    # All-gather: every rank sends S, receives the other TP-1 ranks' S.
    assert [cm.all_gather_received(10, tp) for tp in (1, 2, 4, 8)] == [0, 10, 30, 70]
    # All-reduce of S: reduce-scatter then all-gather, each moving (TP-1)/TP·S into every rank.
    assert [cm.all_reduce_received(8, tp) for tp in (1, 2, 4, 8)] == [0, 8, 12, 14]


def test_sglang_vocabulary_padding() -> None:
    # pad_vocab_size to 64; when that is not divisible by TP, to 64·TP.
    assert cm.padded_vocab(100, 2) == 128
    assert cm.padded_vocab(100, 3) == 192  # 128 % 3 != 0 -> multiple of 192
    assert cm.padded_vocab(151_936, 8) == 151_936  # 151,936 = 64 · 2,374 and divisible by 2, 4, 8
    assert [cm.shard_rows(QWEN, tp) for tp in (2, 4, 8)] == [75_968, 37_984, 18_992]


def test_hand_counted_cells_tp2_n1() -> None:
    # ours greedy: all-gather of (fp32 max, int32 id) = 8 B -> 8; all-reduce of 1×4 bf16 = 8 B -> 2·1/2·8 = 8.
    assert cm.ours_greedy(TOY, 1, 2) == {"select": 8, "gru_input": 8, "total": 16}
    # gate table: 3G = 6 bf16 = 12 B all-reduced -> 12.
    assert cm.ours_greedy_gate_table(TOY, 1, 2)["total"] == 8 + 12
    # sampled as the worker runs it: the corrected logits' all-gather (64 rows fp32 = 256 B) + rank 0's draw
    # broadcast (one int64, 8 B) + the embedding reduce (8).
    assert cm.ours_sampled(TOY, 1, 2) == {"select": 256, "draw": 8, "gru_input": 8, "total": 272}
    # proposed Gumbel-max sampling: the greedy pair + the log-sum-exp all-gather, 4 B.
    assert cm.ours_sampled_gumbel(TOY, 1, 2)["total"] == 8 + 4 + 8
    # full gather: 64 rows per rank, 4 B (fp32) or 2 B (bf16) each, plus the 8-byte embedding reduce.
    assert cm.full_gather(TOY, 1, 2, 4)["total"] == 256 + 8
    assert cm.full_gather(TOY, 1, 2, 2)["total"] == 128 + 8
    # upstream per block: slot 0 (bf16 max + int64 id) 10 B; pool of min(8, 64) = 8 per rank at 10 B = 80 B;
    # candidates' base logits [P-1 = 2, K = 8] bf16 = 32 B all-reduced -> 32. 122 B per block / 3 slots + 8.
    assert cm.upstream_topk_block(TOY, 1, 2) == {"first_argmax": 10, "pool_gather": 80, "pool_base_all_reduce": 32}
    assert cm.upstream_topk(TOY, 1, 2)["total"] == pytest.approx(122 / 3 + 8)


def test_hand_counted_cells_tp4_n2() -> None:
    # ours greedy: 3 · 16 B + 2·3/4 · (2·4·2 = 16 B) = 48 + 24.
    assert cm.ours_greedy(TOY, 2, 4)["total"] == 72
    # full gather fp32: 32 rows per rank · 2 requests · 4 B = 256 B, from 3 ranks = 768, + 24.
    assert cm.full_gather(TOY, 2, 4, 4)["total"] == 792
    # upstream: 3·20 + 3·(2·8·10 = 160) + 1.5·(2·2·8·2 = 64) = 60 + 480 + 96 = 636 per block.
    assert sum(cm.upstream_topk_block(TOY, 2, 4).values()) == 636


def test_pool_clipped_to_the_shard() -> None:
    # K 100 > 64 rows per rank: each rank contributes its whole shard (upstream's local_k = min(K, local_vocab)).
    d = cm.Dims(vocab=128, hidden=4, gru=2, proposals=3, pool=100)
    assert cm.upstream_local_k(d, 2) == 64
    assert cm.upstream_topk_block(d, 1, 2)["pool_gather"] == 640


def test_upstream_dispatch() -> None:
    # In a graph: the full gather at N = 1, the pool above; never at TP 1 or with K 0 (full vocabulary scored).
    assert [cm.upstream_uses_pool(QWEN, n, 2, True) for n in (1, 2, 64)] == [False, True, True]
    assert not cm.upstream_uses_pool(QWEN, 8, 1, True)
    assert not cm.upstream_uses_pool(cm.Dims(pool=0), 8, 2, True)
    # Eager: P·N·V·2 bytes > 96 MiB; 96 MiB / (15 · 151,936 · 2 B) = 22.08 -> from N = 23.
    assert cm.upstream_eager_pool_min_n(QWEN) == 23
    assert [cm.upstream_uses_pool(QWEN, n, 2, False) for n in (22, 23)] == [False, True]


def test_properties_at_qwen_sizes() -> None:
    for tp in cm.TP_SIZES:
        for n in cm.BATCH_SIZES:
            s = {k: v["total"] for k, v in cm.strategies(QWEN, n, tp).items()}
            # Selecting by (value, id) pairs is V/(2·TP) times cheaper than gathering fp32 logits.
            sel = cm.ours_greedy(QWEN, n, tp)["select"]
            assert cm.full_gather(QWEN, n, tp, 4)["select"] == sel * cm.shard_rows(QWEN, tp) // 2
            # ours ≪ full gather even with the GRU input; the pool sits between.
            assert s["full_gather_fp32"] > 30 * s["ours_greedy"]
            assert s["ours_greedy"] < s["upstream_topk"] < s["full_gather_bf16"] < s["full_gather_fp32"]
            assert s["ours_greedy_gate_table"] < s["ours_greedy"] < s["ours_sampled_gumbel"] < s["ours_sampled"]
            # the implemented sampled path is the fp32 full gather plus the broadcast draw
            assert s["ours_sampled"] == s["full_gather_fp32"] + 8 * n
            # Everything is linear in N.
            assert cm.strategies(QWEN, 2 * n, tp)["ours_greedy"]["total"] == 2 * s["ours_greedy"]
    # Ours does not depend on V; a full gather grows with it.
    big = cm.Dims(vocab=4 * QWEN.vocab)
    assert cm.ours_greedy(big, 8, 4) == cm.ours_greedy(QWEN, 8, 4)
    assert cm.full_gather(big, 8, 4, 4)["select"] == 4 * cm.full_gather(QWEN, 8, 4, 4)["select"]


def test_cli_json_md_and_the_verify_kind(tmp_path: Path) -> None:
    out = tmp_path / "tp_comm_model.json"
    assert cm.main(["--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["format"] == "tp-comm-model"
    p = data["params"]
    assert (p["V"], p["H"], p["N"], p["TP"]) == (151_936, 4096, [1, 2, 4, 8, 16, 32, 64], [2, 4, 8])
    row = data["tables"][0]["rows"][0]  # TP 2, N 1: 8 B select + 8,192 B embedding row.
    assert row["bytes_per_slot"]["ours_greedy"]["total"] == 8200
    md = out.with_suffix(".md").read_text()
    assert "MODEL, not a measurement" in md and md.count("| N |") == 3

    one = vr.generate("tp-comm-model tp_comm_model.json tp=8", tmp_path, require_committed=False)
    assert one.splitlines()[0].startswith("MODEL, not a measurement") and ", TP 8," in one.splitlines()[0]
    assert one.count("| N |") == 1 and one == cm.markdown(data, tp=8)
    assert vr.generate("tp-comm-model tp_comm_model.json", tmp_path, require_committed=False).count("| N |") == 3
    with pytest.raises(vr.TableError):
        vr.generate("tp-comm-model tp_comm_model.json tp=3", tmp_path, require_committed=False)
