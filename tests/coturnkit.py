"""Debian's coturn on loopback for tests: installed if missing (a missing coturn FAILS)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT = 10.0


def _install_coturn() -> str | None:
    """Install Debian's coturn when running as root with apt-get, as .ci/run does."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "not root or no apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "coturn"]
    for step in (None, ["apt-get", "update", "-qq"]):
        if step is not None:
            subprocess.run(step, env=env, capture_output=True, timeout=300, check=False)
        done = subprocess.run(command, env=env, capture_output=True, timeout=300, check=False)
        if done.returncode == 0:
            return None
    return done.stderr.decode(errors="replace")[-500:]


def find_turnserver() -> str:
    """Path of coturn's turnserver, installing it if need be. Missing means FAIL."""
    found = shutil.which("turnserver")
    why = None if found else _install_coturn()
    found = found or shutil.which("turnserver")
    if found is None:
        pytest.fail(
            "coturn's turnserver is not installed and could not be installed "
            f"({why}); run `apt-get install coturn` (.ci/run does this in CI)"
        )
    return found


def free_port_tcp_udp() -> int:
    """A loopback port free for both TCP and UDP (coturn listens on both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise AssertionError("no free loopback port for coturn")


@dataclass
class Coturn:
    """One turnserver process on 127.0.0.1, restartable with another auth config."""

    binary: str
    workdir: Path
    port: int
    process: asyncio.subprocess.Process | None = None

    @property
    def log(self) -> Path:
        return self.workdir / "turnserver.log"

    @property
    def userdb(self) -> Path:
        return self.workdir / "turndb"

    def _write_config(self, auth: str) -> Path:
        config = self.workdir / "turnserver.conf"
        config.write_text(
            "\n".join(
                [
                    "listening-ip=127.0.0.1",
                    "relay-ip=127.0.0.1",
                    f"listening-port={self.port}",
                    "no-tls",
                    "no-dtls",
                    "no-cli",
                    "fingerprint",
                    # The test's peer is on loopback; never do this in production.
                    "allow-loopback-peers",
                    f"log-file={self.log}",
                    "simple-log",
                    f"pidfile={self.workdir / 'turnserver.pid'}",
                    f"userdb={self.userdb}",
                    auth,
                ]
            )
            + "\n"
        )
        return config

    def log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"

    async def start(self, auth: str) -> None:
        assert self.process is None, "already running"
        config = self._write_config(auth)
        self.process = await asyncio.create_subprocess_exec(
            self.binary,
            "-c",
            str(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.returncode is not None:
                code = self.process.returncode
                self.process = None
                raise AssertionError(f"turnserver exited with {code}:\n{self.log_tail()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if time.monotonic() > deadline:
                    await self.stop()
                    raise AssertionError(
                        f"turnserver did not listen within {START_TIMEOUT}s:\n{self.log_tail()}"
                    ) from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def restart(self, auth: str) -> None:
        await self.stop()
        await self.start(auth)
