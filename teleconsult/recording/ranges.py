"""HTTP ``Range`` for one byte range (RFC 9110, section 14): pure."""

from __future__ import annotations

import re
from dataclasses import dataclass

from teleconsult.core.errors import RangeNotSatisfiable

_SPEC = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*")


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # exclusive

    def content_range(self, total: int) -> str:
        return f"bytes {self.start}-{self.end - 1}/{total}"


def parse_range(header: str | None, total: int) -> ByteRange | None:
    """The one range ``header`` asks for, or None to send everything (no header, or one
    this server ignores as RFC 9110 allows: another unit, several ranges, bad syntax).
    Raises RangeNotSatisfiable (416) when no byte of it exists."""
    if header is None or "," in header:
        return None
    match = _SPEC.fullmatch(header)
    if match is None or (not match[1] and not match[2]):
        return None
    first, last = match[1], match[2]
    if len(first) > 19 or len(last) > 19:
        return None
    if not first:  # a suffix: the last N bytes
        suffix = int(last)
        if suffix == 0 or total == 0:
            raise _unsatisfiable(total)
        return ByteRange(max(0, total - suffix), total)
    start = int(first)
    if last and int(last) < start:
        return None  # invalid: ignored
    if start >= total:
        raise _unsatisfiable(total)
    end = total if not last else min(int(last) + 1, total)
    return ByteRange(start, end)


def _unsatisfiable(total: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(
        "the range is outside the media", headers={"Content-Range": f"bytes */{total}"}
    )
