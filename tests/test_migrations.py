"""Migrations: ordered, once each even with concurrent starters, all-or-nothing per file."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from teleconsult.core.migrations import Migration, MigrationError, load_migrations, migrate
from tests.dbutil import create_database, drop_database


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
