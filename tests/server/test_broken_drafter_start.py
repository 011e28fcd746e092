"""The real, unwrapped ``python -m sglang.launch_server`` with each broken drafter exits non-zero within 120 s,
its last output line one clear sentence naming the problem (and no scheduler process was ever started).

Complements ``test_server_launch.py`` (which checks every refusal message in one probe process): here every broken
checkpoint is a real server start, timed from process launch to exit.
"""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from .conftest import cpu_env, free_port, launch_cmd
from .test_server_launch import _copy, _edit_config, _edit_tensors

pytestmark = [pytest.mark.server, pytest.mark.timeout(900)]

EXIT_WITHIN_S = 120.0


def _truncate(path: Path) -> None:
    f = path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) * 2 // 3])


def _int_tensor(path: Path) -> None:
    def edit(t: dict) -> None:
        t["fc.weight"] = t["fc.weight"].to(torch.int32)

    _edit_tensors(path, edit)


def _vocab(path: Path) -> None:
    _edit_config(path, lambda c: c.__setitem__("vocab_size", 640))
    t = load_file(str(path / "model.safetensors"))
    t["embed_proj.2.weight"] = torch.zeros(640, t["embed_proj.2.weight"].shape[1])
    save_file(t, str(path / "model.safetensors"))


# name -> (how to break a copy of the tiny drafter, phrase the last line must contain)
BROKEN = {
    "missing tensor": (lambda p: _edit_tensors(p, lambda t: t.pop("layers.0.mlp.down_proj.weight")),
                       "missing tensors: layers.0.mlp.down_proj.weight"),
    "wrong dtype": (_int_tensor, "non-floating-point tensors: fc.weight"),
    "shape mismatch": (lambda p: _edit_tensors(p, lambda t: t.__setitem__("fc.weight", t["fc.weight"][:, :-8].contiguous())),
                       "wrongly shaped tensors: fc.weight"),
    "vocab mismatch": (_vocab, "vocab_size mismatch"),
    "truncated safetensors": (_truncate, "truncated safetensors file"),
    "unreadable config": (lambda p: (p / "config.json").write_text('{"architectures": ["DFlashDraftModel"], '),
                          "unreadable config.json"),
}


def _launch(cmd: list[str]) -> dict:
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, env=cpu_env(), capture_output=True, text=True, timeout=EXIT_WITHIN_S + 60)
        rc, out = r.returncode, (r.stdout or "") + (r.stderr or "")
    except subprocess.TimeoutExpired as exc:
        rc, out = None, str(exc.stdout or "") + "\nTIMEOUT"
    return {"rc": rc, "seconds": time.monotonic() - t0, "output": out}


@pytest.fixture(scope="module")
def starts(tiny, tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("broken_drafters")
    cmds = {}
    for i, (name, (breaker, _)) in enumerate(BROKEN.items()):
        draft = _copy(tiny.drafter, root / f"case{i}")
        breaker(draft)
        cmds[name] = launch_cmd(tiny.target, free_port(), draft=draft)
    # Two at a time: this machine has two cores, and each start is timed on its own.
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(cmds, pool.map(_launch, cmds.values())))


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_drafter_exits_with_one_clear_line(starts, case) -> None:
    result = starts[case]
    output = result["output"]
    assert result["rc"] not in (0, None), f"{case}: server did not exit (rc={result['rc']})\n{output[-2000:]}"
    assert result["seconds"] < EXIT_WITHIN_S, f"{case}: took {result['seconds']:.0f} s"
    last = [line for line in output.splitlines() if line.strip()][-1]
    assert "DominoServerArgsError: sglang-domino: " in last, last
    assert BROKEN[case][1] in last, last
    assert "scheduler died" not in output, "refused only after spawning the scheduler"

