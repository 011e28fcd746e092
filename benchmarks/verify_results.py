"""Recompute every published results table from the committed JSON it came from.

A generated table sits between two markers (``benchmarks/results/TABLES.md`` lists the kinds)::

    <!-- results-table: KIND path/to/file.json [key=value ...] -->
    | ... |
    <!-- /results-table -->

``python benchmarks/verify_results.py`` checks every block in README.md, docs/**/*.md and benchmarks/results/*.md
(markers inside fenced code blocks are examples and are skipped) and exits 1 with a diff when a block's text is not
what its generator makes of the JSON, 2 when a block cannot be generated (unknown kind, missing or uncommitted
file, bad options). ``--write`` rewrites the blocks in place instead. Standard library only.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[1]
OPEN = re.compile(r"<!-- results-table:(?P<spec>.*?)-->[ \t]*\n")
CLOSE = "<!-- /results-table -->"
FENCE = re.compile(r"^(```|~~~)", re.M)


class TableError(Exception):
    """A block that cannot be generated (exit 2)."""


# --------------------------------------------------------------------------------------------------- formatting


def _f(x: Optional[float], digits: int) -> str:
    return f"{float('nan') if x is None else x:.{digits}f}"


def _thousands(n: int) -> str:
    return f"{n:,}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _levels(levels: list[dict[str, Any]], opts: dict[str, str]) -> list[dict[str, Any]]:
    if "levels" not in opts:
        return levels
    want = [int(x) for x in opts["levels"].split(",") if x.strip()]
    by_c = {lv["concurrency"]: lv for lv in levels}
    missing = [c for c in want if c not in by_c]
    if missing:
        raise TableError(f"levels {missing} not in the JSON (it has {sorted(by_c)})")
    return [by_c[c] for c in want]


# --------------------------------------------------------------------------------------------------- generators


def serving(data: list[Any], opts: dict[str, str]) -> str:
    """``sglang-domino bench --json`` as written before paired ratios (a top-level ``levels``): one row per
    concurrency (the median run of each). Newer files: ``serving-paired``."""
    if "levels" not in data[0] and "configs" in data[0]:
        raise TableError("this bench JSON has the paired layout (configs -> levels): use the serving-paired kind")
    levels = _levels(data[0]["levels"], opts)
    always = bool(levels) and all("domino_always_tok_s" in lv for lv in levels)
    equal = opts.get("equal", "on") != "off" and all("domino_requests_equal_plain" in lv for lv in levels)
    head = ["concurrency", "plain tok/s", "Domino tok/s", "backbone tok/s"]
    head += ["Domino always drafting tok/s"] if always else []
    head += ["Domino/plain", "Domino/backbone"] + (["always drafting/plain"] if always else [])
    head += ["τ Domino", "τ backbone", "TTFT ms (D, median)", "ITL ms (D, median / p90)"]
    head += ["D output = plain"] if equal else []
    rows = [_row(head), "|" + " ---: |" * len(head)]
    for lv in levels:
        cells = [str(lv["concurrency"]), _f(lv["plain_tok_s"], 1), _f(lv["domino_tok_s"], 1),
                 _f(lv["backbone_tok_s"], 1)]
        cells += [_f(lv["domino_always_tok_s"], 1)] if always else []
        cells += [f"{lv['speedup_vs_plain']:.2f}×", f"{lv['speedup_vs_backbone']:.2f}×"]
        cells += [f"{lv['always_speedup_vs_plain']:.2f}×"] if always else []
        cells += [_f(lv["tau_domino"], 2), _f(lv["tau_backbone"], 2), f"{lv['ttft_ms']['domino']['median']:.0f}",
                  f"{lv['itl_ms']['domino']['median']:.0f} / {lv['itl_ms']['domino']['p90']:.0f}"]
        cells += [f"{lv['domino_requests_equal_plain']}/{lv['num_prompts']}"] if equal else []
        rows.append(_row(cells))
    return "\n".join(rows)


def serving_paired(data: list[Any], opts: dict[str, str]) -> str:
    """``sglang-domino bench --json`` with paired ratios (``configs`` -> ``levels``): one configuration's table,
    the same text as the benchmark's ``.md`` (``benchmarks/paired.py`` writes both)."""
    from sglang_domino.benchmarks.paired import markdown_table

    configs = data[0]["configs"]
    name = opts.get("config", next(iter(configs), ""))
    if name not in configs:
        raise TableError(f"no configuration {name!r} in the JSON (it has {list(configs)}; "
                         f"skipped: {data[0].get('skipped', {})})")
    levels = _levels(configs[name]["levels"], opts)
    return markdown_table(levels, equal=opts.get("equal", "on") != "off")


def serving_compare(data: list[Any], opts: dict[str, str]) -> str:
    """Domino tok/s of several ``bench`` JSONs side by side, one row per file (e.g. before / after a change)."""
    labels = opts.get("labels", "").split("|") if opts.get("labels") else [f"run {i + 1}" for i in range(len(data))]
    if len(labels) != len(data):
        raise TableError(f"{len(labels)} labels for {len(data)} files (labels=\"a|b|c\")")
    want = [int(x) for x in opts.get("levels", "").split(",") if x.strip()] or \
        [lv["concurrency"] for lv in data[0]["levels"]]
    itl_at = int(opts["itl-at"]) if "itl-at" in opts else None
    head = [opts.get("title", "Domino server")] + [f"c={c}" for c in want]
    head += [f"ITL median at c={itl_at}"] if itl_at is not None else []
    rows = [_row(head), "| --- |" + " ---: |" * (len(head) - 1)]
    for label, d in zip(labels, data):
        lv = _levels(d["levels"], {"levels": ",".join(map(str, want + ([itl_at] if itl_at else [])))})
        by_c = {x["concurrency"]: x for x in lv}
        cells = [label] + [_f(by_c[c]["domino_tok_s"], 1) for c in want]
        cells += [f"{_thousands(round(by_c[itl_at]['itl_ms']['domino']['median']))} ms"] if itl_at is not None else []
        rows.append(_row(cells))
    return "\n".join(rows)


def serving_tp(data: list[Any], opts: dict[str, str]) -> str:
    """Several ``bench`` JSONs that differ in their server arguments (e.g. ``--tp-size``), one row per file and
    concurrency: each file's own paired Domino/plain ratio (ratios across files are not time-paired)."""
    from sglang_domino.benchmarks.paired import ratio_cell

    labels = opts.get("labels", "").split("|") if opts.get("labels") else [d.get("server_args", "") for d in data]
    if len(labels) != len(data):
        raise TableError(f"{len(labels)} labels for {len(data)} files (labels=\"a|b\")")
    head = [opts.get("title", "server args"), "concurrency", "plain tok/s", "Domino tok/s", "backbone tok/s",
            "Domino/plain [95 %]", "τ Domino", "repeats", "D output = plain"]
    rows = [_row(head), "| --- |" + " ---: |" * (len(head) - 1)]
    for label, d in zip(labels, data):
        config = opts.get("config", "defaults")
        if config not in d["configs"]:
            raise TableError(f"no configuration {config!r} in a JSON (it has {list(d['configs'])})")
        for lv in _levels(d["configs"][config]["levels"], opts):
            rows.append(_row([label, str(lv["concurrency"]), _f(lv["plain_tok_s"], 1), _f(lv["domino_tok_s"], 1),
                              _f(lv["backbone_tok_s"], 1), ratio_cell(lv["domino_vs_plain"]),
                              _f(lv["tau_domino"], 2), str(lv["repeats"]),
                              f"{lv['domino_requests_equal_plain']}/{lv['num_prompts']}"]))
    return "\n".join(rows)


def eval_by_kind(data: list[Any], opts: dict[str, str]) -> str:
    """``sglang-domino eval --json``: τ per prompt kind and pooled, with the losslessness count."""
    d = data[0]
    if "by_kind" not in d:
        raise TableError("the eval JSON has no by_kind (its prompts carry no \"kind\")")
    per_prompt = d.get("per_prompt", [])
    greedy = d.get("temperature", 0.0) <= 0

    def lossless(rows: list[dict[str, Any]]) -> str:
        return f"{sum(bool(r.get('lossless')) for r in rows)}/{len(rows)}" if greedy else "–"

    head = ["prompt kind", "prompts", "new tokens", "τ Domino", "τ backbone only (head off)", "Domino / backbone",
            "lossless"]
    rows = [_row(head), "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for kind, k in d["by_kind"].items():
        mine = [r for r in per_prompt if r.get("kind") == kind]
        rows.append(_row([kind, str(k["num_prompts"]), _thousands(k["new_tokens"]), _f(k["tau_domino"], 2),
                          _f(k["tau_backbone"], 2), f"{k['tau_ratio']:.2f}×", lossless(mine)]))
    label = opts.get("pooled-label", f"all {d['num_prompts']} (pooled)")
    rows.append(_row([f"**{label}**", str(d["num_prompts"]), _thousands(d["new_tokens"]),
                      f"**{_f(d['tau_domino'], 2)}**", f"**{_f(d['tau_backbone'], 2)}**",
                      f"**{d['tau_ratio']:.2f}×**", f"**{lossless(per_prompt)}**"]))
    return "\n".join(rows)


def eval_compare(data: list[Any], opts: dict[str, str]) -> str:
    """Several ``eval`` JSONs, one row each (e.g. drafter versions on the same prompts)."""
    labels = opts.get("labels", "").split("|") if opts.get("labels") else [f"run {i + 1}" for i in range(len(data))]
    if len(labels) != len(data):
        raise TableError(f"{len(labels)} labels for {len(data)} files (labels=\"a|b|c\")")
    head = [opts.get("title", "drafter"), "prompts", "new tokens", "τ Domino", "τ backbone only (head off)",
            "Domino / backbone", "lossless"]
    rows = [_row(head), "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for label, d in zip(labels, data):
        pp = d.get("per_prompt", [])
        lossless = f"{sum(bool(r.get('lossless')) for r in pp)}/{len(pp)}" if d.get("temperature", 0) <= 0 else "–"
        rows.append(_row([label, str(d["num_prompts"]), _thousands(d["new_tokens"]), _f(d["tau_domino"], 2),
                          _f(d["tau_backbone"], 2), f"{d['tau_ratio']:.2f}×", lossless]))
    return "\n".join(rows)


def _p(p: Optional[float]) -> str:
    if p is None:
        return "–"
    return f"{p:.2f}" if p >= 0.01 else f"{p:.0e}"


def _p_full(p: Optional[float]) -> str:  # benchmarks/sampling_audit.py's fmt_p
    if p is None:
        return "–"
    return f"{p:.3f}" if p >= 1e-3 else f"{p:.1e}"


def setting_name(sp: dict[str, Any]) -> str:
    """``{"temperature": 0.7, "top_p": 0.9}`` -> ``T 0.7, top-p 0.9``."""
    names = {"temperature": "T", "top_p": "top-p", "top_k": "top-k", "min_p": "min-p"}
    return ", ".join(f"{names[k]} {sp[k]:g}" for k in names if k in sp)


def sampling_audit(data: list[Any], opts: dict[str, str]) -> str:
    """``benchmarks/sampling_audit.py --json``: p-values per setting and server, τ, token-2 steps drafted."""
    d = data[0]
    if opts.get("layout") == "full":
        head = ["setting", "server", "samples", "p tok1 vs exact", "p tok2 vs exact", "p tok2 given tok1 vs exact",
                "p tok1 / tok2 vs plain", "τ", "token-2 drafted", "detectable ε (tok2, 95 % power)"]
        lines = [_row(head), "|" + " --- |" * 2 + " ---: |" * (len(head) - 2)]
        for r in d["rows"]:
            cond = ", ".join(f"{c['token1']}: {_p_full(c['p_vs_exact'])}" for c in r["conditional"]) or "–"
            vs_plain = (f"{_p_full(r['p_token1_vs_plain'])} / {_p_full(r['p_token2_vs_plain'])}"
                        if "p_token1_vs_plain" in r else "–")
            tau = f"{r['tau']['tau']:.2f}" if r.get("tau") else "–"
            drafted = f"{r['token2_drafted'][0]}/{r['token2_drafted'][1]}" if r.get("token2_drafted") else "–"
            lines.append(_row([r["setting"], r["server"], str(r["samples"]), _p_full(r["p_token1_vs_exact"]),
                               _p_full(r["p_token2_vs_exact"]), cond, vs_plain, tau, drafted,
                               f"{r['detectable_shift_token2']:.3f}"]))
        return "\n".join(lines)
    head = ["setting", "server", "p tok1 / tok2 vs exact", "p tok2 given tok1", "p tok1 / tok2 vs plain", "τ",
            "token-2 steps drafted"]
    lines = [_row(head), "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in d["rows"]:
        cond = ", ".join(_p(c["p_vs_exact"]) for c in r["conditional"]) or "–"
        vs_plain = f"{_p(r['p_token1_vs_plain'])} / {_p(r['p_token2_vs_plain'])}" if "p_token1_vs_plain" in r else "–"
        tau = _f(r["tau"]["tau"], 2) if r.get("tau") else "–"
        drafted = f"{r['token2_drafted'][0]}/{r['token2_drafted'][1]}" if r.get("token2_drafted") else "–"
        lines.append(_row([setting_name(r["sampling_params"]), r["server"],
                           f"{_p(r['p_token1_vs_exact'])} / {_p(r['p_token2_vs_exact'])}", cond, vs_plain, tau,
                           drafted]))
    return "\n".join(lines)


def round_profile(data: list[Any], opts: dict[str, str]) -> str:
    """``benchmarks/round_profile.py --json``: that script's own table (ms per phase of a speculative round, the
    server step, the rest), and the τ sentence unless ``table-only``."""
    from sglang_domino.benchmarks.round_profile import markdown

    return markdown(data[0], table_only="table-only" in opts)


def roofline(data: list[Any], opts: dict[str, str]) -> str:
    """``benchmarks/roofline.py --json``: measured steps against their floors (``table=measured``, the default),
    the cost per extra verified row (``table=slope``) or the model's floors (``table=model``, ``dtype=...``);
    ``n=1,4``: only those batch sizes of the measured table."""
    from sglang_domino.benchmarks.roofline import markdown

    table = opts.get("table", "measured")
    if table != "model" and "comparison" not in data[0]:
        raise TableError("this roofline JSON has no measured steps (run it with --measure or --step-log)")
    batch_sizes = {int(x) for x in opts["n"].split(",") if x.strip()} if "n" in opts else None
    return markdown(data[0], table=table, dtype=opts.get("dtype"), batch_sizes=batch_sizes)


SWEEP_LABELS = {"pm": "point masses (greedy drafts, upstream's rule)",
                "1.0": "sampled at T (scale 1.0)",
                "0.6": "sampled at 0.6 T (scale 0.6, the default)"}


def draft_temperature_sweep(data: list[Any], opts: dict[str, str], paths: list[str]) -> str:
    """``draft_temperature_sweep_*.jsonl``: τ per draft distribution, the best in bold."""
    rows_in = data[0]
    temperature = opts.get("T")
    if temperature is None:
        m = re.search(r"_t(\d)(\d+)", Path(paths[0]).stem)
        if not m:
            raise TableError("no T= option and no _tNN in the file name")
        temperature = f"{int(m.group(1))}.{m.group(2)}"
    best = max(r["tau"] for r in rows_in)
    rows = [f"| draft distribution at T = {temperature} | τ |", "| --- | ---: |"]
    for r in rows_in:
        v = r["variant"]
        label = SWEEP_LABELS.get(v, f"sampled at {v} T (scale {v})")
        tau = f"{r['tau']:.3f}"
        rows.append(_row([label, f"**{tau}**" if r["tau"] == best else tau]))
    return "\n".join(rows)


def request_fuzz(data: list[Any], opts: dict[str, str]) -> str:
    """``benchmarks/request_fuzz.py --json``: what was sent and what held."""
    d = data[0]
    kinds = ", ".join(f"{d['by_kind'].get(k, 0)} {k}" for k in ("generate_ids", "generate_text", "chat", "completion"))
    inv = d["invariants"]
    rows = ["| what | measured |", "| --- | --- |",
            _row(["requests sent (not sent: budget)", f"{d['requests']} ({d.get('not_sent', 0)})"]),
            _row(["by kind", kinds]),
            _row(["streamed / hang-ups / aborts sent", f"{d['streamed']} / {d['hang_ups']} / {d['aborts_sent']}"]),
            _row(["finish reasons", ", ".join(f"{k} {v}" for k, v in d["finish_reasons"].items())]),
            _row(["failed requests", str(d["failed_requests"])]),
            _row(["server alive during / after", f"{_yes(d['server_alive_during'])} / {_yes(d['server_alive_after'])}"]),
            _row(["idle KV tokens before → after", f"{d['idle_kv_tokens_before']} → {d['idle_kv_tokens_after']}"]),
            _row(["row invariants: requests, rows, violations",
                  f"{inv['checked_requests']}, {inv['checked_rows']}, {inv['violations']}"])]
    return "\n".join(rows)


def memory_model(data: list[Any], opts: dict[str, str]) -> str:
    """``benchmarks/memory_model.py --json``: that script's own table (a MODEL: MiB of extra peak GPU memory per N)."""
    from sglang_domino.benchmarks.memory_model import markdown

    return markdown(data[0])


def tp_comm_model(data: list[Any], opts: dict[str, str]) -> str:
    """``benchmarks/tp_comm_model.py --json``: that script's tables (a MODEL: KiB received per rank per draft slot
    under tensor parallelism, per N and strategy), all TP sizes or the one ``tp=2`` names."""
    from sglang_domino.benchmarks.tp_comm_model import FORMAT, markdown

    if data[0].get("format") != FORMAT:
        raise TableError(f"not a {FORMAT} JSON (format {data[0].get('format')!r})")
    tp = opts.get("tp")
    return markdown(data[0], tp=int(tp) if tp is not None else None)


def _yes(b: Any) -> str:
    return "yes" if b else "no"


@dataclass(frozen=True)
class Kind:
    make: Callable[..., str]
    min_files: int = 1
    max_files: Optional[int] = 1
    needs_paths: bool = False


KINDS: dict[str, Kind] = {
    "serving": Kind(serving),
    "serving-paired": Kind(serving_paired),
    "serving-compare": Kind(serving_compare, 1, None),
    "serving-tp": Kind(serving_tp, 1, None),
    "eval-by-kind": Kind(eval_by_kind),
    "eval-compare": Kind(eval_compare, 1, None),
    "sampling-audit": Kind(sampling_audit),
    "round-profile": Kind(round_profile),
    "roofline": Kind(roofline),
    "draft-temperature-sweep": Kind(draft_temperature_sweep, needs_paths=True),
    "request-fuzz": Kind(request_fuzz),
    "memory-model": Kind(memory_model),
    "tp-comm-model": Kind(tp_comm_model),
}


# --------------------------------------------------------------------------------------------------- blocks


@dataclass
class Block:
    file: Path
    line: int  # 1-based line of the opening marker
    spec: str
    start: int  # offset of the body (after the opening marker's newline)
    end: int  # offset of the closing marker
    body: str

    def where(self, root: Path) -> str:
        try:
            name = self.file.resolve().relative_to(root.resolve())
        except ValueError:
            name = self.file
        return f"{name}:{self.line}"


def _fenced_ranges(text: str) -> list[tuple[int, int]]:
    marks = [m.start() for m in FENCE.finditer(text)]
    return [(marks[i], marks[i + 1] if i + 1 < len(marks) else len(text)) for i in range(0, len(marks), 2)]


def find_blocks(path: Path, text: Optional[str] = None) -> list[Block]:
    """The marked blocks of one markdown file; an opening marker without its closing one raises TableError."""
    text = path.read_text() if text is None else text
    fenced = _fenced_ranges(text)
    blocks = []
    for m in OPEN.finditer(text):
        if any(a <= m.start() < b for a, b in fenced):
            continue
        line = text.count("\n", 0, m.start()) + 1
        end = text.find(CLOSE, m.end())
        nxt = OPEN.search(text, m.end())
        if end < 0 or (nxt is not None and nxt.start() < end):
            raise TableError(f"{path}:{line}: results-table marker without its {CLOSE}")
        blocks.append(Block(path, line, m.group("spec").strip(), m.end(), end, text[m.end():end]))
    return blocks


def parse_spec(spec: str) -> tuple[str, list[str], dict[str, str]]:
    """``KIND path [path ...] [key=value | flag ...]``."""
    try:
        words = shlex.split(spec)
    except ValueError as exc:
        raise TableError(f"bad marker {spec!r}: {exc}") from exc
    if not words:
        raise TableError("empty results-table marker")
    kind, paths, opts = words[0], [], {}
    for w in words[1:]:
        if "=" in w:
            k, v = w.split("=", 1)
            opts[k] = v
        elif re.search(r"\.(json|jsonl)$", w):
            paths.append(w)
        else:
            opts[w] = ""
    return kind, paths, opts


def _committed(root: Path, rel: str) -> Optional[bool]:
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "--error-unmatch", "--", rel],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if "not a git repository" in out.stderr:
        return None
    return out.returncode == 0


def load(path: Path) -> Any:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.loads(path.read_text())


def generate(spec: str, root: Path = REPO, require_committed: bool = True) -> str:
    """The table text a marker's spec stands for (no trailing newline)."""
    kind_name, paths, opts = parse_spec(spec)
    kind = KINDS.get(kind_name)
    if kind is None:
        raise TableError(f"unknown kind {kind_name!r} (known: {', '.join(KINDS)})")
    if len(paths) < kind.min_files or (kind.max_files is not None and len(paths) > kind.max_files):
        raise TableError(f"{kind_name} takes {kind.min_files}{'' if kind.max_files == kind.min_files else '+'} "
                         f"JSON path(s), got {paths}")
    data = []
    for rel in paths:
        p = root / rel
        if not p.is_file():
            raise TableError(f"{rel}: no such file")
        if require_committed and _committed(root, rel) is False:
            raise TableError(f"{rel}: not committed (a published table must come from a committed file)")
        data.append(load(p))
    try:
        return kind.make(data, opts, paths) if kind.needs_paths else kind.make(data, opts)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise TableError(f"{kind_name} {' '.join(paths)}: {type(exc).__name__}: {exc}") from exc


def _has_provenance(path: Path) -> bool:
    try:
        data = load(path)
    except (OSError, ValueError):
        return True  # generate() reports it
    return not isinstance(data, dict) or "provenance" in data


def default_files(root: Path = REPO) -> list[Path]:
    files = [root / "README.md"] + sorted((root / "docs").rglob("*.md")) + sorted((root / "benchmarks" / "results").glob("*.md"))
    return [f for f in files if f.is_file()]


@dataclass
class Outcome:
    checked: int = 0
    differ: int = 0
    errors: int = 0
    rewritten: int = 0
    without_provenance: set = field(default_factory=set)  # JSON files written before benchmarks/provenance.py


def verify(files: list[Path], root: Path = REPO, write: bool = False, out=sys.stdout,
           require_committed: bool = True) -> Outcome:
    res = Outcome()
    for f in files:
        text = f.read_text()
        try:
            blocks = find_blocks(f, text)
        except TableError as exc:
            print(f"ERROR {exc}", file=out)
            res.errors += 1
            continue
        new_text, pos = [], 0
        for b in blocks:
            res.checked += 1
            try:
                _, paths, _ = parse_spec(b.spec)
                res.without_provenance.update(rel for rel in paths if not _has_provenance(root / rel))
                want = generate(b.spec, root, require_committed) + "\n"
            except TableError as exc:
                print(f"ERROR {b.where(root)} [{b.spec}]: {exc}", file=out)
                res.errors += 1
                continue
            if b.body.strip("\n") + "\n" == want:
                continue
            if write:
                new_text += [text[pos:b.start], want]
                pos = b.end
                res.rewritten += 1
                print(f"rewrote {b.where(root)} [{b.spec}]", file=out)
            else:
                res.differ += 1
                print(f"DIFFERS {b.where(root)} [{b.spec}] (published -> recomputed from the JSON):", file=out)
                published = b.body.strip("\n")
                out.writelines(difflib.unified_diff((published + "\n").splitlines(True) if published else [],
                                                    want.splitlines(True), "published", "recomputed"))
        if write and new_text:
            f.write_text("".join(new_text) + text[pos:])
    return res


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help="markdown files (default: README.md, docs/**/*.md, "
                                             "benchmarks/results/*.md)")
    ap.add_argument("--write", action="store_true", help="rewrite the blocks that differ in place")
    ap.add_argument("--list", action="store_true", help="list the blocks found and exit")
    args = ap.parse_args(argv)
    files = [Path(f) for f in args.files] or default_files()
    if args.list:
        for f in files:
            for b in find_blocks(f):
                print(f"{b.where(REPO)}  {b.spec}")
        return 0
    res = verify(files, write=args.write)
    print(f"verify_results: {res.checked} tables in {len(files)} files; {res.differ} differ, {res.errors} errors"
          + (f", {res.rewritten} rewritten" if args.write else ""))
    if res.without_provenance:
        print(f"note: {len(res.without_provenance)} of the JSON files were written before results recorded their "
              f"provenance (no \"provenance\" key): {', '.join(sorted(res.without_provenance))}")
    return 2 if res.errors else 1 if res.differ else 0


if __name__ == "__main__":
    sys.exit(main())
