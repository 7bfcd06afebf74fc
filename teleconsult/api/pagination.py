"""Opaque cursors for keyset pagination.

A cursor is the last row's ``(created_at, id)``, as JSON in base64url. It is opaque
to clients but not secret or signed, so it is checked like any input: a forged one
(a timestamp PostgreSQL cannot take, an offset that pushes it past year 9999, not
a pair at all) is ``400 invalid_cursor``, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol, TypeVar
from uuid import UUID

from teleconsult.core.errors import BadRequest, ErrorCode, FieldError

# Longer than any cursor this server issues (about 100 characters).
MAX_CURSOR_CHARS = 512
# Rows are created now; a cursor from outside these years was not issued here, and
# years 1 and 9999 overflow when asyncpg converts an offset to UTC.
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def encode_cursor(created_at: datetime, item_id: UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(item_id)], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[datetime, UUID] | None:
    """The ``(created_at, id)`` a cursor names, in UTC; 400 ``invalid_cursor`` otherwise."""
    if cursor is None:
        return None
    try:
        if len(cursor) > MAX_CURSOR_CHARS or not cursor.isascii():
            raise ValueError("not a cursor")
        padded = cursor + "=" * (-len(cursor) % 4)
        decoded = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(decoded, list) or len(decoded) != 2:
            raise ValueError("not a pair")
        created, item = decoded
        if not isinstance(created, str) or not isinstance(item, str):
            raise ValueError("not a pair of strings")
        when = datetime.fromisoformat(created)
        if when.tzinfo is None:
            raise ValueError("naive timestamp")
        # Not astimezone: on year 1 or 9999 it overflows (OverflowError).
        if not _EARLIEST <= when <= _LATEST:
            raise ValueError("timestamp out of range")
        return when.astimezone(UTC), UUID(item)
    except (ValueError, TypeError, OverflowError, RecursionError, binascii.Error):
        raise BadRequest(
            "cursor is not one this server issued",
            code=ErrorCode.INVALID_CURSOR,
            fields=[FieldError("query.cursor", "invalid cursor")],
        ) from None


class Keyed(Protocol):
    @property
    def created_at(self) -> datetime: ...

    @property
    def id(self) -> UUID: ...


K = TypeVar("K", bound=Keyed)


def cut_page(found: Sequence[K], limit: int) -> tuple[Sequence[K], str | None]:
    """Split ``limit + 1`` fetched rows into a page and the cursor of the next one."""
    page = found[:limit]
    more = len(found) > limit
    return page, encode_cursor(page[-1].created_at, page[-1].id) if more else None
