"""Migrations: ordered, once each even with concurrent starters, all-or-nothing per file;
run as the owner, they grant the runtime role what the server needs (README, Database)."""

from __future__ import annotations

import asyncio
import re
import secrets
from pathlib import Path

import asyncpg
import pytest

from teleconsult.audit import AuditEvent, AuditTrail
from teleconsult.core.db import DatabaseUrls, create_pool
from teleconsult.core.migrations import (
    Migration,
    MigrationError,
    load_migrations,
    migrate,
    migrate_database,
)
from tests.auditkit import chain_now
from tests.dbutil import ADMIN_DSN, create_database, drop_database, dsn_for
from tests.security.pg_roles import owner_and_runtime, role_url


async def test_files_are_loaded_in_version_order() -> None:
    versions = [m.version for m in load_migrations()]
    assert versions == sorted(versions)
    assert versions[0] == 1


async def test_two_processes_starting_at_once_apply_each_migration_once() -> None:
    dsn = await create_database(migrated=False)
    try:
        first, second = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
        try:
            applied = await asyncio.gather(migrate(first), migrate(second))
        finally:
            await first.close()
            await second.close()
        expected = [m.version for m in load_migrations()]
        assert sorted(applied[0] + applied[1]) == expected
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
            assert [r["version"] for r in rows] == expected
            assert await migrate(conn) == []
        finally:
            await conn.close()
    finally:
        await drop_database(dsn)


async def test_a_failing_migration_leaves_the_schema_as_it_was() -> None:
    dsn = await create_database(migrated=False)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            good = Migration(1, "good", "CREATE TABLE kept (id int)")
            bad = Migration(2, "bad", "CREATE TABLE half_done (id int); SELECT no_such_column")
            with pytest.raises(MigrationError, match="2_bad"):
                await migrate(conn, [good, bad])
            tables = {
                r["tablename"]
                for r in await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                )
            }
            assert "kept" in tables
            assert "half_done" not in tables
            versions = await conn.fetch("SELECT version FROM schema_migrations")
            assert [r["version"] for r in versions] == [1]
        finally:
            await conn.close()
    finally:
        await drop_database(dsn)


async def test_an_applied_migration_that_was_edited_is_refused() -> None:
    dsn = await create_database(migrated=False)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn, [Migration(1, "first", "CREATE TABLE a (id int)")])
            with pytest.raises(MigrationError, match="edited"):
                await migrate(conn, [Migration(1, "first", "CREATE TABLE a (id bigint)")])
        finally:
            await conn.close()
    finally:
        await drop_database(dsn)


async def test_every_migrate_grants_the_runtime_role_also_on_tables_added_later() -> None:
    async with owner_and_runtime() as roles:
        owner = await asyncpg.connect(roles.owner_url)
        try:
            await migrate(owner, runtime_role=roles.runtime)
            later = [*load_migrations(), Migration(9999, "later", "CREATE TABLE later (id int)")]
            assert await migrate(owner, later, runtime_role=roles.runtime) == [9999]
        finally:
            await owner.close()
        runtime = await asyncpg.connect(roles.runtime_url)
        try:
            await runtime.execute("INSERT INTO later VALUES (1)")
            await runtime.execute("UPDATE later SET id = 2")
            assert await runtime.fetchval("DELETE FROM later RETURNING id") == 2
            for statement in (
                "TRUNCATE later",
                "DROP TABLE later",
                "DELETE FROM schema_migrations",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await runtime.execute(statement)
        finally:
            await runtime.close()


async def test_granting_a_runtime_role_that_does_not_exist_is_refused() -> None:
    async with owner_and_runtime() as roles:
        owner = await asyncpg.connect(roles.owner_url)
        try:
            with pytest.raises(MigrationError, match="does not exist"):
                await migrate(owner, runtime_role=roles.runtime + "_missing")
            with pytest.raises(MigrationError, match="runs migrations"):
                await migrate(owner, runtime_role=roles.owner)
        finally:
            await owner.close()


async def test_audit_intake_rows_leave_only_into_the_chain() -> None:
    async with owner_and_runtime() as roles:
        await migrate_database(DatabaseUrls(roles.runtime_url, roles.owner_url))
        trail_pool = await create_pool(roles.runtime_url)
        try:
            trail = AuditTrail(trail_pool)
            for action in ("auth.login", "patient.read", "auth.login"):
                await trail.record(AuditEvent(action=action, ip="127.0.0.1"))
        finally:
            await trail_pool.close()
        for url in (roles.owner_url, roles.runtime_url):
            conn = await asyncpg.connect(url)
            try:
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="only into"):
                    await conn.execute("DELETE FROM audit_intake")
            finally:
                await conn.close()
        # The sequencer, as the runtime role, moves them into the chain.
        assert await chain_now(roles.runtime_url) == 3
        conn = await asyncpg.connect(roles.runtime_url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM audit_intake") == 0
            actions = await conn.fetch("SELECT action FROM audit_log ORDER BY seq")
            assert [r["action"] for r in actions] == ["auth.login", "patient.read", "auth.login"]
        finally:
            await conn.close()


def _readme_sql(database: str, owner: str, runtime: str) -> list[str]:
    """The Database section's SQL blocks, for this test's database and roles."""
    text = Path(__file__).parent.parent.joinpath("README.md").read_text(encoding="utf-8")
    section = text.split("\n## Database\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sql\n(.*?)```", section, flags=re.DOTALL)
    renamed = []
    for block in blocks:
        block = block.replace("teleconsult_owner", owner).replace("teleconsult_app", runtime)
        renamed.append(re.sub(r"\bteleconsult\b", database, block))
    return renamed


async def test_the_readmes_setup_and_hand_over_give_a_working_runtime_role() -> None:
    tag = secrets.token_hex(4)
    database, owner, runtime = f"tc_readme_{tag}", f"tc_readme_owner_{tag}", f"tc_readme_app_{tag}"
    setup, hand_over = _readme_sql(database, owner, runtime)
    before_connect, after_connect = setup.split(f"\\c {database}\n")
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        for statement in before_connect.strip().rstrip(";").split(";\n"):
            await admin.execute(statement)
        # Migrated by the superuser first, as before the roles were split.
        superuser = await asyncpg.connect(dsn_for(database))
        try:
            await superuser.execute(after_connect)
            await migrate(superuser)
            await superuser.execute(hand_over)
        finally:
            await superuser.close()
        urls = DatabaseUrls(
            role_url(runtime, "app-password", database),
            role_url(owner, "owner-password", database),
        )
        await migrate_database(urls)
        pool = await create_pool(urls.runtime, least_privilege=True, runtime_role=runtime)
        try:
            await AuditTrail(pool).record(AuditEvent(action="auth.login", ip="127.0.0.1"))
        finally:
            await pool.close()
        assert await chain_now(urls.runtime) == 1
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        for role in (runtime, owner):
            await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()
