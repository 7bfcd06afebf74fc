"""The records domain's HTTP surface in one place: its operations, and the services
its handlers read (the composition root calls :func:`install`)."""

from __future__ import annotations

from aiohttp import web

from teleconsult.api.registry import Operation
from teleconsult.recording.keys import KeyRing
from teleconsult.recording.storage import BlobStore
from teleconsult.records import routes as patients_routes
from teleconsult.records.base import RecordsDeps
from teleconsult.records.careplans import routes as careplans_routes
from teleconsult.records.careplans.service import CarePlanService
from teleconsult.records.consents import routes as consents_routes
from teleconsult.records.consents.service import ConsentService
from teleconsult.records.documents import routes as documents_routes
from teleconsult.records.documents.service import DocumentService
from teleconsult.records.households import routes as households_routes
from teleconsult.records.households.service import HouseholdService
from teleconsult.records.notes import routes as notes_routes
from teleconsult.records.notes.service import NotesService
from teleconsult.records.prescriptions import routes as prescriptions_routes
from teleconsult.records.prescriptions.service import PrescriptionService
from teleconsult.records.profiles import routes as profiles_routes
from teleconsult.records.profiles.service import ProfileService
from teleconsult.records.service import PatientService
from teleconsult.records.sync import routes as sync_routes
from teleconsult.records.sync.service import SyncService
from teleconsult.records.vitals import routes as vitals_routes
from teleconsult.records.vitals.service import VitalsService


def operations() -> list[Operation]:
    return [
        *patients_routes.api.operations,
        *notes_routes.api.operations,
        *profiles_routes.api.operations,
        *consents_routes.api.operations,
        *households_routes.api.operations,
        *vitals_routes.api.operations,
        *prescriptions_routes.api.operations,
        *careplans_routes.api.operations,
        *sync_routes.api.operations,
        *documents_routes.api.operations,
    ]


RECORDS_DEPS = web.AppKey("records_deps", RecordsDeps)


def install(app: web.Application, deps: RecordsDeps) -> None:
    app[RECORDS_DEPS] = deps
    app[patients_routes.PATIENTS] = PatientService(pool=deps.pool, audit=deps.audit)
    app[notes_routes.NOTES] = NotesService(deps)
    app[profiles_routes.PROFILES] = ProfileService(deps)
    app[consents_routes.CONSENTS] = ConsentService(deps)
    app[households_routes.HOUSEHOLDS] = HouseholdService(deps)
    app[vitals_routes.VITALS] = VitalsService(deps)
    app[prescriptions_routes.PRESCRIPTIONS] = PrescriptionService(deps)
    app[careplans_routes.CARE_PLANS] = CarePlanService(deps)
    app[sync_routes.SYNC] = SyncService(deps)


def install_documents(app: web.Application, blobs: BlobStore, keys: KeyRing) -> None:
    """Documents live in the recordings' sealed blob store (its own cleanup context)."""
    app[documents_routes.DOCUMENTS] = DocumentService(app[RECORDS_DEPS], blobs=blobs, keys=keys)
