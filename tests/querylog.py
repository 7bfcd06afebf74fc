"""Counting the statements a server sends to PostgreSQL (round trips, not time).

asyncpg calls a connection's query loggers once per ``execute``/``fetch``/``fetchmany``
call, i.e. once per round trip. ``counting(pool)`` attaches a logger to every
connection of a pool (it holds all of them for a moment to reach each one) and
collects the statements run while the block runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg

_INTROSPECTION = ("typeinfo_tree", "set_config('jit'")


@dataclass(eq=False)
class QueryLog:
    statements: list[str] = field(default_factory=list)
    on: bool = False

    def __call__(self, record: Any) -> None:
        text = " ".join(str(record.query).split())
        # asyncpg learns a type it has no codec for (uuid[] among them) once per
        # connection, with these; they are the driver's, not the request's.
        if self.on and not any(marker in text for marker in _INTROSPECTION):
            self.statements.append(text)

    def clear(self) -> None:
        self.statements.clear()

    def matching(self, *words: str) -> list[str]:
        return [s for s in self.statements if all(w in s for w in words)]


@contextlib.asynccontextmanager
async def counting(pool: asyncpg.Pool) -> AsyncIterator[QueryLog]:
    log = QueryLog()
    held = [await pool.acquire() for _ in range(pool.get_max_size())]
    try:
        for conn in held:
            conn.add_query_logger(log)
    finally:
        for conn in held:
            await pool.release(conn)
    log.on = True
    try:
        yield log
    finally:
        log.on = False
        held = [await pool.acquire() for _ in range(pool.get_max_size())]
        for conn in held:
            conn.remove_query_logger(log)
            await pool.release(conn)
