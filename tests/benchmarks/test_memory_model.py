"""benchmarks/memory_model.py: hand-computed cells of the model, and its table through verify_results' kind."""

from __future__ import annotations

from sglang_domino.benchmarks import memory_model as mm
from sglang_domino.benchmarks import verify_results as vr

V, H, P, B = 151936, 4096, 15, 16


def test_hand_computed_cells() -> None:
    d = mm.Dims()
    assert (d.vocab, d.hidden, d.proposals, d.nmax) == (V, H, P, 32)
    # Static: base [32, 15, V] bf16 + z [32, 15, H] bf16 + bonus [32] int64 + tokens [32, 15] int64.
    assert mm.static_buffers(d) == 32 * 15 * V * 2 + 32 * 15 * H * 2 + 32 * 8 + 32 * 15 * 8 == 149_794_816
    # Fresh base logits at N = 32: [32, 15, V] bf16.
    assert mm.base_logits(d, 32) == 145_858_560
    # Sampled verification at N = 1: draft probs [1, 15, V] fp32 (60 B per V) + filtering 16 rows at 29 B each.
    s1 = mm.sampled(d, 1)
    assert s1["draft_probs_kept"] == 60 * V
    assert s1["verification_peak"] == (60 + 29 * 16) * V == 79_614_464
    # Sampled verification at N = 64: 1,024 target rows exceed one filtering chunk (2**24 // V = 110 rows): the fp32
    # result of all of them (4 B) + 110 rows at 29 B, beside the draft probs [64, 15, V] fp32; afterwards the target
    # distributions and the padded q, [64, 16, V] fp32 each, are the larger of the two.
    assert (2**24) // V == 110
    assert mm.filter_peak(1024, V) == (4 * 1024 + 29 * 110) * V
    assert mm.sampled(d, 64)["verification_peak"] == max(64 * 15 * 4 + 4 * 1024 + 29 * 110,
                                                         64 * 15 * 4 + 2 * 16 * 4 * 64) * V
    # Sampled drafting at N = 1: base logits 30 B per V + the stack (list + copy: 120) + last slot's bf16 logits (4).
    assert s1["drafting_peak"] == (30 + 120 + 4) * V
    assert s1["extra_peak"] == 149_794_816 + 79_614_464
    # Greedy at N = 1: static + base logits + one slot's scratch (u, tile max/argmax over 2374 tiles, h twice, tokens).
    g1 = mm.greedy(d, 1)
    assert g1["fused_scratch"] == 256 * 4 + 2374 * 12 + 2 * 1024 * 2 + 15 * 8
    assert g1["extra_peak"] == 149_794_816 + 30 * V + g1["fused_scratch"]


def test_everything_grows_with_the_batch_except_the_static_buffers() -> None:
    rows = mm.model()["rows"]
    assert [r["N"] for r in rows] == [1, 2, 4, 8, 16, 32, 48, 64]
    assert len({r["greedy"]["static_buffers"] for r in rows}) == 1
    for a, b in zip(rows, rows[1:]):
        assert b["sampled"]["extra_peak"] > a["sampled"]["extra_peak"] > a["greedy"]["extra_peak"]


def test_table_through_the_verify_kind() -> None:
    data = mm.model()
    table = vr.KINDS["memory-model"].make([data], {})
    assert table == mm.markdown(data)
    assert "MODEL, not a measurement" in table
    row1 = next(line for line in table.splitlines() if line.startswith("| 1 |"))
    # static 149,794,816 B = 142.9 MiB; base 4,558,080 B = 4.3 MiB; verification 79,614,464 B = 75.9 MiB.
    assert row1.split(" | ")[1:4] == ["142.9", "4.3", "147.2"] and "| 75.9 |" in row1
