"""``sglang-domino serve``: the real SGLang server with Domino speculative decoding.

    sglang-domino serve [--target T --draft D] [--host H] [--port P] [any sglang.launch_server flag]

It runs ``python -m sglang.launch_server --model-path T --speculative-algorithm domino
--speculative-draft-model-path D ...`` -- the same command a user can type, the plugin being loaded by SGLang's
own entry-point mechanism -- plus, on a machine without CUDA, what SGLang's CPU engine needs
(``SGLANG_USE_CPU_ENGINE=1``, ``--device cpu --attention-backend torch_native``, float32 -- bit-equal to plain
float32 decoding, see :func:`cpu_default_dtype` --, a verify width of 4, a bounded KV pool and, for
``--tp-size`` > 1, ``SGLANG_CPU_OMP_THREADS_BIND`` with one even share of the cores per rank, each unless given).
Without ``--target``/``--draft`` it serves the embedded default pair. It checks the drafter before starting (one line on error, exit 2), waits for
``/health``, then prints the URL and a curl example, and stays in the foreground until the server exits or is
interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from typing import Optional, Sequence

from sglang_domino.plugin.cpu_tp import THREADS_BIND_ENV, threads_bind
from sglang_domino.server.process import ServerProcess, ServerStartError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 30000
CPU_DEFAULT_MAX_TOTAL_TOKENS = 65536
# Verify width of a Domino server on CPU unless --speculative-num-draft-tokens is given: there the target's verify
# forward costs more with every row (SmolLM2-135M, float32, 2 cores: 4 rows 29 ms of linears, 16 rows 49 ms), while
# the shipped drafter's tau grows little past 4 (1.58 at width 4 vs 1.70 at 16, held-out prompts).
CPU_DEFAULT_VERIFY_WIDTH = 4


class _PassThroughParser(argparse.ArgumentParser):
    """Keeps unknown arguments (SGLang's own flags) in ``namespace.sglang_args`` instead of rejecting them."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extra = super().parse_known_args(args, namespace)
        passthrough = list(getattr(namespace, "sglang_args", None) or [])
        namespace.sglang_args = passthrough + [a for a in extra if a != "--"]
        return namespace, []


def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--target", default=None, help="target model directory (default: the embedded SmolLM2-135M)")
    p.add_argument("--draft", default=None, help="Domino drafter checkpoint (default: the embedded drafter)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"bind address (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--no-speculation", action="store_true",
                   help="serve the target alone (same flags, no Domino) -- the baseline for comparisons")
    p.add_argument("--ready-timeout", type=float, default=900.0, help="seconds to wait for /health")
    p.add_argument("--print-command", action="store_true", help="print the SGLang command and exit")
    p.set_defaults(func=run_serve, sglang_args=[])
    return p


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``serve`` on the ``sglang-domino`` CLI; unknown flags are passed to SGLang."""
    p = subparsers.add_parser("serve", help="launch the SGLang server with Domino speculative decoding",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.__class__ = _PassThroughParser
    return _configure(p)


def _has_flag(args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def _int_flag(args: Sequence[str], *flags: str, default: int = 1) -> int:
    """The integer value of the first of ``flags`` in ``args`` (``--flag N`` or ``--flag=N``), else ``default``."""
    for i, a in enumerate(args):
        key, eq, value = a.partition("=")
        if key in flags:
            value = value if eq else (args[i + 1] if i + 1 < len(args) else "")
            try:
                return int(value)
            except ValueError:
                return default
    return default


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def resolve_pair(target: Optional[str], draft: Optional[str]) -> tuple[str, str]:
    if target is not None and draft is not None:
        return target, draft
    from sglang_domino.embedded import prepare_embedded_pair

    pair = prepare_embedded_pair()
    return target or str(pair.target), draft or str(pair.draft)


def cpu_default_dtype() -> str:
    """float32, on every CPU. ``--dtype`` given by the user always wins.

    Why: float32 serving is bit-equal to plain float32 decoding token for token; bf16 is not (a multi-token verify
    and a one-token decode round the logits differently in bf16), although on a CPU with bf16 units it is faster
    at low concurrency; without them PyTorch emulates bf16 and it is much slower. The side-by-side measurement is
    in docs/serving.md ("Why float32 on every CPU"). bf16 stays a flag away (``--dtype bfloat16``).
    """
    return "float32"


def build_command(target: str, draft: Optional[str], host: str, port: int, extra: Sequence[str], *,
                  cpu: bool) -> tuple[list[str], dict[str, str]]:
    """The ``python -m sglang.launch_server`` argv and the environment it needs."""
    extra = list(extra)
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", target, "--host", host, "--port", str(port)]
    if draft is not None:
        cmd += ["--speculative-algorithm", "domino", "--speculative-draft-model-path", draft]
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    if cpu:
        env["SGLANG_USE_CPU_ENGINE"] = "1"
        ranks = _int_flag(extra, "--tp-size", "--tp") * _int_flag(extra, "--pp-size", "--pp") * _int_flag(
            extra, "--dp-size", "--dp")
        if ranks > 1 and not env.get(THREADS_BIND_ENV):
            # One even share of the physical cores per rank ("0|1": TP=2 on 2 cores). Unset, SGLang gives each rank a
            # NUMA node and asserts ranks <= NUMA nodes. ValueError when there are fewer cores than ranks.
            env[THREADS_BIND_ENV] = threads_bind(ranks)
        if not _has_flag(extra, "--device"):
            cmd += ["--device", "cpu"]
        if not _has_flag(extra, "--attention-backend"):
            cmd += ["--attention-backend", "torch_native"]
        if not _has_flag(extra, "--dtype"):
            cmd += ["--dtype", cpu_default_dtype()]
        if not _has_flag(extra, "--sleep-on-idle"):
            # SGLang's scheduler otherwise busy-polls: an idle CPU server keeps a core busy. With the benchmark's
            # three servers side by side, the plain one decoded at ~1.3 tokens/s while the two idle ones spun.
            cmd += ["--sleep-on-idle"]
        if not _has_flag(extra, "--max-total-tokens"):
            cmd += ["--max-total-tokens", str(CPU_DEFAULT_MAX_TOTAL_TOKENS)]
        if draft is not None and not _has_flag(extra, "--speculative-num-draft-tokens"):
            cmd += ["--speculative-num-draft-tokens", str(CPU_DEFAULT_VERIFY_WIDTH)]
    return cmd + extra, env


def precheck(target: str, draft: str, extra: Sequence[str]) -> Optional[str]:
    """The plugin's own server-argument checks, before spawning anything; the error line or None."""
    from sglang_domino.plugin.validate import DominoServerArgsError, validate_server_args

    ns = argparse.Namespace(model_path=target, speculative_draft_model_path=draft, trust_remote_code=False,
                            revision=None, context_length=None, speculative_num_draft_tokens=None,
                            speculative_dflash_block_size=None, tp_size=1, pp_size=1, enable_dp_attention=False,
                            speculative_draft_window_size=None)
    flags = {"--context-length": "context_length", "--speculative-num-draft-tokens": "speculative_num_draft_tokens",
             "--tp-size": "tp_size", "--tp": "tp_size"}
    for i, a in enumerate(extra):
        key, _, value = a.partition("=")
        if key in flags:
            value = value or (extra[i + 1] if i + 1 < len(extra) else None)
            if value is not None:
                try:
                    setattr(ns, flags[key], int(value))
                except ValueError:
                    pass
    try:
        validate_server_args(ns)
    except DominoServerArgsError as exc:
        return str(exc)
    return None


def curl_example(url: str) -> str:
    body = json.dumps({"text": "The capital of France is", "sampling_params": {"max_new_tokens": 32, "temperature": 0}})
    return f"curl -s {url}/generate -H 'Content-Type: application/json' -d {shlex.quote(body)}"


def run_serve(args: argparse.Namespace) -> int:
    extra = list(getattr(args, "sglang_args", []) or [])
    target, draft = resolve_pair(args.target, args.draft)
    if args.no_speculation:
        draft = None
    elif not args.print_command:
        problem = precheck(target, draft, extra)
        if problem is not None:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    try:
        cmd, env = build_command(target, draft, args.host, args.port, extra, cpu=not cuda_available())
    except ValueError as exc:  # more CPU ranks than cores
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_command:
        prefix = "SGLANG_USE_CPU_ENGINE=1 " if env.get("SGLANG_USE_CPU_ENGINE") == "1" else ""
        if env.get(THREADS_BIND_ENV) and env.get(THREADS_BIND_ENV) != os.environ.get(THREADS_BIND_ENV):
            prefix += f"{THREADS_BIND_ENV}={shlex.quote(env[THREADS_BIND_ENV])} "
        print(prefix + shlex.join(cmd))
        return 0
    server = ServerProcess("sglang", cmd, env, own_session=False, restart_on_port_clash=False)
    url = server.url
    print(f"starting SGLang ({'Domino' if draft else 'no speculation'}): {shlex.join(cmd)}", flush=True)
    server.start()

    def _forward(signum, _frame):
        server.send_signal(signum)

    previous = {s: signal.signal(s, _forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.wait_healthy(args.ready_timeout)
        except ServerStartError as exc:
            if server.alive():  # not healthy in time: stop it; an exit is reported by the server itself
                print(f"error: {exc}", file=sys.stderr)
                server.stop()
            return server.wait()
        print(f"\nSGLang + Domino is serving at {url}" if draft else f"\nSGLang is serving at {url}")
        print(f"  try: {curl_example(url)}")
        print(f"  acceptance: curl -s {url}/get_server_info  (internal_states[0].avg_spec_accept_length); "
              "meta_info.spec_verify_ct in /generate\n", flush=True)
        return server.wait()
    except KeyboardInterrupt:
        server.stop()
        return server.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _configure(_PassThroughParser(prog="python -m sglang_domino.server.launch", description=__doc__,
                                           formatter_class=argparse.RawDescriptionHelpFormatter))
    args, _ = parser.parse_known_args(argv)
    return int(run_serve(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
