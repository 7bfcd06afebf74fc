"""Real server processes for tests that kill, restart or run several of them.

``python -m teleconsult serve`` in a subprocess, on a fixed port so clients can
come back to the same address after a restart; its log goes to a file the test
can read (the canary check reads it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import aiohttp

from teleconsult.loadtest import processes
from teleconsult.loadtest.processes import free_port
from tests.conftest import settings_env

__all__ = ["ServerProcess", "free_port"]


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
