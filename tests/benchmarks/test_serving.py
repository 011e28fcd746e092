"""benchmarks/serving.py helpers that need no server: the median run of repeated measurements."""

from __future__ import annotations


import pytest



def _load():
    from sglang_domino.benchmarks import serving

    return serving


def test_median_run_keeps_one_real_run() -> None:
    median_run = _load().median_run
    runs = [{"output_tok_s": v, "tau": t} for v, t in ((12.0, 1.5), (9.0, 1.4), (30.0, 1.6))]
    assert median_run(runs) == {"output_tok_s": 12.0, "tau": 1.5}  # its τ travels with its tok/s
    assert median_run(runs[:2])["output_tok_s"] == 9.0  # even count: the lower middle run
    assert median_run(runs[:1]) is runs[0]
    with pytest.raises(ValueError):
        median_run([])


def test_markdown_table_row() -> None:
    lat = {"median": 180.0, "p90": 220.0}
    level = {"concurrency": 1, "num_prompts": 8, "plain_tok_s": 10.0, "domino_tok_s": 12.5, "backbone_tok_s": 11.0,
             "speedup_vs_plain": 1.25, "speedup_vs_backbone": 12.5 / 11.0, "tau_domino": 1.6, "tau_backbone": 1.4,
             "ttft_ms": {"domino": {"median": 300.0}}, "itl_ms": {"domino": lat}, "domino_requests_equal_plain": 7}
    table = _load().markdown_table([level]).splitlines()
    assert len(table) == 3 and table[0].count("|") == table[2].count("|")
    assert table[2] == "| 1 | 10.0 | 12.5 | 11.0 | 1.25× | 1.14× | 1.60 | 1.40 | 300 | 180 / 220 | 7/8 |"
    # --compare-always-drafting: the fourth server's throughput and its ratio to plain get their own columns
    level.update(domino_always_tok_s=9.0, always_speedup_vs_plain=0.9)
    wide = _load().markdown_table([level]).splitlines()
    assert "Domino always drafting tok/s" in wide[0] and wide[0].count("|") == wide[2].count("|") == 14
    assert wide[2] == "| 1 | 10.0 | 12.5 | 11.0 | 9.0 | 1.25× | 1.14× | 0.90× | 1.60 | 1.40 | 300 | 180 / 220 | 7/8 |"
