"""Declared operations: the route table, request parsing and the OpenAPI source.

Every REST route is declared once with ``Api.op``: its method and path, the
policy action it needs (or ``None`` for the few public ones), and the pydantic
models of its body, query and answer. ``mount`` turns each declaration into an
aiohttp route wrapped so that, before the handler runs, the caller is
authenticated, the policy allows the action for their role, and the path,
query and body are parsed and validated. The same declarations produce the
OpenAPI document, so the document cannot drift from the routes.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, ValidationError

from teleconsult.core.errors import (
    BadRequest,
    ErrorCode,
    FieldError,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
    UnsupportedMediaType,
)
from teleconsult.core.identity import Principal
from teleconsult.core.policy import Action, ensure_allowed

M = TypeVar("M", bound=BaseModel)


class Authenticator(Protocol):
    async def authenticate(self, token: str) -> Principal: ...


AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
MAX_BODY_BYTES = web.AppKey("max_body_bytes", int)
TRUST_FORWARDED_FOR = web.AppKey("trust_forwarded_for", bool)


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
        if self.request.app.get(TRUST_FORWARDED_FOR, False):
            forwarded = self.request.headers.get("X-Forwarded-For", "")
            first = forwarded.split(",")[0].strip()
            if first:
                return first[:64]
        return self.request.remote


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
        principal: Principal | None = None
        if op.action is not None:
            principal = await request.app[AUTHENTICATOR].authenticate(_bearer_token(request))
            ensure_allowed(principal, op.action)
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

    handle.__name__ = op.operation_id
    return handle


def mount(app: web.Application, operations: list[Operation]) -> None:
    ids = [op.operation_id for op in operations]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise ValueError(f"duplicate operation ids: {sorted(duplicates)}")
    for op in operations:
        app.router.add_route(op.method, op.path, _wrap(op), name=op.operation_id)
