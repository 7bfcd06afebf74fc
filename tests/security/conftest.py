"""Fixtures of the attack tests: a real server process on a database of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.servers import ServerProcess


@pytest.fixture
async def server(fresh_db: str, tmp_path: Path) -> AsyncIterator[ServerProcess]:
    """``python -m teleconsult serve`` on ``fresh_db``, with the tests' settings."""
    proc = ServerProcess(fresh_db, tmp_path)
    await proc.start()
    try:
        yield proc
    finally:
        await proc.stop()


@pytest.fixture
async def db(fresh_db: str) -> AsyncIterator[asyncpg.Pool]:
    """A small pool on the server's database, for setting up and checking."""
    pool = await asyncpg.create_pool(fresh_db, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()
