"""Least privilege in PostgreSQL: the server's own role cannot switch the audit trail off.

Before, the server connected as the superuser, which can disable the append-only
triggers (ALTER TABLE ... DISABLE TRIGGER, session_replication_role) and then
rewrite or delete audit rows. Now migrations run as an owner role and the server
as a runtime role: it records and chains audit events, and every attempt of an
attacker holding its connection to alter, disable, rewrite, drop, create or own
is refused with permission denied.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from teleconsult.core.errors import ConfigError
from teleconsult.core.settings import load_settings
from teleconsult.server.app import create_app
from tests.conftest import StartServer, settings_env
from tests.security.pg_roles import Roles, owner_and_runtime
from tests.servers import ServerProcess

# Each is refused for the runtime role with SQLSTATE 42501 (insufficient_privilege).
ATTACKS = [
    "ALTER TABLE audit_log DISABLE TRIGGER ALL",
    "ALTER TABLE audit_intake DISABLE TRIGGER audit_intake_refuse_update",
    "ALTER TABLE audit_head DISABLE TRIGGER USER",
    "DROP TRIGGER audit_log_refuse_update_delete ON audit_log",
    "CREATE OR REPLACE FUNCTION audit_refuse_change() RETURNS trigger "
    "LANGUAGE plpgsql AS $$ BEGIN RETURN OLD; END $$",
    "SET session_replication_role = replica",
    "UPDATE audit_log SET action = 'auth.logout'",
    "DELETE FROM audit_log",
    "TRUNCATE audit_log",
    "UPDATE audit_intake SET action = 'auth.logout'",
    "TRUNCATE audit_intake",
    "UPDATE audit_head SET seq = 0",
    "DELETE FROM audit_head",
    "TRUNCATE audit_head",
    "UPDATE audit_checkpoints SET signed_at = now()",
    "DELETE FROM audit_checkpoints",
    "TRUNCATE audit_checkpoints",
    "DROP TABLE audit_log",
    "DROP TABLE users",
    "DROP FUNCTION audit_refuse_change()",
    "CREATE TABLE planted (id int)",
    "CREATE TEMPORARY TABLE planted (id int)",
    "CREATE FUNCTION planted() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "ALTER TABLE users ADD COLUMN planted int",
    "TRUNCATE users",
]


def _owner_attack(role: str) -> str:
    return f'ALTER TABLE audit_log OWNER TO "{role}"'


async def _server_roles(roles: Roles) -> set[tuple[str, bool]]:
    """Every role connected to the database but this query's, with its superuser flag."""
    admin = await asyncpg.connect(roles.admin_url)
    try:
        rows = await admin.fetch(
            "SELECT DISTINCT r.rolname, r.rolsuper FROM pg_stat_activity AS a "
            "JOIN pg_roles AS r ON r.oid = a.usesysid "
            "WHERE a.datname = $1 AND a.pid <> pg_backend_pid()",
            roles.database,
        )
    finally:
        await admin.close()
    return {(row["rolname"], row["rolsuper"]) for row in rows}


async def _chained(roles: Roles, action: str, within: float = 30.0) -> int:
    """The seq of the first chained ``action`` row, waiting for the server's sequencer."""
    admin = await asyncpg.connect(roles.admin_url)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while (
            seq := await admin.fetchval("SELECT min(seq) FROM audit_log WHERE action = $1", action)
        ) is None:
            assert loop.time() < deadline, f"no {action} row was chained"
            await asyncio.sleep(0.05)
        return int(seq)
    finally:
        await admin.close()


def _login(base: str, data_dir: Path) -> None:
    lines = (data_dir / "initial-admin.txt").read_text().splitlines()
    creds = dict(line.split("=", 1) for line in lines if "=" in line)
    body = json.dumps({"email": creds["email"], "password": creds["password"]}).encode()
    request = urllib.request.Request(
        f"{base}/api/v1/auth/login", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200


@pytest.mark.slow
async def test_the_server_runs_as_a_runtime_role_that_cannot_switch_the_audit_trail_off(
    tmp_path: Path,
) -> None:
    async with owner_and_runtime() as roles:
        server = ServerProcess(roles.runtime_url, tmp_path, DATABASE_OWNER_URL=roles.owner_url)
        await server.start()
        try:
            # The server's own connections (pool, sequencer) are the runtime role only.
            assert await _server_roles(roles) == {(roles.runtime, False)}
            await asyncio.to_thread(_login, server.base_url, tmp_path / "server")
            seq = await _chained(roles, "auth.login")
        finally:
            await server.stop()

        conn = await asyncpg.connect(roles.runtime_url)
        try:
            assert await conn.fetchval("SELECT current_user") == roles.runtime
            for statement in [*ATTACKS, _owner_attack(roles.runtime), f'SET ROLE "{roles.owner}"']:
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(statement)
            # DELETE on the intake is the sequencer's, and only into the chain.
            tx = conn.transaction()
            await tx.start()
            taken = await conn.fetchval(
                "INSERT INTO audit_intake (action, outcome) VALUES ('auth.login', 'success') "
                "RETURNING id"
            )
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="only into"):
                await conn.execute("DELETE FROM audit_intake WHERE id = $1", taken)
            await tx.rollback()
        finally:
            await conn.close()

        admin = await asyncpg.connect(roles.admin_url)
        try:
            assert (
                await admin.fetchval("SELECT action FROM audit_log WHERE seq = $1", seq)
                == "auth.login"
            )
            owners = await admin.fetch(
                "SELECT DISTINCT pg_get_userbyid(relowner) AS owner FROM pg_class "
                "WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'S')"
            )
            assert [row["owner"] for row in owners] == [roles.owner]
        finally:
            await admin.close()

        # The runtime role reads enough to verify the trail.
        verify = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "teleconsult", "audit", "verify"],
            env={**_os_env(), **settings_env(roles.runtime_url, tmp_path / "server")},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert "audit chain OK" in verify.stdout


def _os_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}


async def _start_fails(env: dict[str, str]) -> ConfigError:
    app = create_app(load_settings(env))
    app.freeze()
    try:
        with pytest.raises(ConfigError) as caught:
            await app.startup()
    finally:
        await app.cleanup()
    return caught.value


async def test_a_superuser_runtime_role_is_refused_when_an_owner_is_configured(
    tmp_path: Path,
) -> None:
    async with owner_and_runtime() as roles:
        error = await _start_fails(
            settings_env(roles.admin_url, tmp_path, DATABASE_OWNER_URL=roles.owner_url)
        )
    assert error.variable == "DATABASE_URL"
    assert "is a superuser" in str(error)


async def test_a_runtime_role_that_may_act_as_the_owner_is_refused(tmp_path: Path) -> None:
    async with owner_and_runtime() as roles:
        admin = await asyncpg.connect(roles.admin_url)
        try:
            await admin.execute(f'GRANT "{roles.owner}" TO "{roles.runtime}"')
            error = await _start_fails(
                settings_env(roles.runtime_url, tmp_path, DATABASE_OWNER_URL=roles.owner_url)
            )
            await admin.execute(f'REVOKE "{roles.owner}" FROM "{roles.runtime}"')
        finally:
            await admin.close()
    assert "member of their owner" in str(error)


async def test_a_superuser_database_url_alone_still_serves_with_a_warning(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = await start_server()
    resp = await client.get("/healthz")
    assert resp.status == 200
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("more privilege than it needs" in text for text in warnings), warnings


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"DATABASE_OWNER_URL": "postgresql://owner@db/app"}, "DATABASE_OWNER_URL"),
        (
            {
                "DATABASE_URL": "postgresql://same@db/app",
                "DATABASE_OWNER_URL": "postgresql://same@db/app",
            },
            "DATABASE_OWNER_URL",
        ),
        (
            {
                "DATABASE_URL": "postgresql://db/app",
                "DATABASE_OWNER_URL": "postgresql://owner@db/app",
                "DATABASE_RUNTIME_ROLE": "x; DROP TABLE users",
            },
            "DATABASE_RUNTIME_ROLE",
        ),
        ({"DATABASE_RUNTIME_ROLE": "app"}, "DATABASE_RUNTIME_ROLE"),
    ],
)
def test_database_role_settings_that_cannot_work_are_refused(
    env: dict[str, str], variable: str, tmp_path: Path
) -> None:
    base: dict[str, Any] = {"TELECONSULT_DATA_DIR": str(tmp_path)}
    with pytest.raises(ConfigError) as caught:
        load_settings({**base, **env})
    assert caught.value.variable == variable


def test_the_runtime_role_is_the_database_urls_user(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "TELECONSULT_DATA_DIR": str(tmp_path),
            "DATABASE_URL": "postgresql://app:secret@db/teleconsult",
            "DATABASE_OWNER_URL_FILE": str(_file(tmp_path, "postgresql://owner:pw@db/teleconsult")),
        }
    ).database
    assert settings.runtime_role == "app"
    assert settings.owner_url == "postgresql://owner:pw@db/teleconsult"
    assert "secret" not in repr(settings) and "pw@" not in repr(settings)


def _file(folder: Path, text: str) -> Path:
    path = folder / "owner-url"
    path.write_text(text)
    return path
