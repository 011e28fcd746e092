"""benchmarks/verify_results.py: every marked results table in the repository equals what its generator makes of
the committed JSON; a changed number is caught; the generators format as published. No server, a second or two."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load():
    from sglang_domino.benchmarks import verify_results

    return verify_results


vr = _load()


def test_published_tables_equal_their_json() -> None:
    out = io.StringIO()
    res = vr.verify(vr.default_files(REPO), REPO, out=out)
    assert res.errors == 0 and res.differ == 0, out.getvalue()
    assert res.checked >= 10  # HISTORY.md alone has ten


def test_command_line_exits_zero_on_the_repo() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "verify_results.py")], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 differ, 0 errors" in proc.stdout


def _a_marked_block() -> tuple[str, str]:
    """A marked block as published (README's first, else HISTORY's), with its marker lines."""
    for name in ("README.md", "benchmarks/results/HISTORY.md"):
        text = (REPO / name).read_text()
        for b in vr.find_blocks(REPO / name, text):
            if re.search(r"\d+\.\d", b.body):
                return b.spec, text[text.rfind("<!--", 0, b.start):b.end + len(vr.CLOSE)]
    pytest.fail("no marked results table in README.md or HISTORY.md")


def test_a_changed_number_fails_and_write_restores_it(tmp_path: Path) -> None:
    _, block = _a_marked_block()
    m = re.search(r"(?<=\| )(\d+)\.(\d)", block)  # the first one-decimal number of the table
    changed = block[:m.start()] + f"{int(m.group(1)) + 1}.{m.group(2)}" + block[m.end():]
    page = tmp_path / "page.md"
    page.write_text(f"# copy\n\n{changed}\n\ntext after\n")
    out = io.StringIO()
    res = vr.verify([page], REPO, out=out)
    assert (res.differ, res.errors) == (1, 0)
    assert "-| " in out.getvalue() and f"{int(m.group(1)) + 1}.{m.group(2)}" in out.getvalue()
    res = vr.verify([page], REPO, write=True, out=io.StringIO())
    assert res.rewritten == 1
    assert page.read_text() == f"# copy\n\n{block}\n\ntext after\n"
    assert vr.verify([page], REPO, out=io.StringIO()).differ == 0


def test_cli_exit_codes(tmp_path: Path) -> None:
    _, block = _a_marked_block()
    page = tmp_path / "page.md"
    page.write_text(block.replace(" | ", " |  ", 1) + "\n")  # any change in the text counts
    script = str(REPO / "benchmarks" / "verify_results.py")
    proc = subprocess.run([sys.executable, script, str(page)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "DIFFERS" in proc.stdout
    page.write_text("<!-- results-table: no-such-kind x.json -->\n<!-- /results-table -->\n")
    proc = subprocess.run([sys.executable, script, str(page)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown kind" in proc.stdout


def test_markers_in_code_fences_are_examples_and_an_unclosed_marker_is_an_error(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("```\n<!-- results-table: serving x.json -->\n| a |\n<!-- /results-table -->\n```\n")
    assert vr.find_blocks(page) == []
    page.write_text("<!-- results-table: serving x.json -->\n| a |\n")
    with pytest.raises(vr.TableError, match="without its"):
        vr.find_blocks(page)


def _level(c: int, plain: float, domino: float, backbone: float) -> dict:
    lat = {"median": 61.6, "p90": 80.4}
    return {"concurrency": c, "num_prompts": 8, "plain_tok_s": plain, "domino_tok_s": domino,
            "backbone_tok_s": backbone, "speedup_vs_plain": domino / plain, "speedup_vs_backbone": domino / backbone,
            "tau_domino": 1.294, "tau_backbone": None, "ttft_ms": {"domino": {"median": 118.9, "p90": 1}},
            "itl_ms": {"domino": lat}, "domino_requests_equal_plain": 8}


def test_serving_generator_formats_as_published(tmp_path: Path) -> None:
    data = {"levels": [_level(1, 18.96, 19.60, 19.51), _level(2, 33.44, 30.04, 31.25)]}
    (tmp_path / "s.json").write_text(json.dumps(data))
    table = vr.generate("serving s.json levels=2", tmp_path)
    assert table.splitlines()[2] == "| 2 | 33.4 | 30.0 | 31.2 | 0.90× | 0.96× | 1.29 | nan | 119 | 62 / 80 | 8/8 |"
    assert len(table.splitlines()) == 3
    assert "D output = plain" not in vr.generate("serving s.json equal=off", tmp_path)
    with pytest.raises(vr.TableError, match="levels"):
        vr.generate("serving s.json levels=4", tmp_path)


def test_eval_by_kind_generator(tmp_path: Path) -> None:
    rows = [{"kind": "chat", "lossless": True}, {"kind": "chat", "lossless": False}, {"kind": "math", "lossless": True}]
    data = {"num_prompts": 3, "new_tokens": 1234, "tau_domino": 1.745, "tau_backbone": 1.48, "tau_ratio": 1.179,
            "temperature": 0.0, "per_prompt": rows,
            "by_kind": {"chat": {"num_prompts": 2, "new_tokens": 1000, "tau_domino": 1.6063, "tau_backbone": 1.3961,
                                 "tau_ratio": 1.1506},
                        "math": {"num_prompts": 1, "new_tokens": 234, "tau_domino": 2.85, "tau_backbone": 1.83,
                                 "tau_ratio": 1.554}}}
    (tmp_path / "e.json").write_text(json.dumps(data))
    lines = vr.generate("eval-by-kind e.json", tmp_path).splitlines()
    assert lines[2] == "| chat | 2 | 1,000 | 1.61 | 1.40 | 1.15× | 1/2 |"
    assert lines[-1] == "| **all 3 (pooled)** | 3 | 1,234 | **1.75** | **1.48** | **1.18×** | **2/3** |"


def test_a_published_table_must_come_from_a_committed_file(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "s.json").write_text(json.dumps({"levels": [_level(1, 10.0, 11.0, 10.5)]}))
    with pytest.raises(vr.TableError, match="not committed"):
        vr.generate("serving s.json", tmp_path)
    assert vr.generate("serving s.json", tmp_path, require_committed=False).startswith("| concurrency")


def test_serving_tp_generator_one_row_per_file_and_level(tmp_path: Path) -> None:
    def run(plain: float, domino: float) -> dict:
        level = dict(_level(1, plain, domino, plain), repeats=5,
                     domino_vs_plain={"geomean": domino / plain, "low": 0.9, "high": 1.2})
        return {"server_args": "", "configs": {"defaults": {"levels": [level, dict(level, concurrency=4)]}}}

    (tmp_path / "a.json").write_text(json.dumps(run(360.2, 350.5)))
    (tmp_path / "b.json").write_text(json.dumps(run(62.2, 58.0)))
    lines = vr.generate('serving-tp a.json b.json labels="TP 1|TP 2" title="--tp-size"', tmp_path).splitlines()
    assert lines[0].startswith("| --tp-size | concurrency | plain tok/s | Domino tok/s |")
    assert lines[2] == "| TP 1 | 1 | 360.2 | 350.5 | 360.2 | 0.97× [0.90, 1.20] | 1.29 | 5 | 8/8 |"
    assert lines[5] == "| TP 2 | 4 | 62.2 | 58.0 | 62.2 | 0.93× [0.90, 1.20] | 1.29 | 5 | 8/8 |"
    assert len(lines) == 6
    with pytest.raises(vr.TableError, match="labels"):
        vr.generate('serving-tp a.json b.json labels="TP 1"', tmp_path)
