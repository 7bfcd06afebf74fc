"""Acks and strict payloads shared by every real-time namespace and the MQTT bridge.

A request's ack is ``{"ok": true, ...}`` or ``{"ok": false, "error": {code, status,
detail, fields?, retry_after?}}``: the same codes as REST's problem documents
(docs/protocol.md, "Real-time events").
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, TypeVar
from uuid import UUID

from pydantic import ConfigDict, Strict, ValidationError

from teleconsult.api.models import Body
from teleconsult.core.errors import BadRequest, ClientError, ErrorCode, FieldError
from teleconsult.core.outages import OUTAGES, RETRY_AFTER_SECONDS, is_outage

logger = logging.getLogger(__name__)

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


def unavailable_error() -> dict[str, Any]:
    """The ``error`` of an ack or a connect refusal while a dependency is down."""
    return {
        "code": str(ErrorCode.UNAVAILABLE),
        "status": 503,
        "detail": "the service is briefly unavailable; try again shortly",
        "retry_after": RETRY_AFTER_SECONDS,
    }


def failure_ack(exc: BaseException) -> dict[str, Any]:
    """The ack of a request that raised ``exc`` unexpectedly: ``unavailable`` when a
    dependency is down (repeat it; a send with the same client message id), else
    ``internal_error``."""
    if is_outage(exc):
        return {"ok": False, "error": unavailable_error()}
    return internal_error_ack()


def failure(exc: BaseException, what: str) -> dict[str, Any]:
    """The ack of ``what`` (e.g. ``chat event send``), which raised ``exc`` unexpectedly.

    A dependency that is down is noted once in the outage log (no traceback per
    request); anything else is logged with its traceback.
    """
    if is_outage(exc):
        OUTAGES.down(exc)
    else:
        logger.error("%s failed", what, exc_info=exc)
    return failure_ack(exc)
