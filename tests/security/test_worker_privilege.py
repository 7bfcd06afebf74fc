"""``teleconsult worker`` needs only the runtime role: it never migrates, it waits for
the schema (README, "Background jobs"; server/app.py ``MIGRATES``).

Real processes on a database of an owner role and a runtime role of their own.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

from teleconsult.core.db import DatabaseUrls
from teleconsult.core.migrations import load_migrations, migrate_database
from tests.conftest import settings_env
from tests.security.pg_roles import owner_and_runtime
from tests.servers import WorkerProcess


async def _has_schema(admin_url: str) -> bool:
    conn = await asyncpg.connect(admin_url)
    try:
        return bool(await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"))
    finally:
        await conn.close()


async def test_a_worker_with_the_runtime_role_alone_waits_for_the_migrations(
    tmp_path: Path,
) -> None:
    async with owner_and_runtime() as roles:
        env = settings_env(roles.runtime_url, tmp_path, DATABASE_SCHEMA_WAIT_SECONDS="120")
        worker = WorkerProcess(env, tmp_path / "worker.log")
        await worker.launch()
        try:
            await worker.wait_for("waiting for")
            assert not await _has_schema(roles.admin_url)  # it did not try to migrate
            urls = DatabaseUrls(roles.runtime_url, roles.owner_url, roles.runtime)
            await migrate_database(urls)
            await worker.wait_for("press Ctrl-C to stop")
            assert "applied migration" not in worker.text()
            assert await worker.terminate() == 0, worker.text()
        finally:
            await worker.kill()


async def test_a_worker_gives_up_naming_the_missing_migration_and_changes_nothing(
    tmp_path: Path,
) -> None:
    async with owner_and_runtime() as roles:
        env = settings_env(roles.runtime_url, tmp_path, DATABASE_SCHEMA_WAIT_SECONDS="1")
        worker = WorkerProcess(env, tmp_path / "worker.log")
        await worker.launch()
        code = await worker.wait()
        text = worker.text()
        assert code != 0, text
        first = load_migrations()[0].version
        assert f"first {first:04d}" in text and "teleconsult migrate" in text, text
        assert "Traceback" not in text, text
        assert not await _has_schema(roles.admin_url)
