"""``sglang-domino serve``: the SGLang command it runs, flag pass-through, and the up-front drafter check."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import random_drafter

from sglang_domino import save_drafter
from sglang_domino.server import launch
from sglang_domino.hardware import cpu_has_bf16_units
from sglang_domino.server.launch import build_command, curl_example


def test_cpu_command_is_plain_sglang_with_domino_flags() -> None:
    cmd, env = build_command("T", "D", "127.0.0.1", 30000, ["--dtype", "float32", "--log-level", "warning"], cpu=True)
    assert cmd[1:3] == ["-m", "sglang.launch_server"]
    joined = " ".join(cmd)
    assert "--model-path T" in joined and "--speculative-algorithm domino" in joined
    assert "--speculative-draft-model-path D" in joined and "--device cpu" in joined
    assert "--attention-backend torch_native" in joined and env["SGLANG_USE_CPU_ENGINE"] == "1"
    assert cmd.count("--dtype") == 1 and cmd[-4:] == ["--dtype", "float32", "--log-level", "warning"]
    assert "--host 127.0.0.1 --port 30000" in joined
    assert "--sleep-on-idle" in cmd  # an idle CPU scheduler must not busy-poll a core


def test_cpu_bf16_units_detection(tmp_path) -> None:
    avx2 = tmp_path / "avx2"
    avx2.write_text("flags\t\t: fpu sse avx avx2 fma\n")
    amx = tmp_path / "amx"
    amx.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert not cpu_has_bf16_units(str(avx2)) and cpu_has_bf16_units(str(amx))
    assert not cpu_has_bf16_units(str(tmp_path / "missing"))


def test_cpu_dtype_default_is_float32_on_every_cpu(monkeypatch) -> None:
    """float32 is bit-equal to plain decoding and measured not slower than bf16 on a bf16 machine (see
    launch.cpu_default_dtype); the user's --dtype wins."""
    import sglang_domino.hardware as hardware

    for has_units in (False, True):
        monkeypatch.setattr(hardware, "cpu_has_bf16_units", lambda: has_units)
        cmd, _ = build_command("T", "D", "127.0.0.1", 30000, [], cpu=True)
        assert cmd[cmd.index("--dtype") + 1] == "float32"
    cmd, _ = build_command("T", "D", "127.0.0.1", 30000, ["--dtype", "bfloat16"], cpu=True)
    assert cmd.count("--dtype") == 1 and cmd[cmd.index("--dtype") + 1] == "bfloat16"


def test_cpu_verify_width_default_and_override() -> None:
    cmd, _ = build_command("T", "D", "127.0.0.1", 30000, [], cpu=True)
    assert cmd[cmd.index("--speculative-num-draft-tokens") + 1] == str(launch.CPU_DEFAULT_VERIFY_WIDTH)
    cmd, _ = build_command("T", "D", "127.0.0.1", 30000, ["--speculative-num-draft-tokens", "16"], cpu=True)
    assert cmd.count("--speculative-num-draft-tokens") == 1 and cmd[-1] == "16"  # the user's width wins
    for plain_or_gpu in (build_command("T", None, "h", 1, [], cpu=True)[0], build_command("T", "D", "h", 1, [], cpu=False)[0]):
        assert "--speculative-num-draft-tokens" not in plain_or_gpu


def test_cuda_command_has_no_cpu_flags() -> None:
    cmd, env = build_command("T", "D", "127.0.0.1", 30000, [], cpu=False)
    assert "--device" not in cmd
    assert "--attention-backend" not in cmd


def test_baseline_command_has_no_speculation() -> None:
    cmd, _ = build_command("T", None, "127.0.0.1", 30001, [], cpu=True)
    assert "--speculative-algorithm" not in cmd


def test_cli_passes_unknown_flags_to_sglang(tmp_path) -> None:
    draft = save_drafter(random_drafter(), tmp_path / "d")
    out = subprocess.run([sys.executable, "-m", "sglang_domino.cli", "serve", "--target", "/t", "--draft", str(draft),
                          "--print-command", "--dtype", "float32", "--context-length", "128", "--port", "31234"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert "--dtype float32" in line and "--context-length 128" in line and "--port 31234" in line


def test_serve_refuses_bad_drafter_with_one_line(tmp_path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{}")
    out = subprocess.run([sys.executable, "-m", "sglang_domino.cli", "serve", "--target", str(tmp_path),
                          "--draft", str(tmp_path / "bad")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: sglang-domino: drafter"), out.stderr


def test_curl_example_targets_generate() -> None:
    assert curl_example("http://127.0.0.1:30000").startswith("curl -s http://127.0.0.1:30000/generate")


def test_cpu_tensor_parallel_binds_one_share_of_cores_per_rank(monkeypatch) -> None:
    """--tp-size N on CPU: SGLANG_CPU_OMP_THREADS_BIND gets one even share of the cores per rank unless set."""
    monkeypatch.delenv("SGLANG_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.setattr(launch, "threads_bind", lambda ranks: "|".join(str(r) for r in range(ranks)))
    _, env = build_command("T", None, "127.0.0.1", 30000, ["--tp-size", "2"], cpu=True)
    assert env["SGLANG_CPU_OMP_THREADS_BIND"] == "0|1"
    _, env = build_command("T", None, "127.0.0.1", 30000, ["--tp=2", "--dp-size", "2"], cpu=True)
    assert env["SGLANG_CPU_OMP_THREADS_BIND"] == "0|1|2|3"
    _, env = build_command("T", None, "127.0.0.1", 30000, [], cpu=True)
    assert "SGLANG_CPU_OMP_THREADS_BIND" not in env  # one rank: SGLang's own binding
    _, env = build_command("T", None, "127.0.0.1", 30000, ["--tp-size", "2"], cpu=False)
    assert "SGLANG_CPU_OMP_THREADS_BIND" not in env  # GPUs: nothing to bind
    monkeypatch.setenv("SGLANG_CPU_OMP_THREADS_BIND", "1|0")
    _, env = build_command("T", None, "127.0.0.1", 30000, ["--tp-size", "2"], cpu=True)
    assert env["SGLANG_CPU_OMP_THREADS_BIND"] == "1|0"  # the user's choice stays


def test_serve_cpu_tensor_parallel_needs_a_core_per_rank(monkeypatch, capsys) -> None:
    monkeypatch.delenv("SGLANG_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.setattr(launch, "cuda_available", lambda: False)
    too_many = 4096
    ns = launch._configure(launch._PassThroughParser()).parse_args(
        ["--target", "T", "--no-speculation", "--print-command", "--tp-size", str(too_many)])
    assert launch.run_serve(ns) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: {too_many} CPU ranks need one physical core each")


def test_serve_refuses_a_tensor_parallel_size_the_drafter_cannot_split_with_one_line(tmp_path) -> None:
    """A drafter with 3 attention heads (the embedded one has 9) cannot be sharded over 2 ranks by upstream's DFlash
    attention: one line, before any process spawns."""
    draft = save_drafter(random_drafter(seed=0, num_attention_heads=3, num_key_value_heads=1, head_dim=16),
                         tmp_path / "draft")
    target = tmp_path / "target"
    target.mkdir()
    (target / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "vocab_size": 96,
        "num_hidden_layers": 4, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "torch_dtype": "float32"}))
    out = subprocess.run([sys.executable, "-m", "sglang_domino.cli", "serve", "--target", str(target), "--draft",
                          str(draft), "--tp-size", "2"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "--tp-size 2 does not divide the drafter's 3 attention heads" in lines[0], out.stderr
    assert "this drafter fits --tp-size 1 (up to 16)" in lines[0], lines[0]  # 3 heads, but 96 -> 128 padded
