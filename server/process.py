"""One SGLang server subprocess on loopback: start, wait until healthy, its log, stop.

The one helper behind ``sglang-domino serve`` (:mod:`.launch`), the benchmarks (``benchmarks/serving.py`` and the
scripts built on it) and the server tests (``tests/server/conftest.py``). Standard library only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

# free_port() closes the port it found before the server binds it, so with several servers starting at once another
# one can take it first (seen in CI: uvicorn's bind error, after which the server hangs instead of exiting).
PORT_CLASH = "address already in use"
PORT_RETRIES = 3


class ServerStartError(RuntimeError):
    """The server exited or did not become healthy; the message ends with the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def is_healthy(url: str, timeout: float = 5.0) -> bool:
    """Whether ``url``/health answers 200."""
    try:
        with urllib.request.urlopen(url + "/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def _flag_value(cmd: Sequence[str], flag: str) -> Optional[str]:
    for i, arg in enumerate(cmd):
        if arg == flag and i + 1 < len(cmd):
            return cmd[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


class ServerProcess:
    """``cmd`` (an SGLang launch, or ``sglang-domino serve``) run as a subprocess.

    ``log``: a file for its output (None: this process's stdout/stderr). ``own_session``: in a process group of its
    own, stopped as a group (tests and benchmarks); False for a foreground server that receives the terminal's
    signals. ``restart_on_port_clash``: when the port (``--port`` in ``cmd``) was taken by another process between
    :func:`free_port` and the bind, start again on a new free port (up to :data:`PORT_RETRIES` times).
    """

    def __init__(self, name: str, cmd: Sequence[str], env: Optional[Mapping[str, str]] = None,
                 log: Optional[Path] = None, *, own_session: bool = True, restart_on_port_clash: bool = True) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.env = dict(os.environ if env is None else env)
        self.log = log
        self.own_session = own_session
        self.restart_on_port_clash = restart_on_port_clash
        self.host = _flag_value(self.cmd, "--host") or "127.0.0.1"
        self.proc: Optional[subprocess.Popen] = None
        self.launched_at = 0.0
        self.started_s = 0.0  # launch to healthy, of the last successful start

    @property
    def port(self) -> int:
        return int(_flag_value(self.cmd, "--port") or 30000)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "ServerProcess":
        out = None
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.log, "w")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                     start_new_session=self.own_session)
        if out is not None:
            out.close()  # the child holds its own descriptor
        self.launched_at = time.monotonic()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 40) -> str:
        if self.log is None:
            return ""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def _restart_on_new_port(self) -> None:
        self.stop()
        i = self.cmd.index("--port")
        self.cmd[i + 1] = str(free_port(self.host))
        self.start()

    def wait_healthy(self, timeout: float = 600.0, poll_s: float = 1.0,
                     on_wait: Optional[Callable[[], None]] = None) -> "ServerProcess":
        """Block until ``/health`` answers 200; :class:`ServerStartError` if the server exits or ``timeout`` passes.
        ``on_wait`` is called once per poll (progress output)."""
        if self.proc is None:
            self.start()
        deadline = time.monotonic() + timeout
        retries = 0
        while time.monotonic() < deadline:
            if (self.restart_on_port_clash and retries < PORT_RETRIES and "--port" in self.cmd
                    and PORT_CLASH in self.tail(20)):
                retries += 1
                self._restart_on_new_port()
                continue
            if not self.alive():
                code = None if self.proc is None else self.proc.returncode
                raise ServerStartError(f"{self.name} server exited during start-up (exit code {code})"
                                       + (f"; log {self.log}:\n{self.tail()}" if self.log else ""))
            if is_healthy(self.url):
                self.started_s = time.monotonic() - self.launched_at
                return self
            if on_wait is not None:
                on_wait()
            time.sleep(poll_s)
        raise ServerStartError(f"{self.name} server not healthy after {timeout:.0f} s"
                               + (f"; log {self.log}:\n{self.tail()}" if self.log else ""))

    def send_signal(self, signum: int) -> None:
        if self.alive():
            self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        """SIGTERM (to its process group when it has one), SIGKILL after ``timeout``; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        return self.proc.returncode

    def _signal(self, signum: int) -> None:
        try:
            if self.own_session:
                os.killpg(self.proc.pid, signum)
            else:
                self.proc.send_signal(signum)
        except ProcessLookupError:
            pass

    def wait(self) -> int:
        return self.proc.wait() if self.proc is not None else 0

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


__all__ = ["PORT_CLASH", "PORT_RETRIES", "ServerProcess", "ServerStartError", "free_port", "is_healthy"]
