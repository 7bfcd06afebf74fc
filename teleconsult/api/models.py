"""Shared request/response building blocks for the REST API (pydantic v2).

Request bodies are validated in strict mode from JSON, so a wrong type is an
error rather than silently coerced. Models forbid unknown fields.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

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
