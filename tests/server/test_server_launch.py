"""Starting SGLang with Domino: bad inputs refuse to start (one test per case), and sglang.Engine works too.

The plugin's checks run in SGLang's launcher while it resolves the server arguments, before any scheduler
process exists. Every bad case goes through exactly that code (``load_plugins()``, ``prepare_server_args(argv)``,
``server_args.resolve_once()`` -- the first steps of ``python -m sglang.launch_server``) in one probe process,
so nine cases cost one SGLang import; one case is also started as the real, unwrapped
``python -m sglang.launch_server`` to show the process exits with our one-line message as its last line. The probe,
that launch and an ``sglang.Engine`` run on a Qwen3 target run concurrently once per module.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from .conftest import cpu_env, free_port, launch_cmd

pytestmark = [pytest.mark.server, pytest.mark.timeout(900)]

LAUNCH_TIMEOUT = 400
ENGINE_PROMPT = [40, 81, 7, 300, 12, 99, 150, 44, 4]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_tensors(path: Path, fn) -> None:
    tensors = load_file(str(path / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(path / "model.safetensors"))


def _edit_config(path: Path, fn) -> None:
    cfg = json.loads((path / "config.json").read_text())
    fn(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


def build_cases(tiny, root: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (extra launch args incl. the drafter, phrase the refusal must contain)."""
    from sglang_domino import DominoDrafter, save_drafter
    from sglang_domino.config import DominoConfig

    cases: dict[str, tuple[list[str], str]] = {}
    cases["missing_checkpoint"] = (["--speculative-draft-model-path", str(root / "no-such-drafter")], "does not exist")

    partial = _copy(tiny.drafter, root / "partial")
    _edit_tensors(partial, lambda t: t.pop("prefix_gru.weight_hh_l0"))
    cases["partial_checkpoint"] = (["--speculative-draft-model-path", str(partial)],
                                   "missing tensors: prefix_gru.weight_hh_l0")

    shapes = _copy(tiny.drafter, root / "shapes")
    _edit_tensors(shapes, lambda t: t.__setitem__("hidden_norm.weight", torch.ones(32)))
    cases["wrong_shapes"] = (["--speculative-draft-model-path", str(shapes)], "wrongly shaped tensors: hidden_norm.weight")

    vocab = _copy(tiny.drafter, root / "vocab")
    _edit_config(vocab, lambda c: c.__setitem__("vocab_size", 640))
    _edit_tensors(vocab, lambda t: t.__setitem__("embed_proj.2.weight", torch.zeros(640, t["embed_proj.2.weight"].shape[1])))
    cases["vocab_mismatch"] = (["--speculative-draft-model-path", str(vocab)], "vocab_size mismatch")

    cfg = DominoConfig.from_pretrained(tiny.drafter).to_dict()
    cfg.update(hidden_size=32, intermediate_size=64, head_dim=8)
    cfg["dflash_config"].update(emb_dim=64, gru_hidden_dim=32)
    hidden = save_drafter(DominoDrafter(DominoConfig.from_dict(cfg)), root / "hidden")
    cases["hidden_size_mismatch"] = (["--speculative-draft-model-path", str(hidden)], "hidden_size mismatch")

    layers = _copy(tiny.drafter, root / "layers")
    _edit_config(layers, lambda c: c["dflash_config"].__setitem__("target_layer_ids", [0, 5]))
    cases["target_layer_ids_out_of_range"] = (["--speculative-draft-model-path", str(layers)], "target_layer_ids[1]=5")

    last = _copy(tiny.drafter, root / "last")
    _edit_config(last, lambda c: c["dflash_config"].__setitem__("target_layer_ids", [0, 3]))
    cases["target_layer_id_is_last_layer"] = (["--speculative-draft-model-path", str(last)], "last layer")

    projector = _copy(tiny.drafter, root / "projector")
    _edit_config(projector, lambda c: c["dflash_config"].__setitem__("projector_type", "medusa"))
    cases["unknown_projector_type"] = (["--speculative-draft-model-path", str(projector)], "projector_type='medusa'")

    cases["block_cannot_fit_context"] = (["--speculative-draft-model-path", str(tiny.drafter), "--context-length", "8"],
                                         "cannot fit the context length 8")
    return cases


PROBE_SCRIPT = textwrap.dedent("""
    import json, sys
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import prepare_server_args

    def main():
        load_plugins()
        cases = json.loads(open(sys.argv[1]).read())
        results = {}
        for name, argv in cases.items():
            try:
                prepare_server_args(argv).resolve_once()
                results[name] = "ACCEPTED"
            except BaseException as exc:  # what the launcher would die with
                results[name] = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
        print("RESULT " + json.dumps(results), flush=True)

    if __name__ == "__main__":
        main()
""")

# sglang.Engine imports SGLang's engine module (which needs sgl_kernel on CPU) before it loads plugins, so on a
# CPU machine without sgl-kernel SGLang's own load_plugins() is called first (the documented way).
ENGINE_SCRIPT = textwrap.dedent("""
    import json, sys
    from sglang.srt.plugins import load_plugins
    load_plugins()
    import sglang as sgl

    def main():
        target, draft, prompt = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
        llm = sgl.Engine(model_path=target, speculative_algorithm="domino", speculative_draft_model_path=draft,
                         device="cpu", attention_backend="torch_native", dtype="float32", max_total_tokens=8192,
                         sleep_on_idle=True, log_level="warning")
        try:
            out = llm.generate(input_ids=[prompt], sampling_params={"temperature": 0, "max_new_tokens": 24,
                                                                     "ignore_eos": True})
            print("RESULT " + json.dumps({"output_ids": out[0]["output_ids"], "meta": out[0]["meta_info"]}), flush=True)
        finally:
            llm.shutdown()

    if __name__ == "__main__":
        main()
""")


def _run(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(cmd, returncode=None, stdout=exc.stdout or "", stderr="TIMEOUT")


@pytest.fixture(scope="module")
def launches(tiny, tmp_path_factory):
    from sglang_domino.benchmarks import tiny_pair

    root = tmp_path_factory.mktemp("bad_inputs")
    cases = build_cases(tiny, root)
    argvs = {name: launch_cmd(tiny.target, free_port(), "--speculative-algorithm", "domino", *extra)[3:]
             for name, (extra, _) in cases.items()}
    (root / "cases.json").write_text(json.dumps(argvs))
    (root / "probe.py").write_text(PROBE_SCRIPT)
    # A Qwen3-family target (the other capture path) with a drafter using shift_label=False and
    # pure_draft_prefix_len=2 (beyond upstream's Domino limits), served through sglang.Engine.
    qwen3 = tiny_pair.build_pair(root / "qwen3", arch="qwen3", random_head=True, shift_label=False,
                                 pure_draft_prefix_len=2)
    (root / "engine_probe.py").write_text(ENGINE_SCRIPT)
    jobs = {
        "probe": [sys.executable, str(root / "probe.py"), str(root / "cases.json")],
        "real_launch": [sys.executable, "-m", "sglang.launch_server", *argvs["partial_checkpoint"]],
        "engine": [sys.executable, str(root / "engine_probe.py"), str(qwen3.target), str(qwen3.drafter),
                   json.dumps(ENGINE_PROMPT)],
    }
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {name: pool.submit(_run, cmd, cpu_env()) for name, cmd in jobs.items()}
        results = {name: f.result() for name, f in futures.items()}
    lines = [line for line in (results["probe"].stdout or "").splitlines() if line.startswith("RESULT ")]
    assert lines, f"probe failed:\n{(results['probe'].stderr or '')[-3000:]}"
    refusals = json.loads(lines[-1][len("RESULT "):])
    return {"cases": cases, "refusals": refusals, "runs": results, "qwen3_pair": qwen3}


CASE_NAMES = ["missing_checkpoint", "partial_checkpoint", "wrong_shapes", "vocab_mismatch", "hidden_size_mismatch",
              "target_layer_ids_out_of_range", "target_layer_id_is_last_layer", "unknown_projector_type",
              "block_cannot_fit_context"]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_input_refuses_to_start(launches, case) -> None:
    message = launches["refusals"][case]
    assert message != "ACCEPTED", f"{case}: SGLang accepted the configuration"
    assert message.startswith("sglang_domino.plugin.validate.DominoServerArgsError: sglang-domino: "), message
    assert "\n" not in message, message
    assert launches["cases"][case][1] in message, message


def test_real_launch_exits_with_one_line(launches) -> None:
    result = launches["runs"]["real_launch"]
    output = (result.stdout or "") + (result.stderr or "")
    assert result.returncode not in (0, None), f"server did not refuse to start\n{output[-2000:]}"
    last = [line for line in output.splitlines() if line.strip()][-1]
    assert "sglang-domino: drafter" in last and "missing tensors: prefix_gru.weight_hh_l0" in last, last
    assert "scheduler died" not in output, "refused only after spawning the scheduler"


def test_engine_api_serves_domino_on_qwen3(launches) -> None:
    """sglang.Engine(speculative_algorithm="domino") on a Qwen3 target equals HF greedy decoding."""
    from transformers import AutoModelForCausalLM

    from sglang_domino.offline import plain_generate

    result, pair = launches["runs"]["engine"], launches["qwen3_pair"]
    lines = [line for line in (result.stdout or "").splitlines() if line.startswith("RESULT ")]
    assert lines, f"Engine run failed:\n{(result.stdout or '')[-1500:]}\n{(result.stderr or '')[-3000:]}"
    out = json.loads(lines[-1][len("RESULT "):])
    target = AutoModelForCausalLM.from_pretrained(pair.target, dtype=torch.float32).eval()
    ref = plain_generate(target, torch.tensor([ENGINE_PROMPT]), 24)
    assert out["output_ids"] == ref
    assert 0 < out["meta"]["spec_verify_ct"] <= 23
