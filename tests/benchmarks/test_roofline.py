"""benchmarks/roofline.py: the step model's bytes and FLOPs on hand-computed toy dimensions, the floors, the step-log
aggregation, the slopes and the tables. No server, no torch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sglang_domino.benchmarks import roofline as rl

# Toy dimensions, small enough to count by hand.
#   layer: q 4x4 + k, v 4x2 each + o 4x4 + MLP 3 x 4x8 = 16 + 16 + 16 + 96 = 144; lm_head 10x4 = 40
#   KV per token: 2 (K, V) x 1 layer x 1 kv head x 2 = 4 entries; attention: 4 x 2 heads x 2 = 16 FLOPs per row-key
TOY = rl.Transformer(hidden=4, intermediate=8, layers=1, heads=2, kv_heads=1, head_dim=2, vocab=10)
#   fc 2x4x4 = 32 + K/V 2 x 4x2 = 16 -> context params 48; GRU 3x3x(4+3) = 63; W1 2x7 = 14; W2 10x2 = 20
DRAFTER = rl.Drafter(backbone=TOY, target_layers=2, gru=3, rank=2, pure_draft_prefix_len=1)


def parts(width, n=2, context=3, dtype="float32", **kw) -> dict[str, rl.Part]:
    return {p.name: p for p in rl.step_parts(TOY, DRAFTER, n, width, context, dtype, **kw)}


def test_dimensions() -> None:
    assert TOY.layer_params == 144 and TOY.lm_head_params == 40 and TOY.kv_elems_per_token() == 4
    assert TOY.attention_flops(rows=6, keys=3) == 16 * 3 * 6
    assert (DRAFTER.context_params, DRAFTER.gru_params, DRAFTER.w1_params, DRAFTER.w2_params) == (48, 63, 14, 20)
    assert [DRAFTER.corrected_slots(w) for w in (1, 2, 3, 4)] == [0, 0, 1, 2]
    assert [DRAFTER.gru_steps(w) for w in (1, 2, 3, 4)] == [0, 0, 2, 3]


def test_plain_step() -> None:
    p = parts(rl.PLAIN)
    assert list(p) == ["target", "logits"]
    # weights 184 x 4 B + KV read 2 requests x 3 keys x 16 B + KV written 2 rows x 16 B
    assert p["target"].bytes == 736 + 96 + 32
    assert p["target"].flops == 2 * 2 * 184 + 16 * 3 * 2
    assert p["logits"].bytes == 2 * (2 * 10) * 4
    assert p["logits"].flops == 0


def test_width_three_step() -> None:
    p = parts(3)
    assert list(p) == ["target", "draft_context", "draft_backbone", "draft_lm_head", "correction", "logits"]
    assert (p["target"].bytes, p["target"].flops) == (736 + 96 + 6 * 16, 6 * 368 + 16 * 3 * 6)
    assert (p["draft_context"].bytes, p["draft_context"].flops) == (48 * 4 + 2 * 4 * 4, 2 * 48 * 2)
    assert (p["draft_backbone"].bytes, p["draft_backbone"].flops) == (144 * 4 + 2 * 3 * 16, 6 * 288 + 16 * 3 * 6)
    assert (p["draft_lm_head"].bytes, p["draft_lm_head"].flops) == (160, 2 * 40 * 2 * 2)
    # per request: 2 GRU steps and 1 corrected slot (W1 + W2)
    assert (p["correction"].bytes, p["correction"].flops) == ((63 + 14 + 20) * 4, 2 * (2 * 2 * 63 + 2 * (14 + 20)))
    # target 6 rows + base logits 2 x 2 slots + correction 2 x 1 slot, float32, written and read
    assert p["logits"].bytes == 2 * (60 + 40 + 20) * 4


def test_width_one_and_two_and_dtypes() -> None:
    one = parts(1)
    assert list(one) == ["target", "draft_context", "logits"]
    assert one["target"].flops == parts(rl.PLAIN)["target"].flops
    two = parts(2)
    assert "correction" not in two  # pure_draft_prefix_len 1: the only proposal is not corrected
    assert two["draft_lm_head"].flops == 2 * 40 * 2 * 1
    bf16 = parts(2, dtype="bfloat16")
    assert bf16["target"].bytes == 184 * 2 + 2 * 3 * 8 + 4 * 8
    mixed = parts(2, dtype="float32", draft_logits_dtype="bfloat16")
    assert (mixed["draft_lm_head"].dtype, mixed["draft_lm_head"].bytes) == ("bfloat16", 80)
    assert parts(3, committed_per_request=2.5)["draft_context"].flops == 2 * 48 * 5
    with pytest.raises(ValueError):
        rl.step_parts(TOY, DRAFTER, 1, 0, 3, "float32")


def test_floor_is_the_sum_of_the_parts_maxima() -> None:
    rec = rl.floor_record(rl.step_parts(TOY, DRAFTER, 2, rl.PLAIN, 3, "float32"), bandwidth=100.0,
                          peaks={"float32": 416.0})
    # target: max(864 / 100, 832 / 416) = 8.64 s (memory); logits: 160 / 100 = 1.6 s
    assert rec["parts"]["target"]["floor_ms"] == pytest.approx(8640.0)
    assert rec["parts"]["target"]["bound"] == "memory"
    assert rec["floor_ms"] == pytest.approx(10240.0)
    assert rec["compute_ms"] == pytest.approx(2000.0)
    fast_memory = rl.floor_record(rl.step_parts(TOY, DRAFTER, 2, rl.PLAIN, 3, "float32"), 1e6, {"float32": 416.0})
    assert fast_memory["parts"]["target"]["bound"] == "compute"
    assert fast_memory["parts"]["target"]["floor_ms"] == pytest.approx(2000.0)


def test_the_embedded_target_counts_as_the_issue_says() -> None:
    """SmolLM2-135M: 0.27 GFLOP per verified row (2 x linear params) and ~538 MB of float32 weights."""
    cfg = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
           "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152}
    t = rl.Transformer.from_config(cfg)
    params = t.layers * t.layer_params + t.lm_head_params
    assert params == 134_479_872
    assert 2 * params / 1e9 == pytest.approx(0.27, abs=0.005)
    drafter = rl.Drafter.from_config(json.loads(
        (Path(rl.__file__).resolve().parents[1] / "sglang_domino/embedded/drafter/config.json").read_text()))
    assert (drafter.target_layers, drafter.gru, drafter.rank, drafter.pure_draft_prefix_len) == (3, 256, 64, 1)
    # the drafter's tensors, as in its safetensors file (11,914,880 elements, norms included)
    b = drafter.backbone
    linear = b.layers * b.layer_params + drafter.target_layers * b.hidden ** 2 + drafter.gru_params \
        + drafter.w1_params + drafter.w2_params
    assert linear + (2 * b.layers + 2) * b.hidden + 2 * b.layers * b.head_dim == 11_914_880


def test_step_log_aggregation(tmp_path: Path) -> None:
    log = tmp_path / "steps.jsonl"
    rows = [(1, 2, 1, 0.070), (1, 2, 2, 0.072), (1, 2, 1, 0.500), (1, 1, 1, 0.058), (2, 4, 3, 0.120)]
    log.write_text("".join(json.dumps({"batch_size": n, "width": w, "tokens": t, "seconds": s}) + "\n"
                           for n, w, t, s in rows) + "\n" + '{"batch_size": 1, "wid')  # blank and torn lines
    records = rl.read_step_log(log)
    assert len(records) == 5
    agg = rl.aggregate_step_log(records)
    assert [(a["n"], a["width"], a["steps"]) for a in agg] == [(1, 1, 1), (1, 2, 3), (2, 4, 1)]
    w2 = agg[1]
    assert w2["ms_median"] == pytest.approx(72.0)  # the slow first step does not move the median
    assert w2["ms_mean"] == pytest.approx((70 + 72 + 500) / 3)
    assert w2["tokens_per_step"] == pytest.approx(4 / 3)


def test_slope() -> None:
    assert rl.slope([(2, 10.0), (3, 20.0), (4, 30.0)]) == pytest.approx(10.0)
    assert rl.slope([(2, 71.6), (4, 94.4)]) == pytest.approx(11.4)
    assert rl.slope([(2, 1.0), (2, 3.0)]) is None


def _result(tmp_path: Path) -> dict:
    steps = [{"n": 1, "width": w, "steps": 5, "ms_median": ms, "ms_mean": ms, "tokens_per_step": tok}
             for w, ms, tok in ((1, 58.5, 1.0), (2, 71.6, 1.34), (4, 94.4, 1.57))]
    steps.append({"n": 2, "width": 2, "steps": 2, "ms_median": 80.0, "ms_mean": 80.0, "tokens_per_step": 2.5})
    plain = [{"n": 1, "ms": 58.0, "source": "test"}]
    peaks = {"float32": 416.0, "bfloat16": 832.0}
    cmp_ = rl.compare(steps, plain, TOY, DRAFTER, 100.0, peaks, 3, "float32", "float32")
    floors = rl.model_floors(TOY, DRAFTER, 100.0, peaks, 3, ("float32",), {}, batches=(1, 2), widths=(1, 2))
    return {"comparison": cmp_, "floors": floors, "model": {"server_dtype": "float32"}}


def test_compare_rows_and_slopes(tmp_path: Path) -> None:
    res = _result(tmp_path)
    rows = res["comparison"]["rows"]
    assert [(r["n"], r["width"]) for r in rows] == [(1, rl.PLAIN), (1, 1), (1, 2), (1, 4)]  # n=2: too few steps
    plain = rows[0]
    expect = rl.floor_record(rl.step_parts(TOY, DRAFTER, 1, rl.PLAIN, 3, "float32"), 100.0, {"float32": 416.0})
    assert plain["floor_ms"] == pytest.approx(expect["floor_ms"])
    assert plain["efficiency"] == pytest.approx(expect["floor_ms"] / 58.0)
    (s,) = res["comparison"]["slopes"]
    assert (s["n"], s["widths"]) == (1, [2, 4])
    assert s["measured_ms_per_row"] == pytest.approx(11.4)
    # the toy step is memory bound throughout: widening adds FLOPs, not bytes beyond the correction head
    f2, f4 = (rl.floor_record(rl.step_parts(TOY, DRAFTER, 1, w, 3, "float32"), 100.0, {"float32": 416.0})
              for w in (2, 4))
    assert s["floor_ms_per_row"] == pytest.approx((f4["floor_ms"] - f2["floor_ms"]) / 2)
    assert s["compute_ms_per_row"] == pytest.approx((f4["compute_ms"] - f2["compute_ms"]) / 2)


def test_markdown_tables(tmp_path: Path) -> None:
    res = _result(tmp_path)
    measured = rl.markdown(res, "measured").splitlines()
    assert measured[0].startswith("| N | width | steps | measured ms/step | floor ms/step | efficiency |")
    assert measured[2].startswith("| 1 | plain | – | 58.0 |")
    assert measured[4].startswith("| 1 | 2 | 5 | 71.6 |") and "| 1.34 | 53.4 |" in measured[4]
    slope = rl.markdown(res, "slope").splitlines()
    assert slope[2].startswith("| 1 | 2, 4 | 11.4 |")
    model = rl.markdown(res, "model").splitlines()
    assert model[0] == "| N | plain floor ms | W=1 floor ms | W=2 floor ms |"
    assert len(model) == 4
    with pytest.raises(ValueError):
        rl.markdown(res, "nope")


def test_plain_ms_option() -> None:
    assert rl._parse_plain("1=58.5, 4=75") == [{"n": 1, "ms": 58.5, "source": "--plain-ms"},
                                              {"n": 4, "ms": 75.0, "source": "--plain-ms"}]


def test_best_machine_takes_each_best_and_keeps_the_runs() -> None:
    def run(read, copy, fp32, bf16, load):
        return {"threads": 2, "cpu_has_bf16_units": False, "load_average": {"before": [load], "after": [load + 1]},
                "bandwidth": {"read_bytes_per_s": read, "copy_bytes_per_s": copy, "sizes": []},
                "gemm": {"float32": {"flop_per_s": fp32}, "bfloat16": {"flop_per_s": bf16}}}

    a, b = run(10.0, 30.0, 5.0, 1.0, 4.0), run(20.0, 25.0, 4.0, 2.0, 0.5)
    best = rl.best_machine([a, b])
    assert best["bandwidth"]["read_bytes_per_s"] == 20.0 and best["bandwidth"]["copy_bytes_per_s"] == 30.0
    assert best["gemm"]["float32"]["flop_per_s"] == 5.0 and best["gemm"]["bfloat16"]["flop_per_s"] == 2.0
    assert best["load_average"] == {"before": [4.0], "after": [1.5]}
    assert best["runs"] == [a, b] and a["bandwidth"]["read_bytes_per_s"] == 10.0  # inputs unchanged


def test_verify_results_kind_and_report_markers(tmp_path: Path) -> None:
    from sglang_domino.benchmarks import verify_results as vr

    res = _result(tmp_path)
    (tmp_path / "r.json").write_text(json.dumps(res))
    for table in ("measured", "slope", "model"):
        assert vr.generate(f"roofline r.json table={table}", tmp_path, require_committed=False) == \
            rl.markdown(res, table)
    assert vr.generate("roofline r.json", tmp_path, require_committed=False) == rl.markdown(res, "measured")
    no_steps = {k: v for k, v in res.items() if k != "comparison"}
    (tmp_path / "m.json").write_text(json.dumps(no_steps))
    assert vr.generate("roofline m.json table=model", tmp_path, require_committed=False) == rl.markdown(res, "model")
    with pytest.raises(vr.TableError, match="no measured steps"):
        vr.generate("roofline m.json", tmp_path, require_committed=False)
    # outside the repository the report has plain tables; inside, each is a marked block
    res["model"]["context"] = 3
    res["machine"] = {"bandwidth": {"read_bytes_per_s": 1e9, "copy_bytes_per_s": 2e9}, "threads": 2,
                      "gemm": {"float32": {"flop_per_s": 1e9}, "bfloat16": {"flop_per_s": 1e9}},
                      "cpu_has_bf16_units": False, "load_average": {"before": [0.1], "after": [0.2]}}
    res["peaks_flop_per_s"] = {"float32": 1e9, "bfloat16": 1e9}
    outside = rl.report_markdown(res, tmp_path / "r.json")
    assert "results-table" not in outside and rl.markdown(res, "slope") in outside
    inside = rl.report_markdown(res, Path(rl.__file__).resolve().parents[1] / "benchmarks/results/roofline_x.json")
    assert "<!-- results-table: roofline benchmarks/results/roofline_x.json table=measured -->\n" in inside
    assert inside.count("<!-- /results-table -->") == 3


def test_noisy_load_counts_only_what_others_add() -> None:
    """The script's own GEMMs and servers keep every core busy (load ≈ cores): that alone is not noise."""
    from sglang_domino.benchmarks.roofline import noisy_load

    assert noisy_load(0.8, [2.03, 2.13], cores=2) == ""
    assert "before measuring" in noisy_load(1.9, [2.1], cores=2)
    assert "while measuring on 2 cores" in noisy_load(0.2, [2.1, 3.4], cores=2)
