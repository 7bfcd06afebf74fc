"""Records, FHIR and payments in the composition root.

Each function is a cleanup context that ``create_app`` appends in order. Their
background jobs (upload sweeper, export worker, reconciler) start in ``jobs.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import aiohttp
from aiohttp import web

from teleconsult.fhir import export_routes as fhir_export_routes
from teleconsult.fhir import search_routes as fhir_search_routes
from teleconsult.fhir.export import ExportService
from teleconsult.fhir.service import FhirService
from teleconsult.payments import routes as payments_routes
from teleconsult.payments.idempotency import IdempotencyKeys
from teleconsult.payments.providers import build_providers
from teleconsult.payments.service import PaymentService
from teleconsult.recording.blobs import open_blob_store
from teleconsult.recording.keys import KeyRing
from teleconsult.records import http as records_http
from teleconsult.server.keys import AUDIT, POOL, SETTINGS


# --- records (issue 14, part R) ---
async def record_documents_context(app: web.Application) -> AsyncIterator[None]:
    """Patient documents, sealed in a blob store of the recordings' kind and keys."""
    settings = app[SETTINGS].recording
    blobs = open_blob_store(settings)
    records_http.install_documents(app, blobs, KeyRing.of(settings.keys))
    try:
        yield
    finally:
        await blobs.close()


# --- end records ---


# --- fhir (issue 14, part F) ---
async def fhir_context(app: web.Application) -> AsyncIterator[None]:
    """FHIR reads and Bulk Data exports (their worker is a job: ``jobs.py``)."""
    settings = app[SETTINGS]
    # Records and invoices (issues 14 and 15, E2): the encrypted records' views decrypt
    # with the records' field keys.
    crypt = app[records_http.RECORDS_DEPS].crypt
    fhir = FhirService(
        pool=app[POOL], audit=app[AUDIT], base_url=f"{settings.public_url}/fhir/R4", crypt=crypt
    )
    app[fhir_search_routes.FHIR] = fhir
    app[fhir_export_routes.EXPORTS] = ExportService(
        pool=app[POOL], audit=app[AUDIT], settings=settings.fhir
    )
    yield


# --- end fhir ---


# --- payments (issue 15) ---
async def payments_context(app: web.Application) -> AsyncIterator[None]:
    """The payment service, its providers' HTTP session and idempotency keys (the
    reconciler is a job: ``jobs.py``)."""
    settings = app[SETTINGS].payments
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=settings.request_timeout))
    service = PaymentService(
        pool=app[POOL],
        audit=app[AUDIT],
        providers=build_providers(settings, session),
        settings=settings,
    )
    keys = IdempotencyKeys(
        app[POOL],
        ttl=timedelta(hours=settings.idempotency_ttl_hours),
        # A request holds its key at most this long: token and call, each bounded.
        lease=3 * settings.request_timeout + 5,
    )
    app[payments_routes.PAYMENTS] = service
    app[payments_routes.IDEMPOTENCY] = keys
    try:
        yield
    finally:
        await session.close()


# --- end payments ---
