"""The asyncpg pool: opened and closed by the app's cleanup context.

Least privilege (README, "Database"): with an owner URL the server's pool runs as
a runtime role, and each of its connections confirms when it opens that the role
is not a superuser and cannot act as the owner of the audit tables.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg

from teleconsult.core.errors import ConfigError

logger = logging.getLogger(__name__)

Pool = asyncpg.Pool

# Shown in pg_stat_activity, so an operator can tell the server's connections.
APPLICATION_NAME: Final = "teleconsult"
# The tables whose triggers keep the audit trail append-only: only their owner
# (or a superuser) could alter or disable those triggers.
AUDIT_TABLES: Final = ("audit_log", "audit_head", "audit_intake", "audit_checkpoints")


@dataclass(frozen=True)
class DatabaseUrls:
    """Where the server's pool connects (``runtime``) and where migrations run.

    ``owner`` None: one role does both (a superuser ``DATABASE_URL``, the test
    suite's way). Otherwise migrations run as ``owner`` and grant ``runtime_role``
    (None: the role ``runtime`` signs in as) what the server needs.
    """

    runtime: str = field(repr=False)
    owner: str | None = field(default=None, repr=False)
    runtime_role: str | None = None


@dataclass(frozen=True)
class RoleFacts:
    """What the connected role could do beyond its grants."""

    name: str
    superuser: bool
    # Can create roles: before PostgreSQL 16 that includes joining the owner's role.
    createrole: bool
    # Owns an audit table or may act as its owner (a member of the owner's role).
    acts_as_audit_owner: bool
    # May create objects in the public schema.
    can_create: bool

    @property
    def refusals(self) -> list[str]:
        """Why this role must not be the server's runtime role (empty when it may)."""
        found = []
        if self.superuser:
            found.append("is a superuser")
        if self.createrole:
            found.append("may create roles")
        if self.acts_as_audit_owner:
            found.append("owns the audit tables or is a member of their owner")
        return found


_ROLE_FACTS = """
SELECT r.rolname AS name, r.rolsuper AS superuser, r.rolcreaterole AS createrole,
       EXISTS (
           SELECT 1 FROM pg_class AS c
           WHERE c.relnamespace = 'public'::regnamespace AND c.relname = ANY($1::text[])
             AND pg_has_role(r.oid, c.relowner, 'MEMBER')
       ) AS acts_as_audit_owner,
       has_schema_privilege(r.oid, 'public', 'CREATE') AS can_create
FROM pg_roles AS r WHERE r.rolname = current_user
"""


async def role_facts(conn: asyncpg.Connection) -> RoleFacts:
    """What the role ``conn`` signed in as may do (one catalog query)."""
    row = await conn.fetchrow(_ROLE_FACTS, list(AUDIT_TABLES))
    assert row is not None  # current_user always has a pg_roles row
    return RoleFacts(**dict(row))


async def _confirm_least_privilege(conn: asyncpg.Connection, runtime_role: str | None) -> None:
    facts = await role_facts(conn)
    if runtime_role is not None and facts.name != runtime_role:
        raise ConfigError(
            "DATABASE_RUNTIME_ROLE",
            f"the server signs in as {facts.name!r}, but migrations grant {runtime_role!r}",
        )
    if facts.refusals:
        raise ConfigError(
            "DATABASE_URL",
            f"the server's role {facts.name!r} {' and '.join(facts.refusals)}; with "
            "DATABASE_OWNER_URL set it must be a plain role that can neither alter nor "
            "disable the audit triggers (README, Database)",
        )


async def _init_connection(
    conn: asyncpg.Connection, *, least_privilege: bool = False, runtime_role: str | None = None
) -> None:
    if least_privilege:
        await _confirm_least_privilege(conn, runtime_role)
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


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    least_privilege: bool = False,
    runtime_role: str | None = None,
) -> asyncpg.Pool:
    """Open a pool whose connections decode json/jsonb into Python values.

    With ``least_privilege`` every connection, as it opens, confirms that its role
    is ``runtime_role`` (when given) and could not switch the audit triggers off;
    otherwise it raises :class:`ConfigError`, and at start-up the server does not
    start.
    """
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=functools.partial(
            _init_connection, least_privilege=least_privilege, runtime_role=runtime_role
        ),
        server_settings={"application_name": APPLICATION_NAME},
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


async def warn_if_privileged(pool: asyncpg.Pool) -> None:
    """Log a WARNING when the one role the server runs as could switch audit triggers off."""
    async with pool.acquire() as conn:
        facts = await role_facts(conn)
    if facts.superuser or facts.acts_as_audit_owner:
        logger.warning(
            "the server connects to PostgreSQL as %s, which %s: it has more privilege than "
            "it needs and could switch the audit trail's triggers off; set DATABASE_OWNER_URL "
            "to the owner role and DATABASE_URL to a runtime role (README, Database)",
            facts.name,
            "is a superuser" if facts.superuser else "owns the audit tables",
        )
    elif facts.can_create:
        logger.warning(
            "the server's PostgreSQL role %s may create objects in the public schema; "
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC (README, Database)",
            facts.name,
        )
