"""Real SGLang servers on loopback, shared by the whole server suite (session scope).

* ``tiny_pair``: the tiny predictable target + hand-built Domino drafter of :mod:`tiny_pair`, written to a tmp dir.
* ``servers``: real servers started concurrently and shared by the whole server suite:

  - ``plain`` / ``domino``: the *same* ``python -m sglang.launch_server`` twice, in float32 (bf16 verify/decode
    rounding makes near-ties diverge, so token-for-token tests compare in float32) -- once plain, once with
    ``--speculative-algorithm domino`` (no wrapper: the plugin is loaded through its entry point), drafting at
    every batch size with float32 draft logits.
  - ``plain_default`` / ``domino_default``: the tiny pair served exactly as ``sglang-domino serve`` (``make serve``)
    serves a model -- :func:`server.launch.build_command` with no flag of ours: the CPU default dtype, the default
    verify width, the adaptive width rule (plain-width steps included) and default draft-logit precision.

  Both Domino servers write every verified row to a draft log (``SGLANG_DOMINO_DRAFT_LOG``) so tests can check
  drafts, where a request ended inside a block, and the row invariants of :mod:`invariants`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from pathlib import Path
from typing import Optional

import pytest
import requests

from sglang_domino.benchmarks import tiny_pair
from sglang_domino.server.process import ServerProcess, free_port  # noqa: F401  (free_port: for the tests)

SERVER_START_TIMEOUT = float(os.environ.get("SGLANG_DOMINO_TEST_START_TIMEOUT", "600"))
COMMON_FLAGS = ["--dtype", "float32", "--max-total-tokens", "16384", "--decode-log-interval", "1",
                "--max-running-requests", "32", "--watchdog-timeout", "600", "--sleep-on-idle"]


def cpu_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(SGLANG_USE_CPU_ENGINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def launch_cmd(target: Path, port: int, *extra: str, draft: Optional[Path] = None) -> list[str]:
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(target), "--host", "127.0.0.1",
           "--port", str(port), "--device", "cpu", "--attention-backend", "torch_native", *COMMON_FLAGS]
    if draft is not None:
        cmd += ["--speculative-algorithm", "domino", "--speculative-draft-model-path", str(draft)]
    return cmd + list(extra)


def default_cmd(target: Path, draft: Optional[Path], port: int, *extra: str) -> list[str]:
    """The command ``sglang-domino serve --target T --draft D`` runs on this machine (every default of ours)."""
    from sglang_domino.server.launch import build_command

    cmd, _ = build_command(str(target), None if draft is None else str(draft), "127.0.0.1", port, list(extra),
                           cpu=True)
    return cmd


class Server(ServerProcess):
    """A real server of the suite (:class:`sglang_domino.server.process.ServerProcess`: start, health, log, stop,
    restart on a port clash) with the requests the tests send and its draft log (Domino servers)."""

    def __init__(self, name: str, cmd: list[str], env: dict, log: Path, draft_log: Optional[Path] = None,
                 **extra) -> None:
        super().__init__(name, cmd, env, log)
        self.draft_log = draft_log
        self.extra = dict(extra)  # what a fixture wants to remember about this server (its setting, its step log)

    def generate(self, timeout: float = 300, **payload) -> dict:
        r = requests.post(self.url + "/generate", json=payload, timeout=timeout)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, payload: dict, timeout: float = 300) -> requests.Response:
        return requests.post(self.url + path, json=payload, timeout=timeout)

    def server_info(self) -> dict:
        return requests.get(self.url + "/get_server_info", timeout=60).json()

    def draft_records(self, rid: Optional[str] = None) -> list[dict]:
        if self.draft_log is None or not self.draft_log.exists():
            return []
        records = [json.loads(line) for line in self.draft_log.read_text().splitlines() if line.strip()]
        return [r for r in records if rid is None or r["rid"] == rid]


def wait_ready(server: Server, timeout: float = SERVER_START_TIMEOUT) -> None:
    server.wait_healthy(timeout)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> tiny_pair.TinyPair:
    return tiny_pair.build_pair(tmp_path_factory.mktemp("tiny_pair"))


@contextlib.contextmanager
def started_together(specs: dict[str, tuple[list[str], dict, Optional[Path]]], logs: Path):
    """Start every server of ``specs`` ({name: (command, environment, draft log or None)}) at once, wait until all
    are healthy (the first failure is raised), yield {name: Server}, stop them all."""
    running: dict[str, Server] = {}
    try:
        for name, (cmd, env, draft_log) in specs.items():
            running[name] = Server(name, cmd, env, logs / f"{name}.log", draft_log).start()
        errors: list[BaseException] = []

        def _wait(server: Server) -> None:
            try:
                wait_ready(server)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)

        threads = [threading.Thread(target=_wait, args=(s,)) for s in running.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        yield running
    finally:
        for server in running.values():
            server.stop()


@pytest.fixture(scope="session")
def servers(tiny, tmp_path_factory):
    """{'plain': Server, 'domino': Server}, started concurrently and shared by every server test."""
    logs = tmp_path_factory.mktemp("server_logs")
    draft_log = logs / "drafts.jsonl"
    default_log = logs / "drafts_default.jsonl"
    specs = {
        "plain": (launch_cmd(tiny.target, free_port()), cpu_env(), None),
        "plain_default": (default_cmd(tiny.target, None, free_port()), cpu_env(), None),
        "domino_default": (default_cmd(tiny.target, tiny.drafter, free_port()),
                           cpu_env(SGLANG_DOMINO_DRAFT_LOG=str(default_log)), default_log),
        "domino": (launch_cmd(tiny.target, free_port(), draft=tiny.drafter),
                   # float32 drafting: the reference tests compare drafts with the offline rollout bit for bit;
                   # drafting at every batch size: these tests exercise speculation under concurrency
                   # (test_plain_width_steps covers the automatic switch-off)
                   cpu_env(SGLANG_DOMINO_DRAFT_LOG=str(draft_log), SGLANG_DOMINO_DRAFT_LOGITS_DTYPE="float32",
                           SGLANG_DOMINO_MAX_SPECULATIVE_BATCH="none"),
                   draft_log),
    }
    with started_together(specs, logs) as running:
        yield running
