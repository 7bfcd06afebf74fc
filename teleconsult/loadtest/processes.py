"""Processes a fault run owns: a server, a Redis and a PostgreSQL cluster of its own.

Each lives on a spare loopback port and in a directory of the run's, never the
machine's shared services, so killing one harms nobody else. The tests' fault
kit (tests/faultkit.py) uses the same classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from teleconsult.core.settings import OWASP_MIN_MEMLIMIT_KIB, OWASP_MIN_OPSLIMIT


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def postgres_bin() -> Path | None:
    """The directory of PostgreSQL's server binaries (initdb, pg_ctl), if installed."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(candidates[-1]).parent if candidates else None


class PrivateRedis:
    """A redis-server of our own, without persistence; ``kill`` then ``start`` again
    is a restart on the same port (with nothing kept)."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._root = root
        self._proc: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._root),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def start(self) -> None:
        self._proc = await asyncio.to_thread(self._spawn)
        client = aioredis.from_url(self.url)
        try:
            async with asyncio.timeout(10):
                while True:
                    with contextlib.suppress(Exception):
                        if await client.ping():
                            return
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    def kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None


@contextlib.asynccontextmanager
async def private_redis(root: Path) -> AsyncIterator[PrivateRedis]:
    redis = PrivateRedis(root)
    await redis.start()
    try:
        yield redis
    finally:
        redis.kill()


class PrivatePostgres:
    """A PostgreSQL cluster of our own (trust auth, loopback), with database ``app``.

    PostgreSQL refuses to run as root: under root (CI containers) the cluster lives in
    a temporary directory owned by the ``postgres`` system user, and its commands run
    as that user.
    """

    def __init__(self, bindir: Path) -> None:
        self.port = free_port()
        self._as_user: list[str] = []
        self.root = Path(tempfile.mkdtemp(prefix="tc-pg-"))
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self.data = self.root / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/app"
        self._bin = bindir
        self._log = self.root / "postgres.log"

    def _run(self, *args: str) -> None:
        subprocess.run(
            [*self._as_user, str(self._bin / args[0]), *args[1:]],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "LC_ALL": "C"},
        )

    async def init(self) -> None:
        await asyncio.to_thread(
            self._run, "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8"
        )
        await self.start()
        conn = await asyncpg.connect(self.url.rsplit("/", 1)[0] + "/postgres")
        try:
            await conn.execute("CREATE DATABASE app")
        finally:
            await conn.close()

    async def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        await asyncio.to_thread(
            self._run,
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self._log),
            "-w",
            "-o",
            options,
            "start",
        )

    async def crash(self) -> None:
        """``pg_ctl -m immediate stop``: no checkpoint, like a crash."""
        await asyncio.to_thread(
            self._run, "pg_ctl", "-D", str(self.data), "-m", "immediate", "stop"
        )

    async def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            await asyncio.to_thread(self._run, "pg_ctl", "-D", str(self.data), "-m", "fast", "stop")

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.asynccontextmanager
async def private_postgres(bindir: Path) -> AsyncIterator[PrivatePostgres]:
    pg = PrivatePostgres(bindir)
    try:
        await pg.init()
        yield pg
    finally:
        await pg.stop()
        pg.remove()


def server_env(
    database_url: str, data_dir: Path, port: int, mqtt_port: int | None, redis_url: str | None
) -> dict[str, str]:
    """The soak server's whole environment: only the settings it needs, on loopback."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k in ("PATH", "HOME", "LANG", "TMPDIR") or k.startswith("LC_")
    }
    env.update(
        DATABASE_URL=database_url,
        TELECONSULT_DATA_DIR=str(data_dir),
        JWT_SECRET=secrets.token_urlsafe(48),  # the same across restarts: tokens stay good
        HOST="127.0.0.1",
        PORT=str(port),
        MQTT_EMBEDDED_PORT=str(mqtt_port) if mqtt_port else "off",
        LOG_FORMAT="text",
        PASSWORD_HASH_MEMLIMIT_KIB=str(OWASP_MIN_MEMLIMIT_KIB),
        PASSWORD_HASH_OPSLIMIT=str(OWASP_MIN_OPSLIMIT),
        LOGIN_MAX_PER_ADDRESS="100000",
        REGISTER_MAX_PER_ADDRESS="100000",
        NOTIFY_IN_SERVER="false",
    )
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    return env


class ServerProcess:
    """``python -m teleconsult serve`` with ``env`` (the whole environment it gets), its
    output appended to ``log``; the same port across restarts."""

    def __init__(self, env: dict[str, str], log: Path, base_url: str) -> None:
        self.env, self.log, self.base_url = env, log, base_url
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "teleconsult", "serve"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1

    def exited(self) -> bool:
        return self._proc is None or self._proc.poll() is not None

    async def healthy(self, http: aiohttp.ClientSession) -> bool:
        try:
            async with http.get(self.base_url + "/healthz") as resp:
                return resp.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def wait_healthy(self, within: float) -> None:
        """Until ``/healthz`` answers 200; RuntimeError (with the log's tail) when the
        process exits or ``within`` seconds pass."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        timeout = aiohttp.ClientTimeout(total=1.0)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while loop.time() < deadline:
                if self.exited():
                    raise RuntimeError(f"the server exited:\n{self.log_tail()}")
                if await self.healthy(http):
                    return
                await asyncio.sleep(0.02)
        raise RuntimeError(f"the server was not healthy within {within:g} s:\n{self.log_tail()}")

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

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])
