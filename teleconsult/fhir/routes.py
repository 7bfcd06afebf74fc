"""FHIR R4 read views of scheduling: Appointment, Schedule and Slot (``/fhir/R4/...``).

The same services and the same authorization as the REST API; these only change
the shape of the answer. Errors are OperationOutcomes (``outcome.py``, issue 14).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel

from teleconsult.api.models import IsoDateTime
from teleconsult.api.registry import Api, ApiRequest
from teleconsult.core.policy import Action
from teleconsult.fhir import views as fhir
from teleconsult.scheduling.records import ServiceKind
from teleconsult.scheduling.routes import CALENDARS, PUBLIC_URL, SCHEDULING

api = Api()
DEFAULT_PAST = timedelta(days=30)
DEFAULT_FUTURE = timedelta(days=90)


def _fhir(resource: dict[str, Any]) -> web.Response:
    return web.Response(body=json.dumps(resource).encode(), content_type=fhir.CONTENT_TYPE)


def _base(req: ApiRequest) -> str:
    return f"{req.request.app[PUBLIC_URL]}/fhir/R4"


class AppointmentSearch(BaseModel):
    patient: UUID | None = None
    practitioner: UUID | None = None
    start: IsoDateTime | None = None
    end: IsoDateTime | None = None


class SlotSearch(BaseModel):
    schedule: UUID
    start: IsoDateTime
    end: IsoDateTime
    service: ServiceKind = ServiceKind.VIDEO


@api.op(
    "GET",
    "/fhir/R4/Appointment/{appointment_id}",
    operation_id="fhirReadAppointment",
    summary="FHIR R4 Appointment",
    tag="fhir",
    action=Action.APPOINTMENT_READ,
    media_type=fhir.CONTENT_TYPE,
)
async def read_appointment(req: ApiRequest) -> web.Response:
    booked = await req.request.app[SCHEDULING].get(
        req.principal, req.params["appointment_id"], ip=req.ip
    )
    return _fhir(fhir.appointment_resource(booked.appointment, base_url=_base(req)))


@api.op(
    "GET",
    "/fhir/R4/Appointment",
    operation_id="fhirSearchAppointments",
    summary="FHIR R4 Appointment search (patient, practitioner, start/end window)",
    tag="fhir",
    action=Action.APPOINTMENT_READ,
    query=AppointmentSearch,
    media_type=fhir.CONTENT_TYPE,
)
async def search_appointments(req: ApiRequest) -> web.Response:
    """A searchset Bundle of the appointments the caller may see; the window defaults
    to the last 30 and the next 90 days."""
    query = req.query(AppointmentSearch)
    now = datetime.now(UTC)
    found = await req.request.app[SCHEDULING].list_visible(
        req.principal,
        start=query.start or now - DEFAULT_PAST,
        end=query.end or now + DEFAULT_FUTURE,
        doctor_id=query.practitioner,
        patient_id=query.patient,
        statuses=None,
        after=None,
        limit=500,
        ip=req.ip,
    )
    base = _base(req)
    resources = [fhir.appointment_resource(a, base_url=base) for a in found]
    return _fhir(
        fhir.bundle(
            resources,
            base_url=base,
            self_link=f"{base}/Appointment?{req.request.query_string}",
            next_link=None,
            total=len(resources),
        )
    )


@api.op(
    "GET",
    "/fhir/R4/Schedule/{doctor_id}",
    operation_id="fhirReadSchedule",
    summary="FHIR R4 Schedule of a doctor",
    tag="fhir",
    action=Action.DOCTOR_READ,
    media_type=fhir.CONTENT_TYPE,
)
async def read_schedule(req: ApiRequest) -> web.Response:
    doctor = await req.request.app[CALENDARS].get_doctor(req.principal, req.params["doctor_id"])
    now = datetime.now(UTC)
    return _fhir(
        fhir.schedule_resource(doctor, horizon_start=now, horizon_end=now + DEFAULT_FUTURE)
    )


@api.op(
    "GET",
    "/fhir/R4/Slot",
    operation_id="fhirSearchSlots",
    summary="FHIR R4 free Slots of a doctor's Schedule between start and end",
    tag="fhir",
    action=Action.SLOT_SEARCH,
    query=SlotSearch,
    media_type=fhir.CONTENT_TYPE,
    errors=(404,),
)
async def search_slots(req: ApiRequest) -> web.Response:
    query = req.query(SlotSearch)
    scheduling = req.request.app[CALENDARS]
    doctor = await scheduling.get_doctor(req.principal, query.schedule)
    slots = await scheduling.search_slots(
        req.principal,
        doctor_id=query.schedule,
        start=query.start,
        end=query.end,
        service=query.service,
    )
    schedule_id = fhir.doctor_schedule_id(doctor)
    base = _base(req)
    resources = [
        fhir.slot_resource(s, schedule_id=schedule_id, service=query.service) for s in slots
    ]
    return _fhir(
        fhir.bundle(
            resources,
            base_url=base,
            self_link=f"{base}/Slot?{req.request.query_string}",
            next_link=None,
            total=len(resources),
        )
    )
