"""scripts/gpu_check.py --small: the prepared device check runs its every step on a CPU (Triton interpreter, eager
graph fallback) from the bare tree, without SGLang, and writes a complete JSON."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_small_on_cpu(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TRITON_INTERPRET"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU variant even on a GPU machine
    # Step 1's machinery on one kernel test file: CI runs the whole of tests/kernels itself.
    cmd = [sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--small", "--out", str(tmp_path),
           "--kernel-tests", "tests/kernels/test_triton_gru.py"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the script and its pytest subprocess
        output, _ = proc.communicate()
        pytest.fail(f"gpu_check --small ran past 600 s:\n{output[-4000:]}")
    assert proc.returncode == 0, output[-6000:]
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["failed"] == 0 and data["skipped"] == 0
    names = {c["name"] for c in data["checks"]}
    assert {"kernel-tests", "graph-replay", "offline-tiny-random", "offline-tiny-pair", "timings"} <= names
    assert any(n.startswith("oracle-") for n in names) and any(n.startswith("gru-") for n in names)
    assert all(c["passed"] and c["status"] == "passed" for c in data["checks"]), data["checks"]
    for key in ("torch", "triton", "cuda", "gpu", "python"):
        assert key in data["versions"]
    assert data["versions"]["triton_interpreter"] is True
    graph = next(c for c in data["checks"] if c["name"] == "graph-replay")["detail"]
    assert graph["graphs_captured"] == [] and "no CUDA graph was captured" in graph["note"]
    tests = next(c for c in data["checks"] if c["name"] == "kernel-tests")["detail"]
    assert tests["passed"] > 0 and not tests["failed_tests"] and tests["paths"] == ["tests/kernels/test_triton_gru.py"]
    assert {r["N"] for r in data["timings"]["rows"]} == {1, 4}
    assert (tmp_path / "gpu_check.log").read_text().strip()
