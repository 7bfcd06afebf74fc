"""Bulk Data ``$export`` over HTTP (HL7 Bulk Data Access IG v2; transport only).

* kick-off: ``GET /fhir/R4/$export``, ``/fhir/R4/Patient/$export``,
  ``/fhir/R4/Group/{id}/$export`` with ``Prefer: respond-async`` and
  ``Accept: application/fhir+json`` → 202, ``Content-Location: <status url>``;
* status: ``GET <status url>`` → 202 with ``X-Progress`` and ``Retry-After`` while
  it runs (429 when polled sooner than Retry-After), then 200 with the manifest;
* ``DELETE <status url>`` → 202: cancelled, files removed;
* files: ``GET`` the manifest's ``url``s with the same access token
  (``requiresAccessToken: true``), served as ``application/fhir+ndjson``.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from teleconsult.api.registry import Api, ApiRequest
from teleconsult.core.errors import BadRequest, NotFound
from teleconsult.core.policy import Action
from teleconsult.fhir import params as p
from teleconsult.fhir.export import EXPORT_TYPES, ExportService, ExportWorker, JobStatus
from teleconsult.fhir.search_routes import base_url
from teleconsult.fhir.views import CONTENT_TYPE, instant

api = Api()
EXPORTS = web.AppKey("fhir_exports", ExportService)
# The in-process worker, when the server runs one (FHIR_EXPORT_IN_SERVER).
EXPORT_WORKER = web.AppKey("fhir_export_worker", ExportWorker)
NDJSON = "application/fhir+ndjson"
UNSUPPORTED = ("_typeFilter", "_elements", "patient", "includeAssociatedData")


class ExportQuery(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    output_format: str | None = Field(
        default=None, alias="_outputFormat", description="application/fhir+ndjson"
    )
    since: str | None = Field(default=None, alias="_since", description="an instant")
    type_: str | None = Field(default=None, alias="_type", description="Comma-separated types")


async def _kick_off(req: ApiRequest, level: str, group_id: UUID | None) -> web.Response:
    request = req.request
    if "respond-async" not in request.headers.get("Prefer", ""):
        raise BadRequest("a Bulk Data kick-off needs the header 'Prefer: respond-async'")
    accept = request.headers.get("Accept", "")
    if "application/fhir+json" not in accept:
        raise BadRequest("a Bulk Data kick-off needs the header 'Accept: application/fhir+json'")
    q = request.query
    for name in UNSUPPORTED:
        if name in q:
            raise BadRequest(f"the export parameter {name} is not supported")
    since = p.parse_instant("_since", q["_since"]) if "_since" in q else None
    types = p.parse_types("_type", q["_type"], EXPORT_TYPES) if "_type" in q else None
    job = await request.app[EXPORTS].kick_off(
        req.principal,
        level=level,
        group_id=group_id,
        types=types,
        since=since,
        output_format=q.get("_outputFormat"),
        request_url=str(request.url),
        ip=req.ip,
    )
    worker = request.app.get(EXPORT_WORKER)
    if worker is not None:
        worker.wake()
    status_url = f"{base_url(req)}/$export-status/{job.id}"
    return web.Response(status=202, headers={"Content-Location": status_url})


@api.op(
    "GET",
    "/fhir/R4/$export",
    operation_id="fhirExportSystem",
    summary="Bulk Data kick-off: the clinic's resources the caller may read",
    tag="fhir",
    action=Action.FHIR_EXPORT,
    query=ExportQuery,
    status=202,
    errors=(429,),
)
async def export_system(req: ApiRequest) -> web.Response:
    """Needs ``Prefer: respond-async`` and ``Accept: application/fhir+json``; answers 202
    with ``Content-Location`` (the status URL)."""
    return await _kick_off(req, "system", None)


@api.op(
    "GET",
    "/fhir/R4/Patient/$export",
    operation_id="fhirExportPatients",
    summary="Bulk Data kick-off: every patient's compartment the caller may read",
    tag="fhir",
    action=Action.FHIR_EXPORT,
    query=ExportQuery,
    status=202,
    errors=(429,),
)
async def export_patients(req: ApiRequest) -> web.Response:
    """As the system kick-off, limited to Patient, Appointment and Encounter."""
    return await _kick_off(req, "patient", None)


@api.op(
    "GET",
    "/fhir/R4/Group/{group_id}/$export",
    operation_id="fhirExportGroup",
    summary="Bulk Data kick-off: a group's patients (the clinic, or a doctor's panel)",
    tag="fhir",
    action=Action.FHIR_EXPORT,
    query=ExportQuery,
    status=202,
    errors=(404, 429),
)
async def export_group(req: ApiRequest) -> web.Response:
    """Group ``<clinic id>``: every patient of the clinic (admins). Group ``<doctor id>``:
    that doctor's patient panel (the doctor, or an admin)."""
    return await _kick_off(req, "group", req.params["group_id"])


def manifest(status: JobStatus, base: str) -> dict[str, Any]:
    job = status.job
    files = f"{base}/$export-file/{job.id}"
    output = [
        {"type": f.resource_type, "url": f"{files}/{f.file_name}", "count": f.count}
        for f in status.files
        if f.kind == "output"
    ]
    errors = [
        {"type": "OperationOutcome", "url": f"{files}/{f.file_name}", "count": f.count}
        for f in status.files
        if f.kind == "error"
    ]
    return {
        "transactionTime": instant(job.transaction_time),
        "request": job.request_url,
        "requiresAccessToken": True,
        "output": output,
        "error": errors,
    }


@api.op(
    "GET",
    "/fhir/R4/$export-status/{job_id}",
    operation_id="fhirExportStatus",
    summary="Bulk Data status: 202 while running (X-Progress), 200 with the manifest",
    tag="fhir",
    action=Action.FHIR_EXPORT,
    media_type="application/json",
    errors=(202, 429),  # 202: in progress (an informational OperationOutcome)
)
async def export_status(req: ApiRequest) -> web.Response:
    """202 with ``X-Progress`` and ``Retry-After`` while the job runs; 429 when polled
    sooner than Retry-After; 200 with the manifest once it is done."""
    exports = req.request.app[EXPORTS]
    status = await exports.status(req.principal, req.params["job_id"])
    if status.job.status in ("queued", "running"):
        return web.Response(
            status=202,
            body=json.dumps(_informational(status.progress)).encode(),
            content_type=CONTENT_TYPE,
            headers={
                "X-Progress": status.progress,
                "Retry-After": str(exports.settings.retry_after),
            },
        )
    body = json.dumps(manifest(status, base_url(req))).encode()
    return web.Response(body=body, content_type="application/json")


@api.op(
    "DELETE",
    "/fhir/R4/$export-status/{job_id}",
    operation_id="fhirExportCancel",
    summary="Bulk Data cancel: stop the job (or delete a finished one) and remove its files",
    tag="fhir",
    action=Action.FHIR_EXPORT,
    status=202,
    media_type=CONTENT_TYPE,
)
async def export_cancel(req: ApiRequest) -> web.Response:
    """202 with an informational OperationOutcome; the status URL then answers 404."""
    await req.request.app[EXPORTS].cancel(req.principal, req.params["job_id"], ip=req.ip)
    body = json.dumps(_informational("cancelled")).encode()
    return web.Response(status=202, body=body, content_type=CONTENT_TYPE)


def _informational(text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "information", "code": "informational", "diagnostics": text}],
    }


@api.op(
    "GET",
    "/fhir/R4/$export-file/{job_id}/{file_name}",
    operation_id="fhirExportFile",
    summary="Bulk Data output file (NDJSON), with the requester's access token",
    tag="fhir",
    action=Action.FHIR_EXPORT,
    string_params=("file_name",),
    media_type=NDJSON,
)
async def export_file(req: ApiRequest) -> web.StreamResponse:
    """One NDJSON file of the caller's finished export, streamed from disk."""
    name = req.request.match_info["file_name"]
    if not name.endswith(".ndjson") or "/" in name or name.startswith("."):
        raise NotFound("no such file in this export")
    path = await req.request.app[EXPORTS].file(req.principal, req.params["job_id"], name, ip=req.ip)
    return web.FileResponse(path, headers={"Content-Type": NDJSON})
