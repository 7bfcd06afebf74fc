"""Real server processes for tests that kill, restart or run several of them.

``python -m teleconsult serve`` in a subprocess, on a fixed port so clients can
come back to the same address after a restart; its log goes to a file the test
can read (the canary check reads it).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.conftest import settings_env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    def __init__(
        self, database_url: str, root: Path, *, name: str = "server", **extra: str
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = root / f"{name}.log"
        self._env = {
            k: v
            for k, v in os.environ.items()
            if k in ("PATH", "HOME", "LANG", "TMPDIR") or k.startswith(("LC_", "PG"))
        }
        self._env.update(
            settings_env(database_url, root / name, PORT=str(self.port), HOST="127.0.0.1", **extra)
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    async def start(self) -> None:
        self._proc = await asyncio.to_thread(self._spawn)
        self.starts += 1
        await self._wait_healthy()

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "teleconsult", "serve"],
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def _wait_healthy(self, within: float = 60.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        async with aiohttp.ClientSession() as http:
            while loop.time() < deadline:
                if self._proc is None or self._proc.poll() is not None:
                    raise RuntimeError(f"server exited:\n{self.log_tail()}")
                try:
                    async with http.get(self.base_url + "/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"server not healthy within {within} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye, whatever was in flight is cut."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait()

    async def stop(self) -> int | None:
        """SIGINT, then SIGKILL after 20 s; the exit code (negative when killed)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.to_thread(proc.wait, 20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return proc.returncode

    async def log_shows(self, text: str, *, within: float = 15.0) -> None:
        """Wait until the server's log contains ``text``; fail after ``within`` seconds."""
        for _ in range(int(within / 0.1)):
            if text in self.log_text():
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{text!r} not in the log within {within} s:\n{self.log_tail()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])
