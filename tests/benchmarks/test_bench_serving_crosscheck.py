"""benchmarks/bench_serving_crosscheck.py: the held-out prompts in bench_serving's ``custom`` format, and the
command line SGLang's own client is run with."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path



def _load():
    from sglang_domino.benchmarks import bench_serving_crosscheck

    return bench_serving_crosscheck


def test_custom_dataset_lines_and_command(tmp_path: Path) -> None:
    mod = _load()
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi ☃"}]}) + "\n"
                       + json.dumps({"prompt": "plain text"}) + "\n")
    out = tmp_path / "custom.jsonl"
    assert mod.write_custom_dataset(prompts, out) == 2
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["conversations"][0]["content"] for r in rows] == ["Hi ☃", "plain text"]
    assert all(len(r["conversations"]) == 2 for r in rows)  # bench_serving skips conversations of < 2 turns

    args = argparse.Namespace(base_url="http://127.0.0.1:1", output_len=64, num_prompts=3, max_concurrency=2,
                              output_file=str(tmp_path / "o.jsonl"))
    cmd = mod.command(args, out, "/t")
    assert cmd[:3] == [sys.executable, "-m", "sglang.bench_serving"]
    flags = dict(zip(cmd[3::1], cmd[4::1]))
    assert flags["--backend"] == "sglang-oai" and flags["--dataset-name"] == "custom"
    assert flags["--sharegpt-output-len"] == "64" and flags["--max-concurrency"] == "2"
    assert json.loads(flags["--extra-request-body"]) == {"temperature": 0}


def test_bench_serving_accepts_these_flags() -> None:
    """The flags exist in the pinned SGLang's bench_serving parser (a renamed flag fails here, not in a run)."""
    import subprocess

    help_text = subprocess.run([sys.executable, "-m", "sglang.bench_serving", "--help"], capture_output=True,
                               text=True, timeout=300).stdout
    for flag in ("--backend", "--dataset-name", "--dataset-path", "--apply-chat-template", "--sharegpt-output-len",
                 "--max-concurrency", "--extra-request-body", "--output-file", "--tokenizer", "--request-rate"):
        assert flag in help_text, flag
    assert "sglang-oai" in help_text and "custom" in help_text
