"""First start with several processes (issue 16): server processes started together on
an empty database agree on one demo clinic and one admin, and all of them start.

Before, each process saw no clinic, each created one, and the losers exited on the
admin e-mail's unique key (3 of 12 tries with two processes).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from tests.servers import ServerProcess

pytestmark = pytest.mark.slow


async def test_processes_started_together_on_an_empty_database_make_one_clinic(
    fresh_db: str, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(fresh_db)
    try:
        assert await conn.fetchval("SELECT count(*) FROM clinics") == 0
    finally:
        await conn.close()
    servers = [ServerProcess(fresh_db, tmp_path, name=f"p{i}") for i in range(4)]
    try:
        await asyncio.gather(*(s.start() for s in servers))
        conn = await asyncpg.connect(fresh_db)
        try:
            assert await conn.fetchval("SELECT count(*) FROM clinics") == 1
            admins = await conn.fetchval("SELECT count(*) FROM users WHERE role = 'admin'")
            assert admins == 1
        finally:
            await conn.close()
        # Exactly one of them made it, and only that one has the admin's password file.
        made = [s for s in servers if (tmp_path / s.log.stem / "initial-admin.txt").exists()]
        assert len(made) == 1, [s.log_tail() for s in servers]
    finally:
        await asyncio.gather(*(s.stop() for s in servers))
