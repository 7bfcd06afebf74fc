"""Shared request/response building blocks for the REST API (pydantic v2).

Request bodies are validated in strict mode from JSON, so a wrong type is an
error rather than silently coerced. Models forbid unknown fields.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

Email = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
    ),
]
Password = Annotated[str, StringConstraints(min_length=10, max_length=256)]
Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=r"\S")
]
Phone = Annotated[str, StringConstraints(pattern=r"^\+?[0-9 ()-]{5,32}$")]
Limit = Annotated[int, Field(ge=1, le=200)]
# The largest value of a PostgreSQL integer column; bound every such input by it.
INT4_MAX = 2**31 - 1

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_ISO_TIME = re.compile(r"\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?")
_ISO_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}.*")
# Far enough from datetime's limits (years 1 and 9999) that a time zone's offset,
# a day's margin or an appointment's length cannot overflow (a 500, not a 400).
_EARLIEST = date(2, 1, 1)
_LATEST = date(9998, 12, 31)


def _iso(pattern: re.Pattern[str], parse: Any, example: str) -> Any:
    """Accept only ISO 8601 text, parsed here; pydantic alone would read "0" as 1970."""

    def check(value: object) -> object:
        if isinstance(value, str):
            if not pattern.fullmatch(value):
                raise ValueError(f"expected ISO 8601 like {example}")
            try:
                parsed = parse(value)
            except ValueError:
                raise ValueError(f"expected ISO 8601 like {example}") from None
            day = parsed.date() if isinstance(parsed, datetime) else parsed
            if isinstance(day, date) and not _EARLIEST <= day <= _LATEST:
                raise ValueError("dates must lie between the years 2 and 9998")
            return parsed
        if isinstance(value, int | float):
            raise ValueError(f"expected an ISO 8601 string like {example}")
        return value

    return BeforeValidator(check)


IsoDate = Annotated[date, _iso(_ISO_DATE, date.fromisoformat, "2026-03-29")]
# A wall-clock time without a zone: JSON Schema's "time" format would demand an offset.
IsoTime = Annotated[
    time,
    _iso(_ISO_TIME, time.fromisoformat, "09:30"),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?$",
            "examples": ["09:30"],
        }
    ),
]
IsoDateTime = Annotated[
    AwareDatetime, _iso(_ISO_DATETIME, datetime.fromisoformat, "2026-03-29T09:30:00Z")
]
Cursor = Annotated[str, StringConstraints(min_length=1, max_length=512)]


class Body(BaseModel):
    """Base of request bodies: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


def _strip_null(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    nullable: set[str] = getattr(cls, "nullable_fields", set())
    for name, prop in schema.get("properties", {}).items():
        if name in nullable or "anyOf" not in prop:
            continue
        variants = [v for v in prop["anyOf"] if v != {"type": "null"}]
        if len(variants) == 1:
            prop.pop("anyOf")
            prop.pop("default", None)
            prop.update(variants[0])


class Patch(Body):
    """Base of partial updates: only the fields sent are changed.

    Fields are declared ``X | None = None`` so they may be left out; sending an
    explicit null is refused unless the field is in ``nullable_fields`` (where
    null clears the value).
    """

    nullable_fields: ClassVar[set[str]] = set()
    model_config = ConfigDict(extra="forbid", json_schema_extra=_strip_null)

    @model_validator(mode="after")
    def _no_null(self) -> Patch:
        for name in self.model_fields_set:
            if name not in self.nullable_fields and getattr(self, name) is None:
                raise ValueError(f"{name} may not be null")
        return self

    def changes(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.model_fields_set}


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[FieldProblem] | None = None


class FieldProblem(BaseModel):
    field: str
    message: str


class PageQuery(BaseModel):
    cursor: Cursor | None = None
    limit: Limit = 50


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, bool]


Problem.model_rebuild()
