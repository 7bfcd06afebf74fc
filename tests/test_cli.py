"""The command line, run as a real process: serve on embedded PostgreSQL, migrate, audit verify."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.dbutil import create_database_sync, drop_database_sync

_OURS = ("DATABASE_URL", "REDIS_URL", "MQTT_URL", "JWT_SECRET", "PORT", "HOST")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _OURS and not k.endswith("_FILE")}
    env.update(extra)
    return env


def _request(url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _wait_healthy(base: str, proc: subprocess.Popen[str], within: float = 90.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}")
        try:
            if _request(f"{base}/healthz")[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.25)
    pytest.fail("server did not answer /healthz in time")


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail("server did not stop within 60 s of SIGINT")
    return proc.returncode, out


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Nothing configured but a data folder and a port: the `make run` path."""
    data_dir = tmp_path / "var"
    yield f"http://127.0.0.1:{_free_port()}", data_dir


def _serve(base: str, data_dir: Path) -> subprocess.Popen[str]:
    port = base.rsplit(":", 1)[1]
    return subprocess.Popen(
        [sys.executable, "-m", "teleconsult", "serve"],
        env=_env(
            TELECONSULT_DATA_DIR=str(data_dir),
            PORT=port,
            LOG_FORMAT="text",
            # The embedded MQTT broker's default 1883 is the machine's Mosquitto.
            MQTT_EMBEDDED_PORT=str(_free_port()),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _postgres_running(pgdata: Path) -> bool:
    found = subprocess.run(["pgrep", "-f", f"postgres.*{pgdata}"], capture_output=True, text=True)
    return bool(found.stdout.strip())


@pytest.mark.slow
def test_serve_runs_on_embedded_defaults_and_keeps_data_across_restarts(
    served: tuple[str, Path],
) -> None:
    base, data_dir = served
    proc = _serve(base, data_dir)
    try:
        _wait_healthy(base, proc)
        creds = dict(
            line.split("=", 1) for line in (data_dir / "initial-admin.txt").read_text().splitlines()
        )
        status, tokens = _request(
            f"{base}/api/v1/auth/login",
            {"email": creds["email"], "password": creds["password"]},
        )
        assert status == 200
        assert tokens["user"]["role"] == "admin"
    finally:
        code, out = _stop(proc)
    assert code == 0, out
    assert "listening on http://127.0.0.1" in out
    assert creds["password"] in out  # tells the operator how to sign in
    assert "stopped" in out
    assert not _postgres_running(data_dir / "pg"), "embedded PostgreSQL left running"

    again = _serve(base, data_dir)
    try:
        _wait_healthy(base, again)
        status, tokens = _request(
            f"{base}/api/v1/auth/login",
            {"email": creds["email"], "password": creds["password"]},
        )
        assert status == 200
        assert tokens["user"]["clinic_id"] == creds["clinic_id"]
    finally:
        code, out = _stop(again)
    assert code == 0, out
    # Printed on the first start only; later starts say where the file is.
    assert creds["password"] not in out
    assert "initial-admin.txt" in out


def test_a_bad_setting_stops_the_start_and_names_the_variable(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "teleconsult", "serve"],
        env=_env(TELECONSULT_DATA_DIR=str(tmp_path), PORT="not-a-port"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "PORT" in result.stderr


async def _tamper(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET session_replication_role = replica")
        await conn.execute("UPDATE audit_log SET action = 'auth.logout' WHERE seq = 2")
    finally:
        await conn.close()


async def _record_some(dsn: str, data_dir: Path) -> None:
    """Three events, chained and signed with the data folder's own key, as a server would."""
    from teleconsult.audit import AuditEvent, AuditTrail
    from teleconsult.core.db import create_pool
    from teleconsult.core.settings import load_settings
    from tests.auditkit import chain_now, make_signer

    settings = load_settings(_env(TELECONSULT_DATA_DIR=str(data_dir), DATABASE_URL=dsn)).audit
    pool = await create_pool(dsn)
    try:
        trail = AuditTrail(pool)
        for action in ("auth.login", "patient.read"):
            await trail.record(AuditEvent(action=action, ip="127.0.0.1"))
        await chain_now(
            dsn,
            signer=make_signer(settings.signing_key),
            checkpoint_file=settings.checkpoint_file,
        )
        await trail.record(AuditEvent(action="auth.login", ip="127.0.0.1"))
        await chain_now(
            dsn,
            signer=make_signer(settings.signing_key),
            checkpoint_file=settings.checkpoint_file,
        )
        await trail.record(AuditEvent(action="auth.logout", ip="127.0.0.1"))  # not chained
    finally:
        await pool.close()


def test_migrate_and_audit_verify_commands(tmp_path: Path) -> None:
    dsn = create_database_sync(migrated=False)
    env = _env(TELECONSULT_DATA_DIR=str(tmp_path), DATABASE_URL=dsn)
    command = [sys.executable, "-m", "teleconsult"]
    try:
        migrated = subprocess.run([*command, "migrate"], env=env, capture_output=True, text=True)
        assert migrated.returncode == 0, migrated.stderr
        assert "applied migrations" in migrated.stdout
        asyncio.run(_record_some(dsn, tmp_path))
        clean = subprocess.run(
            [*command, "audit", "verify"], env=env, capture_output=True, text=True
        )
        assert clean.returncode == 0, clean.stdout + clean.stderr
        assert "audit chain OK: 3 rows" in clean.stdout
        assert "checkpoints: 2 in the database, 2 in 1 file" in clean.stdout
        assert "intake: 1 event waiting to be chained" in clean.stdout
        asyncio.run(_tamper(dsn))
        broken = subprocess.run(
            [*command, "audit", "verify"], env=env, capture_output=True, text=True
        )
        assert broken.returncode == 1
        assert "seq 2: hash_mismatch" in broken.stdout
    finally:
        drop_database_sync(dsn)


def test_audit_verify_catches_a_rehashed_chain_and_a_key_it_does_not_trust(
    tmp_path: Path,
) -> None:
    from teleconsult.audit import CheckpointSigner
    from tests.auditkit import rewrite_from

    dsn = create_database_sync()
    env = _env(TELECONSULT_DATA_DIR=str(tmp_path), DATABASE_URL=dsn)
    verify = [sys.executable, "-m", "teleconsult", "audit", "verify"]
    try:
        asyncio.run(_record_some(dsn, tmp_path))
        stranger = CheckpointSigner(bytes(range(100, 132))).public_key.hex()
        untrusted = subprocess.run(
            [*verify, "--public-key", stranger], env=env, capture_output=True, text=True
        )
        assert untrusted.returncode == 1, untrusted.stdout
        assert "bad_signature" in untrusted.stdout
        asyncio.run(rewrite_from(dsn, 1, "auth.logout"))
        rewritten = subprocess.run(verify, env=env, capture_output=True, text=True)
        assert rewritten.returncode == 1, rewritten.stdout
        assert "seq 2: checkpoint_mismatch" in rewritten.stdout
        assert "hash_mismatch" not in rewritten.stdout
        copy = tmp_path / "elsewhere.jsonl"
        copy.write_bytes((tmp_path / "audit-checkpoints.jsonl").read_bytes())
        from_copy = subprocess.run(
            [*verify, "--checkpoints", str(copy)], env=env, capture_output=True, text=True
        )
        assert from_copy.returncode == 1
        assert "in 1 file" in from_copy.stdout
        bad_key = subprocess.run(
            [*verify, "--public-key", "xyz"], env=env, capture_output=True, text=True
        )
        assert bad_key.returncode == 2
        assert "--public-key" in bad_key.stderr
    finally:
        drop_database_sync(dsn)
