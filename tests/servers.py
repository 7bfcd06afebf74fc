"""Real server processes for tests that kill, restart or run several of them.

``python -m teleconsult serve`` in a subprocess, on a fixed port so clients can
come back to the same address after a restart; its log goes to a file the test
can read (the canary check reads it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import aiohttp

from teleconsult.loadtest import processes
from teleconsult.loadtest.processes import free_port
from tests.conftest import settings_env

__all__ = ["ServerProcess", "WorkerProcess", "free_port"]

REPO = Path(__file__).resolve().parents[1]


class ServerProcess(processes.ServerProcess):
    """The operators' server process (``teleconsult.loadtest.processes``) with the
    tests' settings (``settings_env``) and a data folder of its own under ``root``."""

    def __init__(
        self, database_url: str, root: Path, *, name: str = "server", **extra: str
    ) -> None:
        port = free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if k in ("PATH", "HOME", "LANG", "TMPDIR") or k.startswith(("LC_", "PG"))
        }
        env.update(
            settings_env(database_url, root / name, PORT=str(port), HOST="127.0.0.1", **extra)
        )
        super().__init__(env, root / f"{name}.log", f"http://127.0.0.1:{port}")
        self.port = port

    async def start(self) -> None:
        await asyncio.to_thread(self.spawn)
        await self.wait_healthy(60.0)

    async def ready(self, *, expect: bool = True, within: float = 20.0) -> None:
        """Wait until ``/readyz`` says ready (``expect``) or not ready."""
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with aiohttp.ClientSession(timeout=timeout) as http, asyncio.timeout(within):
            while True:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(self.base_url + "/readyz") as resp:
                        if (resp.status == 200) == expect:
                            return
                await asyncio.sleep(0.05)

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


class WorkerProcess:
    """``python -m teleconsult worker`` with ``env`` as its whole environment, its output
    in ``log``."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self._proc: asyncio.subprocess.Process | None = None

    async def launch(self) -> None:
        """Start it, without waiting for its jobs."""
        with self.log.open("wb") as output:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "teleconsult",
                "worker",
                env=self.env,
                cwd=REPO,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
            )

    async def start(self) -> None:
        """Start it and wait until its jobs run."""
        await self.launch()
        await self.wait_for("press Ctrl-C to stop")

    async def wait_for(self, text: str) -> None:
        """Until ``text`` is in its output (it must not exit meanwhile)."""
        assert self._proc is not None
        async with asyncio.timeout(60):
            while text not in (seen := await asyncio.to_thread(self.text)):
                assert self._proc.returncode is None, seen
                await asyncio.sleep(0.05)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def wait(self) -> int:
        """Until it exits by itself; the exit code."""
        assert self._proc is not None
        async with asyncio.timeout(60):
            return await self._proc.wait()

    async def terminate(self) -> int:
        """SIGTERM; the exit code."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            code = await self._proc.wait()
        self._proc = None
        return code

    async def kill(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()
        self._proc = None
