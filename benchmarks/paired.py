"""Paired-run statistics for the serving benchmark, and its table (standard library only).

Within one repeat the servers run back to back, so a slow minute of this machine hits the runs being compared
alike. The ratio of a repeat (Domino / plain) is taken from that repeat's runs; a level reports the geometric mean
of its per-repeat ratios and a 95 % Student t-interval computed on their logarithms (then exponentiated), and keeps
adding repeats while that interval is wider than asked (``keep_going``). ``verdict`` names an interval that lies
entirely below ``SLOWER_BELOW`` or above ``FASTER_ABOVE``.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Optional, Sequence

SLOWER_BELOW = 0.97  # an interval entirely below this: "slower"
FASTER_ABOVE = 1.0  # an interval entirely above this: "faster"
METHOD = ("geometric mean of the per-repeat ratios (each from the two servers' runs of one repeat, back to back); "
          "95 % interval: Student t-interval on the log ratios (n-1 degrees of freedom), exponentiated; "
          "half_width = (high - low) / 2 in ratio units")

# Two-sided 95 % quantiles of Student's t, t_{0.975}(df), df = 1..30.
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788, 2.1604,
         2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555,
         2.0518, 2.0484, 2.0452, 2.0423)


def t975(df: int) -> float:
    """t_{0.975} with ``df`` degrees of freedom (table to 30, then the Cornish-Fisher expansion, error < 1e-4)."""
    if df < 1:
        raise ValueError(f"a t-interval needs at least 1 degree of freedom, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> dict[str, Any]:
    """``num[i] / den[i]`` per repeat i, summarised: geometric mean, 95 % interval (None below two repeats),
    its half-width in ratio units, n, and the per-repeat ratios."""
    if len(num) != len(den) or not num:
        raise ValueError(f"paired_ratio needs equally many runs on both sides, at least one ({len(num)}, {len(den)})")
    ratios = [n / max(d, 1e-9) for n, d in zip(num, den)]
    logs = [math.log(max(r, 1e-12)) for r in ratios]
    n = len(logs)
    mean = statistics.fmean(logs)
    out: dict[str, Any] = {"geomean": math.exp(mean), "low": None, "high": None, "half_width": None, "n": n,
                           "per_repeat": ratios}
    if n >= 2:
        h = t975(n - 1) * statistics.stdev(logs) / math.sqrt(n)
        out.update(low=math.exp(mean - h), high=math.exp(mean + h))
        out["half_width"] = (out["high"] - out["low"]) / 2
    out["verdict"] = verdict(out["low"], out["high"])
    return out


def verdict(low: Optional[float], high: Optional[float]) -> str:
    """``faster`` (the whole interval above FASTER_ABOVE), ``slower`` (entirely below SLOWER_BELOW), ``not faster``
    (entirely below FASTER_ABOVE but reaching above SLOWER_BELOW), else ``within noise``; ``one repeat`` without an
    interval."""
    if low is None or high is None:
        return "one repeat"
    if low > FASTER_ABOVE:
        return "faster"
    if high < SLOWER_BELOW:
        return "slower"
    if high < FASTER_ABOVE:
        return "not faster"
    return "within noise"


def keep_going(ratio: Optional[dict[str, Any]], min_repeats: int, max_repeats: int, target_half_width: float) -> bool:
    """Whether a level needs another repeat: fewer than ``min_repeats`` run, or (below ``max_repeats``) no interval
    yet or one whose half-width exceeds ``target_half_width``. ``ratio`` is ``paired_ratio``'s result so far."""
    n = 0 if ratio is None else ratio["n"]
    if n < min_repeats:
        return True
    if n >= max_repeats:
        return False
    return ratio["half_width"] is None or ratio["half_width"] > target_half_width


def run_order(configs: Sequence[str], level_index: int, repeat: int) -> list[str]:
    """The order the servers run in one repeat: rotated by one per repeat and per level, so none always goes first."""
    first = (level_index + repeat) % len(configs)
    return list(configs[first:]) + list(configs[:first])


# --------------------------------------------------------------------------------------------------- the table


def ratio_cell(r: Optional[dict[str, Any]]) -> str:
    """``1.04× [0.99, 1.09]`` (``1.04× [–]`` with one repeat; ``–`` when absent)."""
    if not r:
        return "–"
    if r.get("low") is None:
        return f"{r['geomean']:.2f}× [–]"
    return f"{r['geomean']:.2f}× [{r['low']:.2f}, {r['high']:.2f}]"


def _f(x: Optional[float], digits: int) -> str:
    return f"{float('nan') if x is None else x:.{digits}f}"


def markdown_table(levels: list[dict[str, Any]], equal: bool = True) -> str:
    """One configuration's levels: median tok/s per server, the paired ratios with their 95 % intervals, the
    verdict on Domino / plain, τ, repeats run, and (``equal``) how many Domino outputs equal plain decoding."""
    always = bool(levels) and all("domino_always_tok_s" in lv for lv in levels)
    head = ["concurrency", "plain tok/s", "Domino tok/s", "backbone tok/s"]
    head += ["Domino always drafting tok/s"] if always else []
    head += ["Domino/plain [95 %]", "Domino vs plain", "Domino/backbone [95 %]"]
    head += ["always drafting/plain [95 %]"] if always else []
    head += ["τ Domino", "τ backbone", "repeats"] + (["D output = plain"] if equal else [])
    rows = ["| " + " | ".join(head) + " |", "|" + " ---: |" * len(head)]
    for lv in levels:
        cells = [str(lv["concurrency"]), _f(lv["plain_tok_s"], 1), _f(lv["domino_tok_s"], 1),
                 _f(lv["backbone_tok_s"], 1)]
        cells += [_f(lv["domino_always_tok_s"], 1)] if always else []
        cells += [ratio_cell(lv["domino_vs_plain"]), lv["domino_vs_plain"]["verdict"],
                  ratio_cell(lv["domino_vs_backbone"])]
        cells += [ratio_cell(lv.get("always_vs_plain"))] if always else []
        cells += [_f(lv["tau_domino"], 2), _f(lv["tau_backbone"], 2), str(lv["repeats"])]
        cells += [f"{lv['domino_requests_equal_plain']}/{lv['num_prompts']}"] if equal else []
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def markdown(result: dict[str, Any]) -> str:
    """The whole ``.md``: a heading and table per configuration that ran, a line per skipped one, the method."""
    parts = []
    for name, cfg in result["configs"].items():
        parts += [f"### {name} ({cfg['description']})", "", markdown_table(cfg["levels"]), ""]
    for name, why in result.get("skipped", {}).items():
        parts += [f"{name}: not run ({why})", ""]
    parts.append(f"Ratios: {METHOD}. Verdict: \"faster\" = the whole interval above {FASTER_ABOVE:g}, \"slower\" = "
                 f"entirely below {SLOWER_BELOW:g}, \"not faster\" = entirely below {FASTER_ABOVE:g}. tok/s: the "
                 "median run per server.")
    return "\n".join(parts)
