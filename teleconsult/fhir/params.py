"""Parsing FHIR search parameters (pure, no I/O).

Dates follow the R4 search rules (http://hl7.org/fhir/R4/search.html#date): a
value names a range as wide as its precision (``2024`` is the whole year,
``2024-05-03`` one day, an instant one second or one millisecond), and the prefix
compares the resource's time with that range. Every function raises
:class:`SearchParamError` (a 400) naming the parameter, never anything else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from uuid import UUID

from teleconsult.core.errors import BadRequest, FieldError

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
SUPPORTED_PREFIXES = ("eq", "gt", "lt", "ge", "le")
_DATE = re.compile(
    r"(?P<y>\d{4})(-(?P<m>\d{2})(-(?P<d>\d{2})"
    r"(T(?P<H>\d{2}):(?P<M>\d{2})(:(?P<S>\d{2})(?P<f>\.\d{1,9})?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)
MAX_COUNT = 500
DEFAULT_COUNT = 50


class SearchParamError(BadRequest):
    """A search parameter that cannot be understood (400)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(
            f"search parameter {name}: {message}",
            fields=[FieldError(field=f"query.{name}", message=message)],
        )


@dataclass(frozen=True)
class TimeRange:
    """``[start, end)`` in UTC."""

    start: datetime
    end: datetime


@dataclass(frozen=True)
class Bounds:
    """What a list of prefixed date values allows: ``start <= t < before``."""

    start: datetime | None = None
    before: datetime | None = None

    def narrow(self, start: datetime | None, before: datetime | None) -> Bounds:
        new_start = self.start if start is None else max(start, self.start or start)
        new_before = self.before if before is None else min(before, self.before or before)
        return Bounds(new_start, new_before)


def parse_range(name: str, value: str) -> TimeRange:
    """The range a FHIR date, dateTime or instant names (without a prefix)."""
    match = _DATE.fullmatch(value)
    if match is None:
        raise SearchParamError(name, f"not a FHIR date or dateTime: {value!r}")
    try:
        year = int(match["y"])
        if match["m"] is None:
            start = datetime(year, 1, 1, tzinfo=UTC)
            return TimeRange(start, datetime(year + 1, 1, 1, tzinfo=UTC))
        month = int(match["m"])
        if match["d"] is None:
            start = datetime(year, month, 1, tzinfo=UTC)
            end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
            return TimeRange(start, end)
        day = date(year, month, int(match["d"]))
        if match["H"] is None:
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return TimeRange(start, start + timedelta(days=1))
        if match["tz"] is None:
            raise SearchParamError(name, "a time needs a zone (Z or +hh:mm)")
        text = value.replace("Z", "+00:00")
        if match["S"] is None:
            text = text[:16] + ":00" + text[16:]
            step = timedelta(minutes=1)
        elif match["f"] is None:
            step = timedelta(seconds=1)
        else:
            step = timedelta(microseconds=1)
            frac = match["f"]
            if len(frac) > 7:  # Python parses at most microseconds
                text = text.replace(frac, frac[:7])
        start = datetime.fromisoformat(text).astimezone(UTC)
        return TimeRange(start, start + step)
    except (ValueError, OverflowError):
        raise SearchParamError(name, f"not a valid date: {value!r}") from None


def parse_bounds(name: str, values: list[str]) -> Bounds:
    """Combine every value of a date parameter (``date=ge2024&date=lt2025``)."""
    bounds = Bounds()
    for raw in values:
        prefix, rest = (raw[:2], raw[2:]) if raw[:2] in PREFIXES else ("eq", raw)
        if prefix not in SUPPORTED_PREFIXES:
            raise SearchParamError(name, f"prefix {prefix} is not supported")
        span = parse_range(name, rest)
        match prefix:
            case "eq":
                bounds = bounds.narrow(span.start, span.end)
            case "ge":
                bounds = bounds.narrow(span.start, None)
            case "gt":
                bounds = bounds.narrow(span.end, None)
            case "lt":
                bounds = bounds.narrow(None, span.start)
            case _:  # le
                bounds = bounds.narrow(None, span.end)
    return bounds


def parse_instant(name: str, value: str) -> datetime:
    """A FHIR ``instant`` (``_since``): a full time with a zone."""
    match = _DATE.fullmatch(value)
    if match is None or match["S"] is None or match["tz"] is None:
        raise SearchParamError(name, "expected an instant such as 2024-05-03T10:00:00Z")
    return parse_range(name, value).start


def parse_ids(name: str, values: list[str]) -> list[UUID]:
    """Comma-separated logical ids; an id that is not one of ours matches nothing."""
    found: list[UUID] = []
    for value in values:
        for part in value.split(","):
            try:
                found.append(UUID(part.strip()))
            except ValueError:
                continue
    return found


def parse_reference(name: str, value: str, resource_type: str) -> UUID | None:
    """``Patient/<id>`` or ``<id>``; None when it cannot name one of ours."""
    text = value.strip()
    if "/" in text:
        kind, _, text = text.rpartition("/")
        if kind.rsplit("/", 1)[-1] != resource_type:
            raise SearchParamError(name, f"expected a {resource_type} reference")
    try:
        return UUID(text)
    except ValueError:
        return None


def parse_count(value: str | None) -> int:
    if value is None:
        return DEFAULT_COUNT
    try:
        count = int(value)
    except ValueError:
        raise SearchParamError("_count", "expected a whole number") from None
    if count < 0:
        raise SearchParamError("_count", "must not be negative")
    return min(count, MAX_COUNT)


def parse_types(name: str, value: str, allowed: tuple[str, ...]) -> list[str]:
    types = [part.strip() for part in value.split(",") if part.strip()]
    if not types:
        raise SearchParamError(name, "name at least one resource type")
    unknown = sorted(set(types) - set(allowed))
    if unknown:
        raise SearchParamError(
            name, f"unsupported resource types {unknown}; supported: {', '.join(allowed)}"
        )
    return list(dict.fromkeys(types))


def parse_token(name: str, value: str, system: str) -> list[str]:
    """Comma-separated ``[system|]code`` tokens of one system; codes of another match none."""
    codes: list[str] = []
    for part in value.split(","):
        token_system, bar, code = part.strip().rpartition("|")
        if not bar:
            code = part.strip()
        elif token_system and token_system != system:
            continue
        if not code:
            raise SearchParamError(name, "a token needs a code")
        codes.append(code)
    return codes
