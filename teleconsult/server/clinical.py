"""Records, FHIR and payments in the composition root.

Each function is a cleanup context that ``create_app`` appends in order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import aiohttp
from aiohttp import web

from teleconsult.fhir import export_routes as fhir_export_routes
from teleconsult.fhir import search_routes as fhir_search_routes
from teleconsult.fhir.export import ExportService, ExportWorker
from teleconsult.fhir.service import FhirService
from teleconsult.payments import routes as payments_routes
from teleconsult.payments.idempotency import IdempotencyKeys
from teleconsult.payments.providers import build_providers
from teleconsult.payments.reconcile import Reconciler
from teleconsult.payments.service import PaymentService
from teleconsult.recording.blobs import open_blob_store
from teleconsult.recording.keys import KeyRing
from teleconsult.records import http as records_http
from teleconsult.records.documents.routes import DOCUMENTS
from teleconsult.records.documents.sweeper import UploadSweeper
from teleconsult.server.keys import AUDIT, POOL, SETTINGS


# --- records (issue 14, part R) ---
async def record_documents_context(app: web.Application) -> AsyncIterator[None]:
    """Patient documents, sealed in a blob store of the recordings' kind and keys."""
    settings = app[SETTINGS].recording
    blobs = open_blob_store(settings)
    records_http.install_documents(app, blobs, KeyRing.of(settings.keys))
    # Expired uploads' chunks are swept (issue 14, part RG), at the recordings' period.
    sweeper = UploadSweeper(app[DOCUMENTS], period=settings.sweep_seconds)
    sweeper.start()
    try:
        yield
    finally:
        await sweeper.stop()
        await blobs.close()


# --- end records ---


# --- fhir (issue 14, part F) ---
async def fhir_context(app: web.Application) -> AsyncIterator[None]:
    """FHIR reads and Bulk Data exports; the export worker runs here unless turned off."""
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
    worker = None
    if settings.fhir.run_in_server:
        worker = ExportWorker(
            pool=app[POOL],
            audit=app[AUDIT],
            tables=fhir.tables,
            settings=settings.fhir,
            crypt=crypt,
        )
        app[fhir_export_routes.EXPORT_WORKER] = worker
        await worker.start()
    try:
        yield
    finally:
        if worker is not None:
            await worker.close()


# --- end fhir ---


# --- payments (issue 15) ---
async def payments_context(app: web.Application) -> AsyncIterator[None]:
    """The payment service, its providers' HTTP session, idempotency keys, and this
    process's reconciler (several processes share the pending payments by lease)."""
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
    reconciler = Reconciler(app[POOL], service, settings, keys=keys)
    if settings.reconcile_in_server:
        reconciler.start()
    try:
        yield
    finally:
        await reconciler.stop()
        await session.close()


# --- end payments ---
