"""FHIR errors are ``OperationOutcome`` resources (transport: an aiohttp middleware).

Every error under ``/fhir/`` is first rendered as a problem document by the one
error renderer (``api/problems.py``); this middleware, placed just outside it,
turns that document into an R4 ``OperationOutcome`` served as
``application/fhir+json`` with the same status and headers (``Retry-After``,
``Allow``). The issue carries the HTTP meaning as an R4 issue-type code and the
problem's stable machine code as ``details.coding`` in the system
:data:`PROBLEM_SYSTEM`, so clients and tests can tell ``not_found`` from
``forbidden`` without parsing text.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from teleconsult.api.problems import PROBLEM_CONTENT_TYPE
from teleconsult.fhir.views import CONTENT_TYPE

FHIR_PREFIX = "/fhir/"
PROBLEM_SYSTEM = "https://teleconsult.dev/problems"

# HTTP status -> R4 issue-type code (http://hl7.org/fhir/R4/valueset-issue-type.html)
ISSUE_CODES: dict[int, str] = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    409: "conflict",
    410: "deleted",
    412: "conflict",
    413: "too-long",
    415: "not-supported",
    422: "business-rule",
    429: "throttled",
    500: "exception",
    503: "transient",
}
_KEPT_HEADERS = ("Retry-After", "Allow", "WWW-Authenticate", "X-Request-ID")


def outcome_from_problem(status: int, problem: dict[str, Any]) -> dict[str, Any]:
    """The OperationOutcome that says what ``problem`` (an RFC 9457 document) says."""
    diagnostics = str(problem.get("detail") or problem.get("title") or "error")
    fields = problem.get("errors")
    if isinstance(fields, list) and fields:
        named = "; ".join(
            f"{f.get('field')}: {f.get('message')}" for f in fields if isinstance(f, dict)
        )
        diagnostics = f"{diagnostics} ({named})"
    issue: dict[str, Any] = {
        "severity": "fatal" if status >= 500 else "error",
        "code": ISSUE_CODES.get(status, "processing" if status < 500 else "exception"),
    }
    code = problem.get("code")
    if isinstance(code, str) and code:
        issue["details"] = {
            "coding": [{"system": PROBLEM_SYSTEM, "code": code}],
            "text": str(problem.get("title") or code),
        }
    issue["diagnostics"] = diagnostics[:2000]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def fhir_outcome_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Under /fhir/, answer problem documents as OperationOutcomes (same status)."""
    response = await handler(request)
    if not request.path.startswith(FHIR_PREFIX) or not isinstance(response, web.Response):
        return response
    if response.content_type != PROBLEM_CONTENT_TYPE or response.text is None:
        return response
    try:
        problem = json.loads(response.text)
    except ValueError:
        problem = {}
    if not isinstance(problem, dict):
        problem = {}
    headers = {k: response.headers[k] for k in _KEPT_HEADERS if k in response.headers}
    return web.Response(
        status=response.status,
        text=json.dumps(outcome_from_problem(response.status, problem)),
        content_type=CONTENT_TYPE,
        headers=headers,
    )
