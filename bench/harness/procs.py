"""Servers under test as pinned, bounded subprocesses, whatever they are written in.

``python -m bench.harness.procs --cpu N --max-seconds S -- COMMAND...`` pins itself
to core ``N``, asks the kernel to end it with its parent (``PR_SET_PDEATHSIG``),
arms ``alarm(S)`` and then *execs* ``COMMAND``. All three survive ``execve``, so
``python -m teleconsult serve``, a reference or Mosquitto starts pinned (its
threads inherit the mask), dies with the benchmark and stops by itself.
:class:`ServerProcess` starts one that way, waits for it and stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """One server subprocess, its log in a temporary directory; always ``stop`` it.

    ``TELECONSULT_DATA_DIR`` defaults to a folder of that directory.
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        env: Mapping[str, str],
        *,
        cpu: int | None,
        port: int | None = None,
        max_seconds: int = 900,
    ) -> None:
        self.name = name
        self.port = port if port is not None else free_port()
        self.base = f"http://{HOST}:{self.port}"
        self._dir = tempfile.TemporaryDirectory(prefix=f"bench-{name}-")
        self.dir = Path(self._dir.name)
        self.log_path = self.dir / "server.log"
        full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1"}
        full.update({"TELECONSULT_DATA_DIR": str(self.dir / "data"), **env})
        shim = [sys.executable, "-m", "bench.harness.procs", "--max-seconds", str(max_seconds)]
        if cpu is not None:
            shim += ["--cpu", str(cpu)]
        self._log = self.log_path.open("wb")
        self.last_log = ""  # the log's tail, kept by ``stop``
        self.proc = subprocess.Popen(
            [*shim, "--", *command],
            cwd=REPO,
            env=full,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.log_tail()}")

    async def wait_http(self, path: str, within: float = 60.0, poll: float = 0.05) -> float:
        """Until ``GET path`` answers below 500; the ``perf_counter()`` of that answer."""
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                self.check_alive()
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                    async with http.get(self.base + path) as resp:
                        await resp.read()
                        if resp.status < 500:
                            return time.perf_counter()
                await asyncio.sleep(poll)
        raise RuntimeError(f"{self.name} not ready after {within:g} s:\n{self.log_tail()}")

    async def wait_port(self, within: float = 20.0) -> None:
        """Until the port accepts a TCP connection (for servers that speak no HTTP)."""
        async with asyncio.timeout(within):
            while True:
                self.check_alive()
                try:
                    _, writer = await asyncio.open_connection(HOST, self.port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """A crash (or, with SIGTERM, a graceful stop); the log stays until ``stop``."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
        finally:
            self._log.close()
            if self.dir.exists():
                self.last_log = self.log_tail()
            self._dir.cleanup()


def die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the parent goes away (Linux; else the alarm holds)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.harness.procs", description=__doc__)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this core")
    parser.add_argument("--max-seconds", type=int, default=900, help="hard lifetime bound")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    die_with_parent()
    signal.alarm(args.max_seconds)  # a pending alarm survives execve; its default ends it
    os.execvp(command[0], command)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
