"""Declared operations: the route table, request parsing and the OpenAPI source.

Every REST route is declared once with ``Api.op``: its method and path, the
policy action it needs (or ``None`` for the few public ones), and the pydantic
models of its body, query and answer. ``mount`` turns each declaration into an
aiohttp route wrapped so that, before the handler runs, the caller is
authenticated, the policy allows the action for their role, and the path,
query and body are parsed and validated. The same declarations produce the
OpenAPI document, so the document cannot drift from the routes.

A signed-in caller whom the policy refuses (403, or the 404 of ``OutOfScope``)
is reported to the app's ``REFUSALS`` sink before the refusal is answered
(``api/refusals.py`` audits it, rate-limited). The client's address is the peer,
or behind ``TRUST_FORWARDED_FOR`` proxies the X-Forwarded-For entry counted from
the right (:func:`client_address`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, ValidationError

from teleconsult.core.errors import (
    BadRequest,
    ClientError,
    ErrorCode,
    FieldError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
    UnsupportedMediaType,
)
from teleconsult.core.identity import Principal
from teleconsult.core.policy import Action, OutOfScope, ensure_allowed

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


class Authenticator(Protocol):
    async def authenticate(self, token: str) -> Principal: ...


@dataclass(frozen=True)
class Refusal:
    """A signed-in caller the policy refused: a 403, or a 404 for an object out of scope.

    ``action`` is the policy action, or for a real-time event without one its name
    (``room.join``); ``transport`` names a real-time transport (``socketio``,
    ``mqtt``), None for REST."""

    principal: Principal
    action: Action | str
    operation_id: str
    status: int
    code: str
    target_type: str | None
    target_id: str | None
    ip: str | None
    transport: str | None = None


class RefusalSink(Protocol):
    """Told of every refused authorization attempt (the audit trail, rate-limited)."""

    async def refused(self, refusal: Refusal) -> None: ...


async def tell_refusal(sink: RefusalSink, refusal: Refusal) -> None:
    """Tell ``sink``; never raises: the caller is refused either way, a lost row is logged."""
    try:
        await sink.refused(refusal)
    except Exception:
        logger.warning("could not record a refused %s", refusal.operation_id, exc_info=True)


AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
REFUSALS = web.AppKey("refusals", RefusalSink)
MAX_BODY_BYTES = web.AppKey("max_body_bytes", int)
TRUST_FORWARDED_FOR = web.AppKey("trust_forwarded_for", bool)
TRUSTED_PROXY_COUNT = web.AppKey("trusted_proxy_count", int)


def client_address(
    forwarded_for: Iterable[str], peer: str | None, *, trusted_proxies: int | None
) -> str | None:
    """The client's address: ``peer``, or with ``trusted_proxies`` (TRUST_FORWARDED_FOR)
    the ``X-Forwarded-For`` entry that many places from the right.

    Each proxy appends the address it got the request from, so the right-most
    entries are the trusted proxies' and everything to their left is whatever the
    client sent. An entry that is not an IP address, or a list shorter than the
    proxies, means the request did not come the configured way: the peer is used.
    ``forwarded_for`` is every X-Forwarded-For header, in order.
    """
    if trusted_proxies:
        entries = [part.strip() for header in forwarded_for for part in header.split(",")]
        if len(entries) >= trusted_proxies:
            try:
                return str(ipaddress.ip_address(entries[-trusted_proxies]))
            except ValueError:
                pass
    return peer


class ApiRequest:
    """What a handler gets: the parsed, validated request and who sent it."""

    def __init__(
        self,
        request: web.Request,
        principal: Principal | None,
        params: dict[str, UUID],
        query: BaseModel | None,
        body: BaseModel | None,
    ) -> None:
        self.request = request
        self._principal = principal
        self.params = params
        self._query = query
        self._body = body

    @property
    def principal(self) -> Principal:
        if self._principal is None:
            raise Unauthenticated("authentication required")
        return self._principal

    def body(self, model: type[M]) -> M:
        if not isinstance(self._body, model):
            raise TypeError(f"operation has no {model.__name__} body")
        return self._body

    def query(self, model: type[M]) -> M:
        if not isinstance(self._query, model):
            raise TypeError(f"operation has no {model.__name__} query")
        return self._query

    @property
    def ip(self) -> str | None:
        return request_ip(self.request)


Handler = Callable[[ApiRequest], Awaitable[BaseModel | web.StreamResponse | None]]


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    handler: Handler
    action: Action | None
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()
    description: str = ""
    # Other answers with a body of their own (not a problem document), e.g. readyz's 503.
    alternatives: tuple[tuple[int, type[BaseModel]], ...] = ()
    # Path parameters that are opaque strings rather than UUIDs.
    string_params: tuple[str, ...] = ()
    # A success body that is not a JSON model: its media type (the handler returns
    # a web.Response), e.g. text/calendar.
    media_type: str | None = None

    @property
    def path_params(self) -> list[str]:
        return [part[1:-1] for part in self.path.split("/") if part.startswith("{")]


@dataclass
class Api:
    """A collection of declared operations (one per module, merged at mount time)."""

    operations: list[Operation] = field(default_factory=list)

    def op(
        self,
        method: str,
        path: str,
        *,
        operation_id: str,
        summary: str,
        tag: str,
        action: Action | None,
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        status: int = 200,
        errors: tuple[int, ...] = (),
        alternatives: tuple[tuple[int, type[BaseModel]], ...] = (),
        string_params: tuple[str, ...] = (),
        media_type: str | None = None,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.operations.append(
                Operation(
                    method=method,
                    path=path,
                    operation_id=operation_id,
                    summary=summary,
                    tag=tag,
                    handler=handler,
                    action=action,
                    body=body,
                    query=query,
                    response=response,
                    status=status,
                    errors=errors,
                    alternatives=alternatives,
                    string_params=string_params,
                    media_type=media_type,
                    description=(handler.__doc__ or "").strip(),
                )
            )
            return handler

        return register


def request_ip(request: web.Request) -> str | None:
    """The client's address of ``request`` (:func:`client_address`, as the app is configured)."""
    app = request.app
    trusted = app.get(TRUSTED_PROXY_COUNT, 1) if app.get(TRUST_FORWARDED_FOR, False) else None
    return client_address(
        request.headers.getall("X-Forwarded-For", ()), request.remote, trusted_proxies=trusted
    )


def _bearer_token(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("send an access token as 'Authorization: Bearer <token>'")
    return token.strip()


def _fields(exc: ValidationError, prefix: str) -> list[FieldError]:
    found = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(part) for part in error["loc"])
        found.append(
            FieldError(field=f"{prefix}{location}" or prefix.rstrip("."), message=error["msg"])
        )
    return found


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


def _refuse_nul(document: object, prefix: str) -> None:
    """Refuse U+0000 anywhere in the input: PostgreSQL text cannot store it (400, not 500)."""
    pending: list[tuple[str, object]] = [(prefix, document)]
    while pending:  # iterative: a deeply nested body must not exhaust the stack
        where, value = pending.pop()
        if isinstance(value, str) and "\x00" in value:
            raise BadRequest(
                "text may not contain NUL characters",
                fields=[FieldError(field=where, message="contains U+0000")],
            )
        if isinstance(value, dict):
            pending.extend((f"{where}.{key}", item) for key, item in value.items())
        elif isinstance(value, list):
            pending.extend((f"{where}.{index}", item) for index, item in enumerate(value))


async def _parse_body(model: type[BaseModel], request: web.Request) -> BaseModel:
    limit = request.app.get(MAX_BODY_BYTES, 1024 * 1024)
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    if not _is_json(request.content_type):
        raise UnsupportedMediaType("send the request body as application/json")
    raw = await request.read()
    if len(raw) > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("request body is not valid JSON", code=ErrorCode.MALFORMED_JSON) from None
    _refuse_nul(document, "body")
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        raise BadRequest("request body is invalid", fields=_fields(exc, "body.")) from None


def _parse_query(model: type[BaseModel], request: web.Request) -> BaseModel:
    values = {key: request.query.getone(key) for key in request.query}
    _refuse_nul(values, "query")
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise BadRequest("query parameters are invalid", fields=_fields(exc, "query.")) from None


def _wrap(op: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        # Who is asking comes first: an anonymous caller learns nothing, not even
        # whether an id is well formed.
        if op.action is None:
            return await _answer(op, request, None)
        principal = await request.app[AUTHENTICATOR].authenticate(_bearer_token(request))
        try:
            ensure_allowed(principal, op.action)
            return await _answer(op, request, principal)
        except (Forbidden, OutOfScope) as exc:
            await _note_refusal(op, request, principal, op.action, exc)
            raise

    handle.__name__ = op.operation_id
    return handle


async def _answer(
    op: Operation, request: web.Request, principal: Principal | None
) -> web.StreamResponse:
    params: dict[str, UUID] = {}
    for name in op.path_params:
        if name in op.string_params:
            continue
        try:
            params[name] = UUID(request.match_info[name])
        except ValueError:
            raise NotFound(f"{name} is not a known id") from None
    query = _parse_query(op.query, request) if op.query is not None else None
    body = await _parse_body(op.body, request) if op.body is not None else None
    result = await op.handler(ApiRequest(request, principal, params, query, body))
    if result is None:
        return web.Response(status=204)
    if isinstance(result, web.StreamResponse):
        return result
    return web.Response(
        status=op.status, body=result.model_dump_json(), content_type="application/json"
    )


async def _note_refusal(
    op: Operation, request: web.Request, principal: Principal, action: Action, exc: ClientError
) -> None:
    """Tell the refusal sink, in its own transaction: there is no change to tie it to."""
    sink = request.app.get(REFUSALS)
    if sink is None:
        return
    target_type = target_id = None
    for name in op.path_params:  # the innermost object the path names
        target_type, target_id = name.removesuffix("_id"), request.match_info.get(name)
    refusal = Refusal(
        principal=principal,
        action=action,
        operation_id=op.operation_id,
        status=exc.status,
        code=str(exc.code),
        target_type=target_type,
        target_id=None if target_id is None else target_id[:200],
        ip=request_ip(request),
    )
    await tell_refusal(sink, refusal)


def mount(app: web.Application, operations: list[Operation]) -> None:
    ids = [op.operation_id for op in operations]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise ValueError(f"duplicate operation ids: {sorted(duplicates)}")
    for op in operations:
        app.router.add_route(op.method, op.path, _wrap(op), name=op.operation_id)
