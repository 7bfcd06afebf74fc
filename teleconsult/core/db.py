"""The asyncpg pool: opened and closed by the app's cleanup context."""

from __future__ import annotations

import json
import logging
from typing import Any

import asyncpg

logger = logging.getLogger(__name__)

Pool = asyncpg.Pool


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Give a connection back to the pool without a round trip.

    asyncpg's default reset runs a query on every release (CLOSE ALL, UNLISTEN,
    advisory unlock, RESET ALL): on the hot paths that was one round trip per
    request for nothing, because teleconsult leaves no session state on a pooled
    connection. Code that takes a session-level lock or LISTENs does so on a
    connection of its own (or unlocks in ``finally``, as the migration runner
    does), and SET is only used as SET LOCAL. An open transaction is still rolled
    back by asyncpg itself before this is called.
    """


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """Open a pool whose connections decode json/jsonb into Python values."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_no_reset,
        command_timeout=30,
    )
    return pool


async def ping(pool: asyncpg.Pool) -> bool:
    """True when the database answers a trivial query."""
    try:
        value: Any = await pool.fetchval("SELECT 1", timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        logger.warning("database ping failed: %s", type(exc).__name__)
        return False
    return bool(value == 1)
