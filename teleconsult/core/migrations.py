"""Ordered SQL migrations.

Files named ``NNNN_description.sql`` in ``teleconsult/core/migrations`` are applied
in order. Each file runs in its own transaction, so a failing migration leaves
the schema as it was. A session-level advisory lock serialises runners, so two
server processes starting at once apply each migration exactly once. A file
that was applied and later edited is refused (its checksum no longer matches).

Least privilege (README, "Database"): run as the owner role with a runtime role
named, every migrate also (re-)grants that role what the server needs, so tables
added later are covered: the data tables' rows, the audit tables only as far as
recording and chaining events go, nothing that owns, creates, alters or drops.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from teleconsult.core.db import AUDIT_TABLES, DatabaseUrls
from teleconsult.core.errors import TeleconsultError

logger = logging.getLogger(__name__)

# Arbitrary constant shared by every teleconsult process: "tcmigrat" as bytes.
MIGRATION_LOCK_KEY = 0x74636D6967726174 - (1 << 63)
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(TeleconsultError):
    """A migration failed or the applied history does not match the files."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def load_migrations() -> list[Migration]:
    """Every migration file shipped with the package, in version order."""
    found: list[Migration] = []
    folder = resources.files("teleconsult.core") / "migrations"
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions: {versions}")
    return found


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


# What the runtime role may do to each audit table; every other table of the
# public schema gets DATA_PRIVILEGES. Nothing gets TRUNCATE, REFERENCES or TRIGGER.
# The triggers of 0002, 0009 and 0010 narrow these further: the head only moves
# forward onto a chained row, and an intake row leaves only into the chain.
RUNTIME_TABLE_PRIVILEGES: dict[str, str] = {
    "audit_intake": "SELECT, INSERT, DELETE",
    "audit_log": "SELECT, INSERT",
    "audit_head": "SELECT, UPDATE",
    "audit_checkpoints": "SELECT, INSERT",
    "schema_migrations": "SELECT",
    # --- payments (issue 15): the ledger is append-only ---
    "ledger_transactions": "SELECT, INSERT",
    "ledger_postings": "SELECT, INSERT",
    # --- records (issue 14, part R): nothing of a record is deleted. UPDATE stays where
    # re-keying (`records rotate-key`) or an ending needs it; the triggers of 0016/0017
    # narrow it to exactly that on note versions and prescriptions.
    "clinical_note_versions": "SELECT, INSERT, UPDATE",
    "prescriptions": "SELECT, INSERT, UPDATE",
    "break_glass_accesses": "SELECT, INSERT, UPDATE",
    "consents": "SELECT, INSERT, UPDATE",
    "care_team_members": "SELECT, INSERT, UPDATE",
    "vital_signs": "SELECT, INSERT",
    "medication_statements": "SELECT, INSERT, UPDATE",
    "record_keys": "SELECT, INSERT, UPDATE",
    "care_plans": "SELECT, INSERT, UPDATE",
    "record_changes": "SELECT, INSERT",
    "documents": "SELECT, INSERT, UPDATE",
    "document_versions": "SELECT, INSERT",
    # --- end records ---
}
assert set(AUDIT_TABLES) <= set(RUNTIME_TABLE_PRIVILEGES)
DATA_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def grant_runtime(conn: asyncpg.Connection, role: str) -> None:
    """Give ``role`` exactly the server's privileges on every table of the public schema.

    Run as the owner of the schema's objects (``migrate`` does it under its lock).
    Revokes first, so a privilege dropped from this list is taken back too.
    """
    facts = await conn.fetchrow(
        "SELECT current_user AS me, current_database() AS db, "
        "(SELECT rolsuper FROM pg_roles WHERE rolname = $1) AS superuser",
        role,
    )
    assert facts is not None
    if facts["superuser"] is None:
        raise MigrationError(
            f"the runtime role {role!r} does not exist; create it first (README, Database)"
        )
    if role == facts["me"]:
        raise MigrationError(f"the runtime role {role!r} is the role that runs migrations")
    tables = await conn.fetch(
        "SELECT c.relname FROM pg_class AS c "
        "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v') "
        "ORDER BY c.relname"
    )
    who = quote_ident(role)
    db = quote_ident(facts["db"])
    statements = [
        # Only the roles that are meant to may connect; no temporary tables either.
        f"REVOKE ALL ON DATABASE {db} FROM PUBLIC",
        f"REVOKE ALL ON DATABASE {db} FROM {who}",
        f"GRANT CONNECT ON DATABASE {db} TO {who}",
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
        f"REVOKE ALL ON SCHEMA public FROM {who}",
        f"GRANT USAGE ON SCHEMA public TO {who}",
    ]
    # Only what the owner owns: an extension's functions (btree_gist) stay the
    # superuser's, executable by PUBLIC, and granting them would only warn.
    owned = await conn.fetch(
        "SELECT 'SEQUENCE' AS kind, format('%I', relname) AS name FROM pg_class "
        "WHERE relnamespace = 'public'::regnamespace AND relkind = 'S' "
        "AND relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user) "
        "UNION ALL "
        "SELECT 'FUNCTION', format('%s', oid::regprocedure) FROM pg_proc "
        "WHERE pronamespace = 'public'::regnamespace "
        "AND proowner = (SELECT oid FROM pg_roles WHERE rolname = current_user) "
        "ORDER BY 1, 2"
    )
    for row in owned:
        privileges = "USAGE, SELECT" if row["kind"] == "SEQUENCE" else "EXECUTE"
        statements.append(f"REVOKE ALL ON {row['kind']} {row['name']} FROM {who}")
        statements.append(f"GRANT {privileges} ON {row['kind']} {row['name']} TO {who}")
    for row in tables:
        table = quote_ident(row["relname"])
        privileges = RUNTIME_TABLE_PRIVILEGES.get(row["relname"], DATA_PRIVILEGES)
        statements.append(f"REVOKE ALL ON TABLE {table} FROM {who}")
        statements.append(f"GRANT {privileges} ON TABLE {table} TO {who}")
    async with conn.transaction():
        await conn.execute(";\n".join(statements))
    logger.info("granted the runtime role %s its privileges on %d tables", role, len(tables))


async def migrate(
    conn: asyncpg.Connection,
    migrations: list[Migration] | None = None,
    *,
    runtime_role: str | None = None,
) -> list[int]:
    """Apply pending migrations; return the versions applied by this call.

    With ``runtime_role``, grant it the server's privileges afterwards (see
    :func:`grant_runtime`), also when nothing was pending.
    """
    todo = load_migrations() if migrations is None else migrations
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(_CREATE_TABLE)
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        applied = {row["version"]: row["checksum"] for row in rows}
        for migration in todo:
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version}_{migration.name} was edited after it "
                        "was applied; add a new migration instead"
                    )
                continue
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(
                    f"migration {migration.version}_{migration.name} failed: {exc}"
                ) from exc
            logger.info("applied migration %s_%s", migration.version, migration.name)
            applied_now.append(migration.version)
        if runtime_role is not None:
            await grant_runtime(conn, runtime_role)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now


async def migrate_database(urls: DatabaseUrls) -> list[int]:
    """Migrate as the owner and grant the runtime role (or, with no owner URL, migrate
    as the one role there is); return the versions applied."""
    if urls.owner is None:
        conn = await asyncpg.connect(urls.runtime)
        try:
            return await migrate(conn)
        finally:
            await conn.close()
    role = urls.runtime_role
    if role is None:
        probe = await asyncpg.connect(urls.runtime)
        try:
            role = str(await probe.fetchval("SELECT current_user"))
        finally:
            await probe.close()
    conn = await asyncpg.connect(urls.owner)
    try:
        return await migrate(conn, runtime_role=role)
    finally:
        await conn.close()


async def pending_migrations(conn: asyncpg.Connection) -> list[int]:
    """The shipped migrations the database has not applied (all of them on an empty
    database, or one whose migrate has not granted this role yet), read-only: what a
    process that does not migrate checks."""
    # Readable only once a migrate has granted the runtime role (at its end).
    readable = await conn.fetchval(
        "SELECT to_regclass('schema_migrations') IS NOT NULL "
        "AND has_table_privilege('schema_migrations', 'SELECT')"
    )
    applied: dict[int, str] = {}
    if readable:
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        applied = {row["version"]: row["checksum"] for row in rows}
    pending = []
    for migration in load_migrations():
        found = applied.get(migration.version)
        if found is not None and found != migration.checksum:
            raise MigrationError(
                f"migration {migration.version}_{migration.name} was edited after it was applied"
            )
        if found is None:
            pending.append(migration.version)
    return pending


async def wait_for_schema(pool: asyncpg.Pool, *, patience: float, poll: float = 1.0) -> None:
    """Wait until every shipped migration is applied (by a server or ``teleconsult
    migrate``, with the owner role), or raise ``MigrationError`` after ``patience`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    told = False
    while True:
        async with pool.acquire() as conn:
            pending = await pending_migrations(conn)
        if not pending:
            return
        if loop.time() >= deadline:
            raise MigrationError(
                f"{len(pending)} migrations are not applied (first {pending[0]:04d}): start a "
                "server with DATABASE_OWNER_URL, or run `teleconsult migrate`, first"
            )
        if not told:
            logger.info("waiting for %d migrations to be applied by a server", len(pending))
            told = True
        await asyncio.sleep(poll)
