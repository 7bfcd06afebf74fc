"""Acks and strict payloads shared by every real-time namespace and the MQTT bridge.

A request's ack is ``{"ok": true, ...}`` or ``{"ok": false, "error": {code, status,
detail, fields?, retry_after?}}``: the same codes as REST's problem documents
(docs/protocol.md, "Real-time events").
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar
from uuid import UUID

from pydantic import ConfigDict, Strict, ValidationError

from teleconsult.api.models import Body
from teleconsult.core.errors import BadRequest, ClientError, ErrorCode, FieldError

M = TypeVar("M", bound="Event")
# Payloads are checked strictly (no "1" for 1), except that ids arrive as text.
Id = Annotated[UUID, Strict(False)]


class Event(Body):
    model_config = ConfigDict(extra="forbid", strict=True)


def parse(model: type[M], data: object) -> M:
    """Validate an event's payload strictly; a refusal names the fields."""
    if not isinstance(data, dict):
        raise BadRequest(
            "the event payload must be an object", fields=[FieldError("data", "not an object")]
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fields = [
            FieldError(
                "data." + ".".join(str(part) for part in err["loc"]) if err["loc"] else "data",
                err["msg"],
            )
            for err in exc.errors(include_url=False)
        ]
        raise BadRequest("the event payload is invalid", fields=fields) from None


def ok(**result: Any) -> dict[str, Any]:
    return {"ok": True, **result}


def error_ack(exc: ClientError) -> dict[str, Any]:
    error: dict[str, Any] = {"code": str(exc.code), "status": exc.status, "detail": exc.detail}
    if exc.fields:
        error["fields"] = [{"field": f.field, "message": f.message} for f in exc.fields]
    retry = exc.headers.get("Retry-After")
    if retry is not None:
        error["retry_after"] = int(retry)
    return {"ok": False, "error": error}


def internal_error_ack() -> dict[str, Any]:
    return {
        "ok": False,
        "error": {
            "code": str(ErrorCode.INTERNAL),
            "status": 500,
            "detail": "the server failed; send again with the same client message id",
        },
    }
