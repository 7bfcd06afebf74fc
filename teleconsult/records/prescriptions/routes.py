"""HTTP transport for prescriptions (and their public verification) and medication
statements."""

from __future__ import annotations

import base64
import binascii
from datetime import date, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, StringConstraints

from teleconsult.api.models import Body
from teleconsult.api.registry import Api, ApiRequest
from teleconsult.core.errors import BadRequest, FieldError
from teleconsult.core.policy import Action
from teleconsult.records.prescriptions.service import Medication, Prescription, PrescriptionService

PRESCRIPTIONS = web.AppKey("record_prescriptions", PrescriptionService)
api = Api()

B64 = Annotated[
    str, StringConstraints(min_length=4, max_length=40000, pattern=r"^[A-Za-z0-9+/=]+$")
]
Status = Literal["active", "cancelled", "expired"]


def _b64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("not base64", fields=[FieldError(field, "not base64")]) from None


class PrescriptionOut(BaseModel):
    id: UUID
    number: str
    patient_id: UUID
    doctor_id: UUID
    status: Status
    issued_at: datetime
    expires_at: datetime
    cancelled_at: datetime | None
    document: dict[str, Any]
    # The signed bytes (base64) exactly as signed; verify with the public key.
    canonical: str
    signature: str
    public_key: str
    # Only in the answer to the issuing request: print it in the QR code or link.
    verification_code: str | None = None

    @classmethod
    def of(cls, p: Prescription) -> PrescriptionOut:
        return cls(
            id=p.id,
            number=p.number,
            patient_id=p.patient_id,
            doctor_id=p.doctor_id,
            status=p.status,  # type: ignore[arg-type]
            issued_at=p.issued_at,
            expires_at=p.expires_at,
            cancelled_at=p.cancelled_at,
            document=p.document,
            canonical=base64.b64encode(p.canonical).decode(),
            signature=base64.b64encode(p.signature).decode(),
            public_key=base64.b64encode(p.public_key).decode(),
            verification_code=p.verification_code,
        )


class PrescriptionList(BaseModel):
    items: list[PrescriptionOut]


class PrescriptionBody(Body):
    device_id: UUID
    document: B64
    signature: B64


class VerifyQuery(BaseModel):
    number: Annotated[str, StringConstraints(pattern=r"^RX-[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}$")]
    code: Annotated[
        str, StringConstraints(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    ]


class VerifiedPrescription(BaseModel):
    """What a pharmacy learns: the prescription itself, its status, and what to verify
    it with. Nothing else of the patient's record."""

    number: str
    status: Status
    document: dict[str, Any]
    canonical: str
    signature: str
    public_key: str
    algorithm: Literal["Ed25519"] = "Ed25519"
    signed_message: Literal["teleconsult/prescription/v1\\0 || canonical"] = (
        "teleconsult/prescription/v1\\0 || canonical"
    )


class MedicationDetails(Body):
    drug: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"\S")]
    dose: Annotated[str, StringConstraints(max_length=100)] | None = None
    frequency: Annotated[str, StringConstraints(max_length=100)] | None = None
    note: Annotated[str, StringConstraints(max_length=1000)] | None = None


class MedicationBody(MedicationDetails):
    status: Literal["active", "stopped"] = "active"


class MedicationStopBody(Body):
    # The day the patient stopped (or stops) taking it; at most a year ahead.
    ended_on: date
    reason: Annotated[str, StringConstraints(min_length=1, max_length=1000, pattern=r"\S")]


class MedicationStopOut(BaseModel):
    ended_on: date
    reason: str
    stopped_by: UUID
    stopped_at: datetime


class MedicationOut(BaseModel):
    id: UUID
    patient_id: UUID
    details: MedicationDetails
    status: Literal["active", "stopped"]
    recorded_by: UUID
    created_at: datetime
    # Set once the statement was stopped with POST .../stop (null when it was recorded
    # as stopped from the start).
    stop: MedicationStopOut | None = None

    @classmethod
    def of(cls, m: Medication) -> MedicationOut:
        data = dict(m.__dict__)
        data["stop"] = None if m.stop is None else m.stop.__dict__
        return cls.model_validate(data)


class MedicationList(BaseModel):
    items: list[MedicationOut]


def _svc(req: ApiRequest) -> PrescriptionService:
    return req.request.app[PRESCRIPTIONS]


RX = "/api/v1/patients/{patient_id}/prescriptions"
MEDS = "/api/v1/patients/{patient_id}/medications"


@api.op(
    "POST",
    RX,
    operation_id="issuePrescription",
    tag="records",
    summary="Store a prescription signed by the doctor's device (canonical bytes, base64)",
    action=Action.PRESCRIPTION_ISSUE,
    body=PrescriptionBody,
    response=PrescriptionOut,
    status=201,
    errors=(409,),
)
async def issue(req: ApiRequest) -> PrescriptionOut:
    body = req.body(PrescriptionBody)
    prescription = await _svc(req).issue(
        req.principal,
        req.params["patient_id"],
        document_bytes=_b64(body.document, "body.document"),
        signature=_b64(body.signature, "body.signature"),
        device_id=body.device_id,
        ip=req.ip,
    )
    return PrescriptionOut.of(prescription)


@api.op(
    "GET",
    RX,
    operation_id="listPrescriptions",
    tag="records",
    summary="A patient's prescriptions with their status",
    action=Action.PRESCRIPTION_READ,
    response=PrescriptionList,
)
async def list_prescriptions(req: ApiRequest) -> PrescriptionList:
    found = await _svc(req).list_prescriptions(req.principal, req.params["patient_id"], ip=req.ip)
    return PrescriptionList(items=[PrescriptionOut.of(p) for p in found])


@api.op(
    "POST",
    RX + "/{prescription_id}/cancel",
    operation_id="cancelPrescription",
    tag="records",
    summary="Cancel a prescription (its prescriber); it is never edited",
    action=Action.PRESCRIPTION_ISSUE,
    response=PrescriptionOut,
)
async def cancel(req: ApiRequest) -> PrescriptionOut:
    prescription = await _svc(req).cancel(
        req.principal, req.params["patient_id"], req.params["prescription_id"], ip=req.ip
    )
    return PrescriptionOut.of(prescription)


@api.op(
    "GET",
    "/api/v1/prescriptions/verify",
    operation_id="verifyPrescription",
    tag="records",
    summary="Public: a prescription by its number and verification code (pharmacies)",
    action=None,
    query=VerifyQuery,
    response=VerifiedPrescription,
    errors=(404,),
)
async def verify(req: ApiRequest) -> VerifiedPrescription:
    query = req.query(VerifyQuery)
    p = await _svc(req).verify(query.number, query.code, ip=req.ip)
    out = PrescriptionOut.of(p)
    return VerifiedPrescription(
        number=out.number,
        status=out.status,
        document=out.document,
        canonical=out.canonical,
        signature=out.signature,
        public_key=out.public_key,
    )


@api.op(
    "POST",
    MEDS,
    operation_id="addMedicationStatement",
    tag="records",
    summary="Record a medication the patient takes (clinicians with access, the patient)",
    action=Action.MEDICATION_WRITE,
    body=MedicationBody,
    response=MedicationOut,
    status=201,
)
async def add_medication(req: ApiRequest) -> MedicationOut:
    body = req.body(MedicationBody)
    details = body.model_dump(exclude={"status"})
    medication = await _svc(req).add_medication(
        req.principal, req.params["patient_id"], details=details, status=body.status, ip=req.ip
    )
    return MedicationOut.of(medication)


@api.op(
    "GET",
    MEDS,
    operation_id="listMedicationStatements",
    tag="records",
    summary="The medications a patient takes or took",
    action=Action.MEDICATION_READ,
    response=MedicationList,
)
async def list_medications(req: ApiRequest) -> MedicationList:
    found = await _svc(req).medications(req.principal, req.params["patient_id"], ip=req.ip)
    return MedicationList(items=[MedicationOut.of(m) for m in found])


@api.op(
    "POST",
    MEDS + "/{medication_id}/stop",
    operation_id="stopMedicationStatement",
    tag="records",
    summary="Stop a medication statement (once), with an end date and a reason; never edited",
    action=Action.MEDICATION_WRITE,
    body=MedicationStopBody,
    response=MedicationOut,
    errors=(404, 409),
)
async def stop_medication(req: ApiRequest) -> MedicationOut:
    body = req.body(MedicationStopBody)
    medication = await _svc(req).stop_medication(
        req.principal,
        req.params["patient_id"],
        req.params["medication_id"],
        ended_on=body.ended_on,
        reason=body.reason,
        ip=req.ip,
    )
    return MedicationOut.of(medication)
