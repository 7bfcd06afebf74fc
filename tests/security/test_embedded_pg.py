"""The embedded PostgreSQL of `make run`: passwords, a private data folder, two roles.

Before, it was initialised with trust authentication, so anyone who could reach
its socket was the superuser, and the server itself ran as that superuser. Now
every connection needs its password (scram-sha-256), the data folder is 0700
whatever the umask, migrations run as the owner role and the server as the
runtime role. A data folder from before is upgraded in place at its next start.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from teleconsult.core.embedded_pg import DATABASE_NAME, OWNER_ROLE, PASSWORDS_FILE, RUNTIME_ROLE
from teleconsult.core.migrations import migrate

_OURS = ("DATABASE_URL", "DATABASE_OWNER_URL", "REDIS_URL", "MQTT_URL", "JWT_SECRET", "PORT")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _env(data_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _OURS and not k.endswith("_FILE")}
    env.update(
        TELECONSULT_DATA_DIR=str(data_dir),
        PORT=str(port),
        LOG_FORMAT="text",
        MQTT_EMBEDDED_PORT=str(_free_port()),  # 1883 is the machine's Mosquitto
        PASSWORD_HASH_MEMLIMIT_KIB="19456",
        PASSWORD_HASH_OPSLIMIT="2",
    )
    return env


class Served:
    """`teleconsult serve` on nothing but a data folder, started under umask 000."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / f"serve-{self.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            return subprocess.Popen(
                ["/bin/sh", "-c", 'umask 000 && exec "$0" -m teleconsult serve', sys.executable],
                env=_env(self.data_dir, self.port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def start(self) -> None:
        self._proc = await asyncio.to_thread(self._spawn)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while loop.time() < deadline:
            assert self._proc.poll() is None, self.log.read_text()
            try:
                status, _ = await asyncio.to_thread(_request, f"{self.base}/healthz")
                if status == 200:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.2)
        raise AssertionError(f"server not healthy:\n{self.log.read_text()}")

    async def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.to_thread(proc.wait, 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.returncode == 0, self.log.read_text()

    def login_as_admin(self) -> int:
        lines = (self.data_dir / "initial-admin.txt").read_text().splitlines()
        creds = dict(line.split("=", 1) for line in lines if "=" in line)
        status, _ = _request(
            f"{self.base}/api/v1/auth/login",
            {"email": creds["email"], "password": creds["password"]},
        )
        return status


def _request(url: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.read()


def _url(pgdata: Path, user: str, password: str, database: str = DATABASE_NAME) -> str:
    """A URL for the running embedded server's socket (postmaster.pid: port, socket dir)."""
    lines = (pgdata / "postmaster.pid").read_text().splitlines()
    port, socket_dir = lines[3].strip(), lines[4].strip()
    return f"postgresql://{user}:{password}@/{database}?host={socket_dir}&port={port}"


def _passwords(data_dir: Path) -> dict[str, str]:
    stored: dict[str, str] = json.loads((data_dir / PASSWORDS_FILE).read_text())
    return stored


async def _server_roles(url: str) -> set[tuple[str, bool]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT DISTINCT r.rolname, r.rolsuper FROM pg_stat_activity AS a "
            "JOIN pg_roles AS r ON r.oid = a.usesysid "
            "WHERE a.datname = $1 AND a.pid <> pg_backend_pid() "
            "AND a.backend_type = 'client backend'",
            DATABASE_NAME,
        )
    finally:
        await conn.close()
    return {(row["rolname"], row["rolsuper"]) for row in rows}


def _command(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "teleconsult", *args],
        env=_env(data_dir, _free_port()),
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.slow
async def test_embedded_postgres_wants_passwords_keeps_its_data_private_and_serves_as_runtime(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "var"
    pgdata = data_dir / "pg"
    server = Served(data_dir)
    await server.start()
    try:
        assert pgdata.stat().st_mode & 0o777 == 0o700
        # As root, PostgreSQL's own system user must pass through (x), nothing more.
        assert data_dir.stat().st_mode & 0o777 in (0o700, 0o711)
        assert (data_dir / PASSWORDS_FILE).stat().st_mode & 0o777 == 0o600
        assert "trust" not in (pgdata / "pg_hba.conf").read_text().split("\n", 1)[1]

        passwords = _passwords(data_dir)
        for user in ("postgres", OWNER_ROLE, RUNTIME_ROLE):
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(_url(pgdata, user, ""))
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(_url(pgdata, user, passwords[user] + "x"))

        assert await asyncio.to_thread(server.login_as_admin) == 200
        runtime_url = _url(pgdata, RUNTIME_ROLE, passwords[RUNTIME_ROLE])
        assert await _server_roles(runtime_url) == {(RUNTIME_ROLE, False)}
        conn = await asyncpg.connect(runtime_url)
        try:
            for statement in (
                "ALTER TABLE audit_log DISABLE TRIGGER ALL",
                "SET session_replication_role = replica",
                "DELETE FROM audit_log",
                "CREATE TABLE planted (id int)",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(statement)
        finally:
            await conn.close()
    finally:
        await server.stop()

    # `audit verify` reads as the runtime role, which is all it needs.
    verified = await asyncio.to_thread(_command, data_dir, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "audit chain OK" in verified.stdout

    # A password file that no longer matches the data is named, not a traceback.
    stale = _passwords(data_dir) | {OWNER_ROLE: "not-the-password"}
    (data_dir / PASSWORDS_FILE).write_text(json.dumps(stale))
    migrated = await asyncio.to_thread(_command, data_dir, "migrate")
    assert migrated.returncode == 1
    assert f"refuses the passwords in {data_dir / PASSWORDS_FILE}" in migrated.stderr


def _round_one_data(data_dir: Path) -> None:
    """A data folder as the first version left it: trust, everything the superuser's."""
    import pgserver

    data_dir.mkdir(parents=True)
    server = pgserver.get_server(data_dir / "pg", cleanup_mode="stop")
    try:

        async def fill() -> None:
            admin = await asyncpg.connect(server.get_uri())
            try:
                await admin.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
            finally:
                await admin.close()
            conn = await asyncpg.connect(server.get_uri(database=DATABASE_NAME))
            try:
                await migrate(conn)
                await conn.execute("INSERT INTO clinics (name) VALUES ('Kept Across The Upgrade')")
            finally:
                await conn.close()

        asyncio.run(fill())
    finally:
        server.cleanup()


@pytest.mark.slow
async def test_a_data_folder_from_before_is_upgraded_in_place(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    pgdata = data_dir / "pg"
    await asyncio.to_thread(_round_one_data, data_dir)
    assert "trust" in (pgdata / "pg_hba.conf").read_text()

    server = Served(data_dir)
    await server.start()
    try:
        passwords = _passwords(data_dir)
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(_url(pgdata, "postgres", ""))
        owner_url = _url(pgdata, OWNER_ROLE, passwords[OWNER_ROLE])
        conn = await asyncpg.connect(owner_url)
        try:
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM clinics WHERE name = 'Kept Across The Upgrade'"
                )
                == 1
            )
            owners = await conn.fetch(
                "SELECT DISTINCT pg_get_userbyid(relowner) AS owner FROM pg_class "
                "WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'S')"
            )
            assert [row["owner"] for row in owners] == [OWNER_ROLE]
        finally:
            await conn.close()
        runtime_url = _url(pgdata, RUNTIME_ROLE, passwords[RUNTIME_ROLE])
        assert await _server_roles(runtime_url) == {(RUNTIME_ROLE, False)}
    finally:
        await server.stop()
