"""``teleconsult clinic create`` as a real process: it crashed with "Cannot send
non-frozen signal" (the service application was started without being frozen), so
the only way to make a clinic was the first-run demo clinic.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.conftest import settings_env
from tests.security.test_crafted_input import running
from tests.world import unique_email

pytestmark = pytest.mark.slow


def _clinic_create(dsn: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env.update(settings_env(dsn, data_dir))
    return subprocess.run(
        [sys.executable, "-m", "teleconsult", "clinic", "create", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _login(base: str, email: str, password: str) -> dict[str, object]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base}/api/v1/auth/login", json={"email": email, "password": password}) as resp,
    ):
        assert resp.status == 200, await resp.text()
        user: dict[str, object] = (await resp.json())["user"]
        return user


async def test_clinic_create_makes_a_clinic_whose_admin_can_sign_in(
    fresh_db: str, tmp_path: Path
) -> None:
    chosen, generated = unique_email("cli-chosen"), unique_email("cli-generated")
    made = await asyncio.to_thread(
        _clinic_create,
        fresh_db,
        tmp_path,
        "--name",
        "North Clinic",
        "--timezone",
        "Africa/Nairobi",
        "--admin-email",
        chosen,
        "--admin-password",
        "a-long-enough-password",
    )
    assert made.returncode == 0, made.stderr
    clinic_id = re.search(r"clinic ([0-9a-f-]{36}) created; admin (\S+)", made.stdout)
    assert clinic_id is not None and clinic_id[2] == chosen, made.stdout
    # Without a password one is generated and printed once.
    second = await asyncio.to_thread(
        _clinic_create, fresh_db, tmp_path, "--name", "South", "--admin-email", generated
    )
    assert second.returncode == 0, second.stderr
    password = re.search(r"admin password: (\S+)", second.stdout)
    assert password is not None, second.stdout

    async with running(fresh_db, tmp_path) as server:
        user = await _login(server.base_url, chosen, "a-long-enough-password")
        assert (user["clinic_id"], user["role"]) == (clinic_id[1], "admin")
        assert (await _login(server.base_url, generated, password[1]))["role"] == "admin"
    conn = await asyncpg.connect(fresh_db)
    try:
        zone = await conn.fetchval("SELECT timezone FROM clinics WHERE id = $1", clinic_id[1])
        audited = await conn.fetchval(
            "SELECT count(*) FROM (SELECT action, object_id FROM audit_log UNION ALL "
            "SELECT action, object_id FROM audit_intake) AS events "
            "WHERE action = 'clinic.create' AND object_id = $1",
            clinic_id[1],
        )
    finally:
        await conn.close()
    assert zone == "Africa/Nairobi"
    assert audited == 1


async def test_clinic_create_refuses_bad_input_with_a_message(
    fresh_db: str, tmp_path: Path
) -> None:
    email = unique_email("cli-twice")
    first = await asyncio.to_thread(
        _clinic_create, fresh_db, tmp_path, "--name", "Once", "--admin-email", email
    )
    assert first.returncode == 0, first.stderr
    for args, code, message in [
        (("--name", "Twice", "--admin-email", email), 1, "already registered"),
        (
            ("--name", "Short", "--admin-email", unique_email("x"), "--admin-password", "short"),
            2,
            "--admin-password",
        ),
        (("--name", "Bad", "--admin-email", "not-an-address"), 2, "--admin-email"),
        (
            ("--name", "Zone", "--admin-email", unique_email("y"), "--timezone", "Mars/Base"),
            1,
            "time zone",
        ),
    ]:
        result = await asyncio.to_thread(_clinic_create, fresh_db, tmp_path, *args)
        assert result.returncode == code, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
