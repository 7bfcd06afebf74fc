"""An owner role, a runtime role and a database of theirs on the test PostgreSQL.

Uniquely named, dropped afterwards (database first, then the roles). The test
cluster trusts loopback connections, so the passwords are only there to be like
a deployment; the embedded PostgreSQL's tests check password authentication.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tests.dbutil import ADMIN_DSN


@dataclass(frozen=True)
class Roles:
    database: str
    owner: str
    runtime: str
    owner_url: str
    runtime_url: str
    # The test cluster's superuser, on this database.
    admin_url: str


def role_url(user: str, password: str, database: str) -> str:
    parts = urlsplit(ADMIN_DSN)
    host = parts.hostname or "127.0.0.1"
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}{port}", path=f"/{database}"))


def admin_url(database: str) -> str:
    parts = urlsplit(ADMIN_DSN)
    return urlunsplit(parts._replace(path=f"/{database}"))


@contextlib.asynccontextmanager
async def owner_and_runtime() -> AsyncIterator[Roles]:
    """Two login roles (no special attributes) and a database the owner role owns."""
    tag = f"{os.getpid()}_{secrets.token_hex(4)}"
    owner, runtime, database = f"tc_owner_{tag}", f"tc_app_{tag}", f"tc_priv_{tag}"
    passwords = {owner: secrets.token_hex(16), runtime: secrets.token_hex(16)}
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        for role, password in passwords.items():
            await admin.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
        await admin.execute(f'CREATE DATABASE "{database}" OWNER "{owner}"')
        yield Roles(
            database=database,
            owner=owner,
            runtime=runtime,
            owner_url=role_url(owner, passwords[owner], database),
            runtime_url=role_url(runtime, passwords[runtime], database),
            admin_url=admin_url(database),
        )
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        for role in (runtime, owner):
            await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()
