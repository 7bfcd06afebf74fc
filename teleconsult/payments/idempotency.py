"""Idempotency keys on our own API, with Stripe's semantics (migration 0020).

A POST that creates or moves money carries ``Idempotency-Key``. The first request
with a key (per caller) runs and its answer is stored: a success, and also an
error once execution began (a refusal by the domain, e.g. ``payment_in_progress``).
A retry with the same key and the same request gets the stored answer again; the
same key with a different request is refused (422 ``idempotency_key_reused``);
while the first still runs, a duplicate gets 409 ``idempotency_key_in_flight``.

Answers that say "try again" (a provider or dependency down, an unexpected error)
are not stored: the key is released, and a retry runs the request again. Keys live
``ttl`` (24 h); the reconciler's loop sweeps older ones.

A server killed while it ran a request leaves the key leased until
``locked_until``; after that a retry takes it over and runs again. The operations
are safe to run twice (an invoice accepts one live payment; a second start answers
``payment_in_progress``, and the invoice shows the first).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID

import asyncpg

from teleconsult.core.errors import BadRequest, Conflict, ErrorCode, Unprocessable

MAX_KEY = 255


@dataclass(frozen=True)
class Replay:
    status: int
    body: str
    content_type: str


def fingerprint(operation: str, path: str, body: bytes) -> bytes:
    """What makes two requests "the same": operation, path and the body's JSON value
    (key order and spacing do not matter)."""
    try:
        canonical = json.dumps(json.loads(body or b"null"), sort_keys=True, separators=(",", ":"))
    except (ValueError, UnicodeDecodeError):
        canonical = body.hex()
    return hashlib.sha256(f"{operation}\n{path}\n{canonical}".encode()).digest()


def check_key(key: str | None) -> str:
    if key is None or not key.strip():
        raise BadRequest(
            "send an Idempotency-Key header (a fresh random value per new request)",
            code=ErrorCode.IDEMPOTENCY_KEY_REQUIRED,
        )
    if len(key) > MAX_KEY or not key.isprintable():
        raise BadRequest(
            f"the Idempotency-Key must be 1 to {MAX_KEY} printable characters",
            code=ErrorCode.IDEMPOTENCY_KEY_REQUIRED,
        )
    return key


class IdempotencyKeys:
    def __init__(
        self, pool: asyncpg.Pool, *, ttl: timedelta = timedelta(hours=24), lease: float = 60.0
    ) -> None:
        self._pool = pool
        self._ttl = ttl
        self._lease = lease

    async def begin(self, user_id: UUID, key: str, operation: str, print_: bytes) -> Replay | None:
        """None: the caller owns the key and runs the request. A Replay: answer it."""
        async with self._pool.acquire() as conn, conn.transaction():
            # An expired key is as good as absent.
            await conn.execute(
                "DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 "
                "AND created_at < now() - $3::interval",
                user_id,
                key,
                self._ttl,
            )
            owned = await conn.fetchval(
                """
                INSERT INTO idempotency_keys (user_id, key, operation, fingerprint, locked_until)
                VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
                ON CONFLICT DO NOTHING RETURNING true
                """,
                user_id,
                key,
                operation,
                print_,
                self._lease,
            )
            if owned:
                return None
            row = await conn.fetchrow(
                "SELECT operation, fingerprint, response_status, response_body, response_type, "
                "locked_until > now() AS held FROM idempotency_keys "
                "WHERE user_id = $1 AND key = $2 FOR UPDATE",
                user_id,
                key,
            )
            if row is None:  # swept between the two statements
                raise Conflict(
                    "that Idempotency-Key is being reused; try again",
                    code=ErrorCode.IDEMPOTENCY_KEY_IN_FLIGHT,
                )
            if row["operation"] != operation or bytes(row["fingerprint"]) != print_:
                raise Unprocessable(
                    "this Idempotency-Key was used with a different request",
                    code=ErrorCode.IDEMPOTENCY_KEY_REUSED,
                )
            if row["response_status"] is not None:
                return Replay(row["response_status"], row["response_body"], row["response_type"])
            if row["held"]:
                raise Conflict(
                    "the first request with this Idempotency-Key is still running",
                    code=ErrorCode.IDEMPOTENCY_KEY_IN_FLIGHT,
                )
            # Its first runner died: take the key over.
            await conn.execute(
                "UPDATE idempotency_keys SET locked_until = now() + make_interval(secs => $3) "
                "WHERE user_id = $1 AND key = $2",
                user_id,
                key,
                self._lease,
            )
            return None

    async def finish(
        self, user_id: UUID, key: str, status: int, body: str, content_type: str
    ) -> None:
        await self._pool.execute(
            "UPDATE idempotency_keys SET response_status = $3, response_body = $4, "
            "response_type = $5, locked_until = NULL WHERE user_id = $1 AND key = $2",
            user_id,
            key,
            status,
            body[:65536],
            content_type,
        )

    async def release(self, user_id: UUID, key: str) -> None:
        """Forget the key: the request did not get an answer worth keeping."""
        await self._pool.execute(
            "DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 "
            "AND response_status IS NULL",
            user_id,
            key,
        )

    async def sweep(self) -> int:
        """Delete keys older than the time they are kept; returns how many."""
        result = await self._pool.execute(
            "DELETE FROM idempotency_keys WHERE created_at < now() - $1::interval", self._ttl
        )
        return int(result.split()[-1])
