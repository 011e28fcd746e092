"""benchmarks/serving.py helpers that need no server: the median run of repeated measurements."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def _load():
    spec = importlib.util.spec_from_file_location("bench_serving_module", BENCH_DIR / "serving.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)  # it puts benchmarks/ on sys.path for its sibling loadgen.py
    return mod


def test_median_run_keeps_one_real_run() -> None:
    median_run = _load().median_run
    runs = [{"output_tok_s": v, "tau": t} for v, t in ((12.0, 1.5), (9.0, 1.4), (30.0, 1.6))]
    assert median_run(runs) == {"output_tok_s": 12.0, "tau": 1.5}  # its τ travels with its tok/s
    assert median_run(runs[:2])["output_tok_s"] == 9.0  # even count: the lower middle run
    assert median_run(runs[:1]) is runs[0]
    with pytest.raises(ValueError):
        median_run([])
