"""Servers under test as pinned, bounded subprocesses, whatever they are written in.

``python -m bench.procs --cpu N --max-seconds S -- COMMAND...`` pins itself to
core ``N``, asks the kernel to end it with its parent, arms ``alarm(S)`` and
then *execs* ``COMMAND``: all three survive ``execve``, so a Node.js server or
``python -m teleconsult serve`` starts pinned (every thread it makes inherits
the mask), dies with the benchmark and stops by itself. ``ServerProcess``
starts one that way and stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiohttp

from bench.servers import _die_with_parent

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


class ServerProcess:
    """One server subprocess with its log in a temporary directory; always ``stop`` it."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        env: Mapping[str, str],
        *,
        cpu: int | None,
        max_seconds: int = 900,
    ) -> None:
        self.name = name
        self._dir = tempfile.TemporaryDirectory(prefix=f"bench-{name}-")
        self.data_dir = Path(self._dir.name)
        self.log_path = self.data_dir / "server.log"
        shim = [sys.executable, "-m", "bench.procs", "--max-seconds", str(max_seconds)]
        if cpu is not None:
            shim += ["--cpu", str(cpu)]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*shim, "--", *command],
            cwd=REPO,
            env=dict(env),
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

    async def wait_ready(self, url: str, within: float = 60.0) -> None:
        """Until ``url`` answers anything below 500 (the server listens and routes)."""
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                self.check_alive()
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                    async with session.get(url) as resp:
                        await resp.read()
                        if resp.status < 500:
                            return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {within:g} s:\n{self.log_tail()}")

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
            self._dir.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.procs", description=__doc__)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this core")
    parser.add_argument("--max-seconds", type=int, default=900, help="hard lifetime bound")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    _die_with_parent()
    signal.alarm(args.max_seconds)  # pending alarms survive execve; default action ends it
    os.execvp(command[0], command)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
