"""benchmarks/serving.py and benchmarks/paired.py without a server: the median run, the paired ratios and their
intervals on synthetic runs, the stopping rule, the configurations, the table and its results-table kind."""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import pytest

from sglang_domino.benchmarks import paired, serving
from sglang_domino.benchmarks import verify_results as vr

NAMES = serving.CONFIGS  # plain, domino, backbone


def _run(tok_s: float, ids: list[list[int]] | None = None, tau: float | None = 1.5) -> dict:
    lat = {"median": 100.0, "p90": 150.0}
    return {"output_tok_s": tok_s, "tau": tau, "ttft_ms": lat, "itl_ms": lat, "tpot_ms": {"median": 90.0},
            "failed": 0, "output_ids": ids if ids is not None else [[1, 2, 3]]}


def _timed_runs(speed_at, true_tok_s: dict[str, float]):
    """A ``run_one`` whose k-th call (in time) measures ``true_tok_s[name] * speed_at(k)``: the machine's speed
    drifts, and hits whichever server runs at that moment."""
    clock = iter(range(10_000))

    def run_one(name: str) -> dict:
        return _run(true_tok_s[name] * speed_at(next(clock)))

    return run_one


# --------------------------------------------------------------------------------------------------- the median


def test_median_run_keeps_one_real_run() -> None:
    median_run = serving.median_run
    runs = [{"output_tok_s": v, "tau": t} for v, t in ((12.0, 1.5), (9.0, 1.4), (30.0, 1.6))]
    assert median_run(runs) == {"output_tok_s": 12.0, "tau": 1.5}  # its τ travels with its tok/s
    assert median_run(runs[:2])["output_tok_s"] == 9.0  # even count: the lower middle run
    assert median_run(runs[:1]) is runs[0]
    with pytest.raises(ValueError):
        median_run([])


# --------------------------------------------------------------------------------------------------- statistics


def test_t_quantiles() -> None:
    assert paired.t975(1) == pytest.approx(12.706, abs=1e-3) and paired.t975(7) == pytest.approx(2.365, abs=1e-3)
    assert paired.t975(10_000) == pytest.approx(1.96, abs=1e-3)
    with pytest.raises(ValueError):
        paired.t975(0)
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in list(range(1, 41)) + [60, 120, 500]:
        assert paired.t975(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=2e-4), df


def test_paired_ratio_is_a_t_interval_on_log_ratios() -> None:
    domino, plain = [11.0, 10.2, 12.1, 10.9], [10.0, 10.0, 11.0, 10.1]
    r = paired.paired_ratio(domino, plain)
    logs = [math.log(d / p) for d, p in zip(domino, plain)]
    h = 3.1824 * statistics.stdev(logs) / 2  # t_{0.975}(3) s / sqrt(4)
    assert r["n"] == 4 and r["per_repeat"] == pytest.approx([d / p for d, p in zip(domino, plain)])
    assert r["geomean"] == pytest.approx(math.exp(statistics.fmean(logs)))
    assert (r["low"], r["high"]) == pytest.approx((math.exp(statistics.fmean(logs) - h),
                                                   math.exp(statistics.fmean(logs) + h)))
    assert r["half_width"] == pytest.approx((r["high"] - r["low"]) / 2)
    assert r["low"] < r["geomean"] < r["high"]
    # the interval is symmetric in log space: swapping the sides inverts it
    inv = paired.paired_ratio(plain, domino)
    assert (inv["low"], inv["high"]) == pytest.approx((1 / r["high"], 1 / r["low"]))
    one = paired.paired_ratio([11.0], [10.0])
    assert one["low"] is one["high"] is one["half_width"] is None and one["verdict"] == "one repeat"
    assert paired.ratio_cell(one) == "1.10× [–]"
    with pytest.raises(ValueError):
        paired.paired_ratio([1.0, 2.0], [1.0])


def test_verdicts() -> None:
    assert paired.verdict(1.01, 1.2) == "faster"
    assert paired.verdict(0.90, 0.969) == "slower"
    assert paired.verdict(0.95, 0.99) == "not faster"
    assert paired.verdict(0.96, 1.04) == "within noise" and paired.verdict(0.99, 1.0) == "within noise"
    assert paired.verdict(None, None) == "one repeat"


def test_run_order_rotates_who_goes_first() -> None:
    orders = [paired.run_order(NAMES, 0, rep) for rep in range(3)]
    assert orders == [["plain", "domino", "backbone"], ["domino", "backbone", "plain"],
                      ["backbone", "plain", "domino"]]
    assert paired.run_order(NAMES, 1, 0) == orders[1]  # and per level


@pytest.mark.parametrize("true_speedup", [1.0, 1.05])
def test_a_shared_drift_cancels_in_paired_ratios_but_not_in_the_ratio_of_medians(true_speedup: float) -> None:
    # The machine slows down 5 % per run (other work starting): every server is hit alike at the same moment.
    run_one = _timed_runs(lambda k: 1.0 - 0.05 * k, {"plain": 10.0, "domino": 10.0 * true_speedup,
                                                     "backbone": 10.0})
    repeats = serving.measure_level(run_one, NAMES, 0, 3, 3, 0.0)
    level = serving.summarise_level(1, 8, repeats, 3, 0.0)
    assert [r["order"] for r in repeats] == level["order"] and len(repeats) == level["repeats"] == 3
    median_of_medians = (statistics.median(level["tok_s_runs"]["domino"])
                         / statistics.median(level["tok_s_runs"]["plain"]))
    # paired: within 0.5 % of the truth; medians per server: 13 % off (plain's median run came later in time)
    assert level["speedup_vs_plain"] == pytest.approx(true_speedup, rel=0.005)
    assert level["domino_vs_plain"]["low"] < true_speedup < level["domino_vs_plain"]["high"]
    assert median_of_medians == pytest.approx(true_speedup * 0.85 / 0.75, rel=1e-9)
    assert abs(median_of_medians / true_speedup - 1) > 0.12


def test_noise_that_hits_both_sides_of_a_repeat_does_not_widen_the_interval() -> None:
    # each repeat runs at its own speed (±30 %, as on this VM between minutes), the same for its three runs
    speeds = [1.0, 0.7, 1.3, 0.8, 1.2]
    run_one = _timed_runs(lambda k: speeds[k // 3], {"plain": 10.0, "domino": 10.3, "backbone": 10.1})
    level = serving.summarise_level(4, 8, serving.measure_level(run_one, NAMES, 0, 5, 5, 0.0), 5, 0.0)
    assert level["domino_vs_plain"]["geomean"] == pytest.approx(1.03)
    assert level["domino_vs_plain"]["half_width"] == pytest.approx(0.0, abs=1e-9)
    assert level["domino_vs_plain"]["verdict"] == "faster"
    assert level["domino_vs_backbone"]["geomean"] == pytest.approx(10.3 / 10.1)


# --------------------------------------------------------------------------------------------------- stopping


def test_keep_going() -> None:
    narrow = paired.paired_ratio([10.2, 10.3, 10.25], [10.0, 10.0, 10.0])
    wide = paired.paired_ratio([8.0, 12.0, 10.0], [10.0, 10.0, 10.0])
    assert paired.keep_going(None, 3, 8, 0.03)
    assert paired.keep_going(paired.paired_ratio([10.0], [10.0]), 1, 8, 0.03)  # one repeat: no interval yet
    assert not paired.keep_going(narrow, 3, 8, 0.03)
    assert paired.keep_going(narrow, 4, 8, 0.03)  # below --repeats regardless
    assert paired.keep_going(wide, 3, 8, 0.03)
    assert not paired.keep_going(wide, 3, 3, 0.03)  # at --max-repeats regardless
    assert paired.keep_going(narrow, 3, 8, 0.0)  # target 0: always the maximum


@pytest.mark.parametrize("ratios, expect_repeats, stopped", [
    ([1.02, 1.021, 1.019, 1.02], 3, "half-width"),  # narrow at once: --repeats is enough
    ([1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 1.0, 1.0], 8, "max repeats (half-width"),  # never narrow enough
    ([1.04, 0.99, 1.02, 1.015, 1.02, 1.02, 1.02, 1.02], 5, "half-width"),  # 0.063, 0.033, then 0.022 at 5
])
def test_measure_level_adds_repeats_until_the_interval_is_narrow(ratios, expect_repeats, stopped) -> None:
    calls: list[tuple[int, int]] = []
    count = {"plain": 0, "domino": 0}

    def run_one(name: str) -> dict:
        if name == "domino":
            count["domino"] += 1
            return _run(10.0 * ratios[count["domino"] - 1])
        return _run(10.0)

    repeats = serving.measure_level(run_one, NAMES, 2, 3, 8, 0.03, lambda rep, i, ratio: calls.append((rep, i)))
    assert len(repeats) == expect_repeats and len(calls) == 3 * expect_repeats
    assert calls[:4] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    level = serving.summarise_level(4, 8, repeats, 8, 0.03)
    assert level["repeats"] == expect_repeats and level["stopped"].startswith(stopped)
    hw = level["domino_vs_plain"]["half_width"]
    assert (hw <= 0.03) == (stopped == "half-width")


# --------------------------------------------------------------------------------------------------- a level


def test_summarise_level_records_medians_ratios_and_equality() -> None:
    repeats = [{"order": ["plain", "domino", "backbone"],
                "runs": {"plain": _run(10.0, [[1], [2]]), "domino": _run(11.0, [[1], [2]], 1.8),
                         "backbone": _run(10.5, [[1], [2]], 1.4)}},
               {"order": ["domino", "backbone", "plain"],
                "runs": {"plain": _run(9.0, [[1], [2]]), "domino": _run(9.6, [[1], [3]], 1.7),
                         "backbone": _run(9.2, [[1], [2]], 1.3)}}]
    lv = serving.summarise_level(2, 2, repeats, 2, 0.03)
    assert (lv["plain_tok_s"], lv["domino_tok_s"], lv["backbone_tok_s"]) == (9.0, 9.6, 9.2)  # lower-middle runs
    assert lv["tau_domino"] == 1.7 and lv["tau_backbone"] == 1.3
    assert lv["speedup_vs_plain"] == pytest.approx(math.sqrt(11.0 / 10.0 * 9.6 / 9.0))
    assert lv["tok_s_runs"]["domino"] == [11.0, 9.6] and lv["repeats"] == 2
    assert lv["domino_output_equals_plain"] is False and lv["domino_requests_equal_plain"] == 1
    assert lv["stopped"].startswith("max repeats")


# --------------------------------------------------------------------------------------------------- configurations


def test_configurations_run_float32_only_where_it_differs_from_the_default() -> None:
    configs, skipped = serving.configurations([], "float32")  # a CPU without bf16 units
    assert list(configs) == ["defaults"] and configs["defaults"]["server_args"] == []
    assert "coincides" in skipped["float32"] and "no bf16 units" in skipped["bfloat16"]
    configs, skipped = serving.configurations([], "float32", bf16_units=True)  # bf16 is the other dtype worth serving
    assert list(configs) == ["defaults", "bfloat16"] and configs["bfloat16"]["server_args"] == ["--dtype", "bfloat16"]
    assert "coincides" in skipped["float32"] and "bfloat16" not in skipped
    assert list(serving.configurations([], "float32", quick=True, bf16_units=True)[0]) == ["defaults"]
    configs, skipped = serving.configurations(["--max-total-tokens", "8192"], "bfloat16")
    assert list(configs) == ["defaults", "float32"] and not skipped
    assert configs["defaults"]["server_args"] == ["--max-total-tokens", "8192"]  # no dtype flag: serve picks
    assert configs["float32"]["server_args"] == ["--max-total-tokens", "8192", "--dtype", "float32"]
    assert list(serving.configurations([], "bfloat16", quick=True)[0]) == ["defaults"]
    assert "CUDA" in serving.configurations([], None)[1]["float32"]
    configs, skipped = serving.configurations(["--dtype=bfloat16"], "float32")  # the user chose: one, named so
    assert list(configs) == ["bfloat16"] and "sets --dtype bfloat16" in skipped["defaults"]
    assert list(serving.configurations(["--dtype", "float32"], "bfloat16")[0]) == ["float32"]


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    serving.add_arguments(p)
    return serving.resolve_args(p.parse_args([*argv, "--json", "x.json"]))


def test_defaults_and_quick() -> None:
    a = _args()
    assert (a.concurrency, a.repeats, a.max_repeats, a.target_halfwidth, a.max_new_tokens, a.num_prompts) == \
        ("1,2,4,8,16,32", 3, 8, 0.03, 128, None)
    q = _args("--quick")
    assert (q.concurrency, q.num_prompts, q.max_new_tokens, q.repeats, q.max_repeats) == ("1,4", 4, 32, 2, 2)
    assert _args("--quick", "--max-new-tokens", "64").max_new_tokens == 64  # an explicit flag wins
    with pytest.raises(SystemExit):
        _args("--repeats", "4", "--max-repeats", "3")
    with pytest.raises(SystemExit):
        _args("--repeats", "0")


# --------------------------------------------------------------------------------------------------- the table


def _level(c: int = 1, **extra) -> dict:
    lv = {"concurrency": c, "num_prompts": 8, "plain_tok_s": 10.0, "domino_tok_s": 12.5, "backbone_tok_s": 11.0,
          "domino_vs_plain": {"geomean": 1.2345, "low": 1.1, "high": 1.38, "verdict": "faster"},
          "domino_vs_backbone": {"geomean": 1.1, "low": 0.95, "high": 1.27, "verdict": "within noise"},
          "tau_domino": 1.6, "tau_backbone": None, "repeats": 5, "domino_requests_equal_plain": 7}
    lv.update(extra)
    return lv


def test_markdown_table_row() -> None:
    table = paired.markdown_table([_level()]).splitlines()
    assert table[0] == ("| concurrency | plain tok/s | Domino tok/s | backbone tok/s | Domino/plain [95 %] | "
                        "Domino vs plain | Domino/backbone [95 %] | τ Domino | τ backbone | repeats | "
                        "D output = plain |")
    assert len(table) == 3 and table[0].count("|") == table[1].count("|") == table[2].count("|")
    assert table[2] == ("| 1 | 10.0 | 12.5 | 11.0 | 1.23× [1.10, 1.38] | faster | 1.10× [0.95, 1.27] | 1.60 | nan "
                        "| 5 | 7/8 |")
    # --compare-always-drafting: the fourth server's throughput and its paired ratio to plain get their own columns
    wide = paired.markdown_table([_level(domino_always_tok_s=9.0, always_vs_plain={"geomean": 0.9, "low": None,
                                                                                    "high": None})]).splitlines()
    assert "Domino always drafting tok/s" in wide[0] and wide[0].count("|") == wide[2].count("|") == 14
    assert "| 9.0 | 1.23× [1.10, 1.38] | faster | 1.10× [0.95, 1.27] | 0.90× [–] |" in wide[2]
    assert "D output = plain" not in paired.markdown_table([_level()], equal=False)


def test_markdown_names_each_configuration_and_the_skipped_one() -> None:
    result = {"configs": {"defaults": {"description": "sglang-domino serve defaults, --dtype float32",
                                       "levels": [_level(1), _level(4)]}},
              "skipped": {"float32": "it coincides with the defaults"}}
    text = paired.markdown(result)
    assert text.startswith("### defaults (sglang-domino serve defaults, --dtype float32)\n\n| concurrency")
    assert "float32: not run (it coincides with the defaults)" in text and "t-interval on the log ratios" in text


def test_serving_paired_results_kind(tmp_path: Path) -> None:
    data = {"format": "serving-paired",
            "configs": {"defaults": {"levels": [_level(1), _level(4, plain_tok_s=20.0)]},
                        "float32": {"levels": [_level(1, plain_tok_s=8.0)]}}, "skipped": {}}
    (tmp_path / "p.json").write_text(json.dumps(data))
    assert vr.generate("serving-paired p.json", tmp_path, require_committed=False) == \
        paired.markdown_table(data["configs"]["defaults"]["levels"])
    two = vr.generate("serving-paired p.json levels=4 equal=off", tmp_path, require_committed=False).splitlines()
    assert len(two) == 3 and two[2].startswith("| 4 | 20.0 |") and "D output" not in two[0]
    assert "| 8.0 |" in vr.generate("serving-paired p.json config=float32", tmp_path, require_committed=False)
    with pytest.raises(vr.TableError, match="no configuration"):
        vr.generate("serving-paired p.json config=bf16", tmp_path, require_committed=False)
    # the old kind stays for the published files, and points a new file to the new kind
    with pytest.raises(vr.TableError, match="serving-paired"):
        vr.generate("serving p.json", tmp_path, require_committed=False)


class _FakeServer:
    def __init__(self, name: str, log: list, fail: bool) -> None:
        self.name, self.log, self.fail = name, log, fail
        log.append(("start", name))

    def wait_healthy(self) -> "_FakeServer":
        if self.fail:
            raise serving.ServerStartError(f"{self.name} server exited during start-up\nlog tail")
        self.log.append(("healthy", self.name))
        return self

    def stop(self) -> None:
        self.log.append(("stop", self.name))


def test_servers_start_one_after_another_with_a_retry() -> None:
    log: list = []
    fails = {"domino": [True, False]}  # the first try fails (memory), the second starts
    make = {n: (lambda n=n: _FakeServer(n, log, fails.get(n, [False]).pop(0) if fails.get(n) else False))
            for n in NAMES}
    servers = serving.start_servers(make, retries=1, pause_s=0.0)
    assert list(servers) == list(NAMES)
    assert log == [("start", "plain"), ("healthy", "plain"), ("start", "domino"), ("stop", "domino"),
                   ("start", "domino"), ("healthy", "domino"), ("start", "backbone"), ("healthy", "backbone")]
    log.clear()
    make = {"plain": lambda: _FakeServer("plain", log, False), "domino": lambda: _FakeServer("domino", log, True)}
    with pytest.raises(serving.ServerStartError):
        serving.start_servers(make, retries=1, pause_s=0.0)
    assert log[-1] == ("stop", "plain")  # the ones already up are stopped
