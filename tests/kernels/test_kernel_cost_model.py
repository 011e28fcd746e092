"""benchmarks/kernel_cost.py: runs, labels itself a model, and its numbers are self-consistent."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kernel_cost.py"


def _load():
    spec = importlib.util.spec_from_file_location("kernel_cost", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.modules.pop(spec.name, None)
    return mod


def test_cost_model_json(tmp_path, capsys) -> None:
    mod = _load()
    out = tmp_path / "cost.json"
    assert mod.main(["--json", str(out), "--prune-keep", "0.2"]) == 0
    assert "COST MODEL" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["kind"] == "cost_model" and "not a measurement" in data["disclaimer"].lower()
    assert data["dims"]["proposals"] == 15 and data["dims"]["gru_steps"] == 15
    rows = {(r["batch"], r["method"]): r for r in data["rows"]}
    for n in (1, 2, 4, 8, 16, 32):
        eager, pool, fused = rows[n, "eager_full_vocab"], rows[n, "upstream_top2048"], rows[n, "fused_triton"]
        # Same exact math, fewer bytes; identical FLOPs.
        assert fused["bytes"] < eager["bytes"] and fused["flops"] == eager["flops"]
        assert 0.0 <= fused["prune_breakeven_keep_vs_top2048"] <= 1.0
        assert rows[n, "fused_prune_keep0.2"]["bytes"] < fused["bytes"]
        for r in (eager, pool, fused):
            assert r["floor_us"] > 0 and r["bytes"] == sum(p["bytes"] for p in r["parts"].values())
    # The eager excess over fused is the [N, V] round trips: it grows with the batch.
    gap = [rows[n, "eager_full_vocab"]["bytes"] - rows[n, "fused_triton"]["bytes"] for n in (1, 8, 32)]
    assert gap[0] < gap[1] < gap[2]
