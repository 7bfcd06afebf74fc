"""Rendering errors as RFC 9457 ``application/problem+json``, in one place."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from teleconsult.core.errors import ClientError, ErrorCode
from teleconsult.core.outages import OUTAGES, RETRY_AFTER_SECONDS, is_outage

logger = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
_TYPE_BASE = "https://teleconsult.dev/problems/"

_HTTP_CODES: dict[int, ErrorCode] = {
    400: ErrorCode.VALIDATION_FAILED,
    401: ErrorCode.UNAUTHENTICATED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    409: ErrorCode.CONFLICT,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    429: ErrorCode.RATE_LIMITED,
    503: ErrorCode.UNAVAILABLE,
}


def problem_response(
    *,
    status: int,
    code: ErrorCode,
    title: str,
    detail: str,
    fields: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body: dict[str, object] = {
        "type": _TYPE_BASE + code.value,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code.value,
    }
    if fields:
        body["errors"] = fields
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def from_client_error(exc: ClientError) -> web.Response:
    return problem_response(
        status=exc.status,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        fields=[{"field": f.field, "message": f.message} for f in exc.fields],
        headers=exc.headers,
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into problem+json; never let an exception become a bare 500."""
    try:
        return await handler(request)
    except ClientError as exc:
        return from_client_error(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, ErrorCode.VALIDATION_FAILED)
        detail = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        if exc.status == 413:
            detail = "request body too large"
        return problem_response(
            status=exc.status, code=code, title=exc.reason, detail=detail, headers=headers
        )
    except Exception as exc:
        if is_outage(exc):
            OUTAGES.down(exc)
            return problem_response(
                status=503,
                code=ErrorCode.UNAVAILABLE,
                title="Service unavailable",
                detail="the service is briefly unavailable; try again shortly",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        logger.exception("unhandled error on %s %s", request.method, _route_of(request))
        return problem_response(
            status=500,
            code=ErrorCode.INTERNAL,
            title="Internal server error",
            detail="the server failed to handle this request; it has been logged",
        )


def _route_of(request: web.Request) -> str:
    route = request.match_info.route
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "unmatched"
