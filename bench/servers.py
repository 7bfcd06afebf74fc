"""The servers a benchmark starts, one per subprocess: ``python -m bench.servers KIND``.

``teleconsult`` is the real thing, started exactly as ``teleconsult serve`` is
(``teleconsult.cli.main``: ``create_app``, every middleware, the JSON access log).

``reference`` is the framework's ceiling for ``GET /api/v1/me``: a bare aiohttp
app doing only the irreducible work of that request -- parse the Bearer token,
verify the HS256 JWT with pyjwt, one ``SELECT`` of user and session by primary
key through an asyncpg pool, a JSON answer -- with no middleware and no access
log. ``reference-nodb`` is the same without the query, to show what the
database round trip costs.

Every kind reads its configuration from the environment (``HOST``, ``PORT``,
``DATABASE_URL``, ``DATABASE_POOL_MIN``/``MAX``, ``JWT_SECRET``, ``JWT_ISSUER``),
pins itself to ``--cpu`` before it starts any thread, and is bounded: SIGALRM
ends it after ``--max-seconds`` and it dies with its parent.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
import jwt
from aiohttp import web

KINDS = ("teleconsult", "reference", "reference-nodb")

_PR_SET_PDEATHSIG = 1

_ME_SQL = """
SELECT u.id, u.clinic_id, u.email, u.role::text AS role, u.full_name, u.phone, u.status,
       u.created_at, s.revoked_at
FROM auth_sessions s JOIN users u ON u.id = s.user_id
WHERE s.id = $2 AND u.id = $1
"""

POOL = web.AppKey("pool", asyncpg.Pool)


def _die_with_parent() -> None:
    """Ask the kernel to send SIGTERM when the benchmark process goes away."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the SIGALRM bound still holds


def _unauthorized(detail: str) -> web.Response:
    return web.json_response({"status": 401, "detail": detail}, status=401)


def _claims(request: web.Request, secret: str, issuer: str) -> tuple[UUID, UUID] | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    try:
        claims = jwt.decode(
            token.strip(),
            secret,
            algorithms=["HS256"],
            issuer=issuer,
            options={"require": ["exp", "iat", "sub", "sid", "iss"]},
        )
        return UUID(str(claims["sub"])), UUID(str(claims["sid"]))
    except (jwt.PyJWTError, ValueError, TypeError):
        return None


def reference_app(
    *, secret: str, issuer: str, dsn: str | None, pool_min: int, pool_max: int
) -> web.Application:
    """The bare app; ``dsn`` None builds ``reference-nodb``."""
    app = web.Application()

    async def me(request: web.Request) -> web.Response:
        ids = _claims(request, secret, issuer)
        if ids is None:
            return _unauthorized("access token invalid")
        user_id, session_id = ids
        if dsn is None:
            return web.json_response({"id": str(user_id), "session_id": str(session_id)})
        row = await request.app[POOL].fetchrow(_ME_SQL, user_id, session_id)
        if row is None or row["revoked_at"] is not None or row["status"] != "active":
            return _unauthorized("session has ended")
        body: dict[str, Any] = {
            "id": str(row["id"]),
            "clinic_id": str(row["clinic_id"]),
            "email": row["email"],
            "role": row["role"],
            "full_name": row["full_name"],
            "phone": row["phone"],
            "status": row["status"],
            "created_at": row["created_at"].isoformat(),
        }
        return web.Response(body=json.dumps(body), content_type="application/json")

    async def database(app: web.Application) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(dsn, min_size=pool_min, max_size=pool_max)
        app[POOL] = pool
        try:
            yield
        finally:
            await pool.close()

    if dsn is not None:
        app.cleanup_ctx.append(database)
    app.router.add_get("/api/v1/me", me)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.servers", description=__doc__)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one core")
    parser.add_argument("--max-seconds", type=int, default=600, help="hard lifetime bound")
    args = parser.parse_args(argv)

    # First, before any library starts a thread: threads inherit the mask.
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    _die_with_parent()
    signal.alarm(args.max_seconds)  # default action: terminate

    if args.kind == "teleconsult":
        from teleconsult.cli import main as teleconsult_main

        return teleconsult_main(["serve"])

    env = os.environ
    app = reference_app(
        secret=env["JWT_SECRET"],
        issuer=env.get("JWT_ISSUER", "teleconsult"),
        dsn=env["DATABASE_URL"] if args.kind == "reference" else None,
        pool_min=int(env.get("DATABASE_POOL_MIN", "1")),
        pool_max=int(env.get("DATABASE_POOL_MAX", "10")),
    )
    web.run_app(
        app,
        host=env.get("HOST", "127.0.0.1"),
        port=int(env["PORT"]),
        access_log=None,
        print=lambda text: print(text, flush=True),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
