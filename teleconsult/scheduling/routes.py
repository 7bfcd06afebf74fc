"""HTTP transport for scheduling: doctors, availability, slots, appointments, front desk."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, Field, StringConstraints

from teleconsult.api.models import INT4_MAX, Body, IsoDate, IsoDateTime, IsoTime, Limit
from teleconsult.api.pagination import cut_page, decode_cursor
from teleconsult.api.registry import Api, ApiRequest
from teleconsult.core.errors import BadRequest
from teleconsult.core.policy import Action
from teleconsult.scheduling.availability import AvailabilityService
from teleconsult.scheduling.records import (
    Appointment,
    AppointmentStatus,
    AvailabilityException,
    AvailabilityRule,
    Consultation,
    DoctorProfile,
    ServiceKind,
)
from teleconsult.scheduling.service import Booked, SchedulingService

SCHEDULING = web.AppKey("scheduling", SchedulingService)
CALENDARS = web.AppKey("calendars", AvailabilityService)
PUBLIC_URL = web.AppKey("public_url", str)
api = Api()

Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=80)]
Language = Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")]


# --- models ---------------------------------------------------------------------------


class Doctor(BaseModel):
    id: UUID
    clinic_id: UUID
    full_name: str
    specialties: list[str]
    languages: list[str]
    consultation_minutes: int
    buffer_minutes: int
    fee_cents: int
    currency: str
    services: list[ServiceKind]
    bio: str | None

    @classmethod
    def of(cls, d: DoctorProfile) -> Doctor:
        return cls(
            id=d.user_id,
            clinic_id=d.clinic_id,
            full_name=d.full_name,
            specialties=list(d.specialties),
            languages=list(d.languages),
            consultation_minutes=d.consultation_minutes,
            buffer_minutes=d.buffer_minutes,
            fee_cents=d.fee_cents,
            currency=d.currency,
            services=list(d.services),
            bio=d.bio,
        )


class DoctorList(BaseModel):
    items: list[Doctor]


class DoctorProfileBody(Body):
    specialties: Annotated[list[Label], Field(max_length=20)] = []
    languages: Annotated[list[Language], Field(max_length=20)] = []
    consultation_minutes: Annotated[int, Field(ge=5, le=480)]
    buffer_minutes: Annotated[int, Field(ge=0, le=120)] = 0
    fee_cents: Annotated[int, Field(ge=0, le=100_000_000)] = 0
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = "USD"
    services: Annotated[list[ServiceKind], Field(min_length=1, max_length=4)]
    bio: Annotated[str, StringConstraints(max_length=2000)] | None = None


class DoctorQuery(BaseModel):
    service: ServiceKind | None = None


class Rule(BaseModel):
    id: UUID
    weekday: int
    start_time: IsoTime
    end_time: IsoTime
    kind: Literal["work", "break"]
    valid_from: date | None
    valid_until: date | None

    @classmethod
    def of(cls, r: AvailabilityRule) -> Rule:
        return cls(
            id=r.id,
            weekday=r.weekday,
            start_time=r.start_time,
            end_time=r.end_time,
            kind=r.kind,
            valid_from=r.valid_from,
            valid_until=r.valid_until,
        )


class RuleBody(Body):
    weekday: Annotated[int, Field(ge=0, le=6, description="0 is Monday")]
    start_time: IsoTime
    end_time: IsoTime
    kind: Literal["work", "break"] = "work"
    valid_from: IsoDate | None = None
    valid_until: IsoDate | None = None


class DatedChange(BaseModel):
    id: UUID
    starts_at: datetime
    ends_at: datetime
    kind: Literal["unavailable", "extra"]
    note: str | None

    @classmethod
    def of(cls, x: AvailabilityException) -> DatedChange:
        return cls(id=x.id, starts_at=x.starts_at, ends_at=x.ends_at, kind=x.kind, note=x.note)


class ExceptionBody(Body):
    starts_at: IsoDateTime
    ends_at: IsoDateTime
    kind: Literal["unavailable", "extra"]
    note: Annotated[str, StringConstraints(max_length=200)] | None = None


class Availability(BaseModel):
    rules: list[Rule]
    exceptions: list[DatedChange]


class Window(BaseModel):
    start: IsoDateTime = Field(alias="from")
    end: IsoDateTime = Field(alias="to")


class SlotQuery(Window):
    doctor: UUID
    service: ServiceKind | None = None


class SlotOut(BaseModel):
    starts_at: datetime
    ends_at: datetime


class SlotList(BaseModel):
    items: list[SlotOut]


class ConsultationOut(BaseModel):
    room_id: str
    join_url: str
    join_opens_at: datetime
    join_closes_at: datetime
    status: Literal["scheduled", "open", "ended", "cancelled"]


class AppointmentOut(BaseModel):
    id: UUID
    clinic_id: UUID
    doctor_id: UUID
    patient_id: UUID
    service: ServiceKind
    starts_at: datetime
    ends_at: datetime
    status: AppointmentStatus
    cancel_reason: str | None
    checked_in_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime
    consultation: ConsultationOut | None = None

    @classmethod
    def of(
        cls, a: Appointment, consultation: Consultation | None = None, base: str = ""
    ) -> AppointmentOut:
        room = None
        if consultation is not None:
            room = ConsultationOut(
                room_id=consultation.room_id,
                join_url=f"{base}/join/{consultation.room_id}",
                join_opens_at=consultation.join_opens_at,
                join_closes_at=consultation.join_closes_at,
                status=consultation.status,
            )
        return cls(
            id=a.id,
            clinic_id=a.clinic_id,
            doctor_id=a.doctor_id,
            patient_id=a.patient_id,
            service=a.service,
            starts_at=a.starts_at,
            ends_at=a.ends_at,
            status=a.status,
            cancel_reason=a.cancel_reason,
            checked_in_at=a.checked_in_at,
            version=a.version,
            created_at=a.created_at,
            updated_at=a.updated_at,
            consultation=room,
        )


class AppointmentPage(BaseModel):
    items: list[AppointmentOut]
    next_cursor: str | None


class BookBody(Body):
    doctor_id: UUID
    patient_id: UUID | None = None
    service: ServiceKind
    starts_at: IsoDateTime


class AppointmentQuery(Window):
    doctor: UUID | None = None
    patient: UUID | None = None
    status: AppointmentStatus | None = None
    cursor: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = None
    limit: Limit = 50


class RescheduleBody(Body):
    starts_at: IsoDateTime
    # The column is an int4: a larger number was a 500 (asyncpg could not encode it).
    version: Annotated[int, Field(ge=1, le=INT4_MAX)] | None = None


class CancelBody(Body):
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


class AgendaQuery(BaseModel):
    day: IsoDate
    doctor: UUID | None = None


class Agenda(BaseModel):
    day: date
    items: list[AppointmentOut]


# --- handlers -------------------------------------------------------------------------


def _svc(req: ApiRequest) -> SchedulingService:
    return req.request.app[SCHEDULING]


def _cal(req: ApiRequest) -> AvailabilityService:
    return req.request.app[CALENDARS]


def _out(req: ApiRequest, booked: Booked) -> AppointmentOut:
    base = req.request.app[PUBLIC_URL]
    return AppointmentOut.of(booked.appointment, booked.consultation, base)


@api.op(
    "GET",
    "/api/v1/doctors",
    operation_id="listDoctors",
    summary="Doctors of the caller's clinic with their profiles",
    tag="scheduling",
    action=Action.DOCTOR_READ,
    query=DoctorQuery,
    response=DoctorList,
)
async def list_doctors(req: ApiRequest) -> DoctorList:
    found = await _cal(req).list_doctors(req.principal, req.query(DoctorQuery).service)
    return DoctorList(items=[Doctor.of(d) for d in found])


@api.op(
    "GET",
    "/api/v1/doctors/{doctor_id}",
    operation_id="getDoctor",
    summary="A doctor's profile",
    tag="scheduling",
    action=Action.DOCTOR_READ,
    response=Doctor,
)
async def get_doctor(req: ApiRequest) -> Doctor:
    return Doctor.of(await _cal(req).get_doctor(req.principal, req.params["doctor_id"]))


@api.op(
    "PUT",
    "/api/v1/doctors/{doctor_id}/profile",
    operation_id="setDoctorProfile",
    summary="Set a doctor's profile (admin, or the doctor themself)",
    tag="scheduling",
    action=Action.DOCTOR_PROFILE_WRITE,
    body=DoctorProfileBody,
    response=Doctor,
)
async def set_profile(req: ApiRequest) -> Doctor:
    body = req.body(DoctorProfileBody)
    fields = body.model_dump()
    fields["services"] = list(dict.fromkeys(body.services))
    profile = await _cal(req).set_doctor_profile(
        req.principal, req.params["doctor_id"], fields, ip=req.ip
    )
    return Doctor.of(profile)


@api.op(
    "GET",
    "/api/v1/doctors/{doctor_id}/availability",
    operation_id="getAvailability",
    summary="A doctor's weekly rules and dated exceptions in a window",
    tag="scheduling",
    action=Action.AVAILABILITY_READ,
    query=Window,
    response=Availability,
)
async def get_availability(req: ApiRequest) -> Availability:
    window = req.query(Window)
    rules, exceptions = await _cal(req).availability(
        req.principal, req.params["doctor_id"], window.start, window.end
    )
    return Availability(
        rules=[Rule.of(r) for r in rules], exceptions=[DatedChange.of(x) for x in exceptions]
    )


@api.op(
    "POST",
    "/api/v1/doctors/{doctor_id}/availability/rules",
    operation_id="addAvailabilityRule",
    summary="Add weekly working hours or a weekly break (clinic's wall clock)",
    tag="scheduling",
    action=Action.AVAILABILITY_WRITE,
    body=RuleBody,
    response=Rule,
    status=201,
)
async def add_rule(req: ApiRequest) -> Rule:
    body = req.body(RuleBody)
    if body.valid_from and body.valid_until and body.valid_until < body.valid_from:
        raise BadRequest("valid_until must not be before valid_from")
    rule = await _cal(req).add_rule(req.principal, req.params["doctor_id"], **body.model_dump())
    return Rule.of(rule)


@api.op(
    "DELETE",
    "/api/v1/doctors/{doctor_id}/availability/rules/{rule_id}",
    operation_id="deleteAvailabilityRule",
    summary="Remove a weekly rule",
    tag="scheduling",
    action=Action.AVAILABILITY_WRITE,
    status=204,
)
async def delete_rule(req: ApiRequest) -> None:
    await _cal(req).delete_rule(req.principal, req.params["doctor_id"], req.params["rule_id"])


@api.op(
    "POST",
    "/api/v1/doctors/{doctor_id}/availability/exceptions",
    operation_id="addAvailabilityException",
    summary="Add leave (unavailable) or extra hours on given dates",
    tag="scheduling",
    action=Action.AVAILABILITY_WRITE,
    body=ExceptionBody,
    response=DatedChange,
    status=201,
)
async def add_exception(req: ApiRequest) -> DatedChange:
    body = req.body(ExceptionBody)
    change = await _cal(req).add_exception(
        req.principal, req.params["doctor_id"], **body.model_dump()
    )
    return DatedChange.of(change)


@api.op(
    "DELETE",
    "/api/v1/doctors/{doctor_id}/availability/exceptions/{exception_id}",
    operation_id="deleteAvailabilityException",
    summary="Remove a dated exception",
    tag="scheduling",
    action=Action.AVAILABILITY_WRITE,
    status=204,
)
async def delete_exception(req: ApiRequest) -> None:
    await _cal(req).delete_exception(
        req.principal, req.params["doctor_id"], req.params["exception_id"]
    )


@api.op(
    "GET",
    "/api/v1/slots",
    operation_id="searchSlots",
    summary="Free slots of a doctor between 'from' and 'to' (at most 31 days)",
    tag="scheduling",
    action=Action.SLOT_SEARCH,
    query=SlotQuery,
    response=SlotList,
    errors=(404,),
)
async def search_slots(req: ApiRequest) -> SlotList:
    query = req.query(SlotQuery)
    slots = await _cal(req).search_slots(
        req.principal,
        doctor_id=query.doctor,
        start=query.start,
        end=query.end,
        service=query.service,
    )
    return SlotList(items=[SlotOut(starts_at=s.starts_at, ends_at=s.ends_at) for s in slots])


@api.op(
    "POST",
    "/api/v1/appointments",
    operation_id="bookAppointment",
    summary="Book an appointment (a patient for themself; staff for a patient)",
    tag="appointments",
    action=Action.APPOINTMENT_BOOK,
    body=BookBody,
    response=AppointmentOut,
    status=201,
    errors=(404, 409, 422),
)
async def book(req: ApiRequest) -> AppointmentOut:
    """Refused with 409 `slot_taken` when the doctor or the patient is already booked
    then, and 422 `outside_availability` / `in_the_past` / `service_not_offered`.
    Video and audio appointments get a consultation room whose join link carries
    only an opaque id."""
    body = req.body(BookBody)
    booked = await _svc(req).book(
        req.principal,
        doctor_id=body.doctor_id,
        patient_id=body.patient_id,
        service=body.service,
        starts_at=body.starts_at,
        ip=req.ip,
    )
    return _out(req, booked)


@api.op(
    "GET",
    "/api/v1/appointments",
    operation_id="listAppointments",
    summary="Appointments the caller may see in a window",
    tag="appointments",
    action=Action.APPOINTMENT_READ,
    query=AppointmentQuery,
    response=AppointmentPage,
)
async def list_appointments(req: ApiRequest) -> AppointmentPage:
    query = req.query(AppointmentQuery)
    found = await _svc(req).list_visible(
        req.principal,
        start=query.start,
        end=query.end,
        doctor_id=query.doctor,
        patient_id=query.patient,
        statuses=[query.status] if query.status else None,
        after=decode_cursor(query.cursor),
        limit=query.limit + 1,
        ip=req.ip,
    )
    page, cursor = cut_page(found, query.limit)
    base = req.request.app[PUBLIC_URL]
    return AppointmentPage(
        items=[AppointmentOut.of(a, None, base) for a in page], next_cursor=cursor
    )


@api.op(
    "GET",
    "/api/v1/appointments/{appointment_id}",
    operation_id="getAppointment",
    summary="An appointment with its consultation room",
    tag="appointments",
    action=Action.APPOINTMENT_READ,
    response=AppointmentOut,
)
async def get_appointment(req: ApiRequest) -> AppointmentOut:
    booked = await _svc(req).get(req.principal, req.params["appointment_id"], ip=req.ip)
    return _out(req, booked)


@api.op(
    "POST",
    "/api/v1/appointments/{appointment_id}/reschedule",
    operation_id="rescheduleAppointment",
    summary="Move an appointment to another time in one atomic step",
    tag="appointments",
    action=Action.APPOINTMENT_CHANGE,
    body=RescheduleBody,
    response=AppointmentOut,
    errors=(409, 422),
)
async def reschedule(req: ApiRequest) -> AppointmentOut:
    """Pass the `version` you saw to refuse the move if someone changed it meanwhile
    (409 `stale_version`)."""
    body = req.body(RescheduleBody)
    booked = await _svc(req).reschedule(
        req.principal,
        req.params["appointment_id"],
        starts_at=body.starts_at,
        version=body.version,
        ip=req.ip,
    )
    return _out(req, booked)


def _transition_op(name: str, operation_id: str, summary: str, action: Action) -> None:
    async def handler(req: ApiRequest) -> AppointmentOut:
        svc = _svc(req)
        method = getattr(svc, name)
        changed = await method(req.principal, req.params["appointment_id"], ip=req.ip)
        return AppointmentOut.of(changed, None, req.request.app[PUBLIC_URL])

    handler.__doc__ = f"409 `invalid_transition` when the appointment is not in a state to {name}."
    api.op(
        "POST",
        f"/api/v1/appointments/{{appointment_id}}/{name.replace('_', '-')}",
        operation_id=operation_id,
        summary=summary,
        tag="appointments",
        action=action,
        response=AppointmentOut,
        errors=(409,),
    )(handler)


_transition_op(
    "confirm", "confirmAppointment", "Confirm a requested appointment", Action.APPOINTMENT_CONFIRM
)
_transition_op(
    "start", "startAppointment", "The doctor starts the consultation", Action.APPOINTMENT_CONDUCT
)
_transition_op(
    "complete",
    "completeAppointment",
    "The doctor ends the consultation",
    Action.APPOINTMENT_CONDUCT,
)
_transition_op(
    "check_in", "checkInAppointment", "The patient has arrived (front desk)", Action.FRONT_DESK
)
_transition_op("no_show", "markNoShow", "The patient did not come (front desk)", Action.FRONT_DESK)


@api.op(
    "POST",
    "/api/v1/appointments/{appointment_id}/cancel",
    operation_id="cancelAppointment",
    summary="Cancel an appointment (a reason is required)",
    tag="appointments",
    action=Action.APPOINTMENT_CHANGE,
    body=CancelBody,
    response=AppointmentOut,
    errors=(409,),
)
async def cancel(req: ApiRequest) -> AppointmentOut:
    body = req.body(CancelBody)
    changed = await _svc(req).cancel(
        req.principal, req.params["appointment_id"], reason=body.reason, ip=req.ip
    )
    return AppointmentOut.of(changed, None, req.request.app[PUBLIC_URL])


@api.op(
    "GET",
    "/api/v1/agenda",
    operation_id="getAgenda",
    summary="The day's appointments of the clinic or one doctor (clinic's calendar day)",
    tag="front desk",
    action=Action.FRONT_DESK,
    query=AgendaQuery,
    response=Agenda,
)
async def agenda(req: ApiRequest) -> Agenda:
    query = req.query(AgendaQuery)
    found = await _svc(req).agenda(req.principal, query.day, query.doctor, ip=req.ip)
    base = req.request.app[PUBLIC_URL]
    return Agenda(day=query.day, items=[AppointmentOut.of(a, None, base) for a in found])
