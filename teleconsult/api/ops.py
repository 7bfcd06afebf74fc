"""Operations endpoints: liveness, readiness, metrics, the OpenAPI document."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from teleconsult.api.models import Health, Readiness
from teleconsult.api.registry import Api, ApiRequest

Probe = Callable[[], Awaitable[bool]]
PROBES = web.AppKey("readiness_probes", dict[str, Probe])
OPENAPI = web.AppKey("openapi_document", dict[str, Any])

api = Api()


@api.op(
    "GET",
    "/healthz",
    operation_id="healthz",
    summary="The process is alive",
    tag="ops",
    action=None,
    response=Health,
)
async def healthz(req: ApiRequest) -> Health:
    return Health(status="ok")


@api.op(
    "GET",
    "/readyz",
    operation_id="readyz",
    summary="Database, bus and broker are reachable",
    tag="ops",
    action=None,
    response=Readiness,
    alternatives=((503, Readiness),),
)
async def readyz(req: ApiRequest) -> Readiness | web.Response:
    """Answers 503 with the same body when any check fails."""
    probes = req.request.app[PROBES]
    checks = {name: await probe() for name, probe in probes.items()}
    ready = all(checks.values())
    result = Readiness(status="ready" if ready else "not_ready", checks=checks)
    if not ready:
        return web.Response(
            status=503, body=result.model_dump_json(), content_type="application/json"
        )
    return result


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])
