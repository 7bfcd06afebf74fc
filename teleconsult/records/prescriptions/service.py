"""Prescriptions, signed by the doctor's registered chat device (the server never holds
the key), verifiable by anyone holding the number and the verification code; and
medication statements. Prescriptions are cancelled or expire, never edited."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID, uuid4

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from teleconsult.audit import AuditEvent
from teleconsult.core.errors import (
    BadRequest,
    Conflict,
    ErrorCode,
    FieldError,
    Forbidden,
    NotFound,
)
from teleconsult.core.identity import Principal
from teleconsult.records.base import RecordsService
from teleconsult.records.fieldcrypt import ClinicKeys
from teleconsult.records.prescriptions import canonical, store
from teleconsult.records.prescriptions.store import MedicationRow, PrescriptionRow

CLOCK_SKEW = timedelta(minutes=10)
LONGEST = timedelta(days=365)
RX_TABLE, RX_COLUMN = "prescriptions", "document_ct"
MED_TABLE, MED_COLUMN = "medication_statements", "details_ct"
STOP_COLUMN = "stop_reason_ct"
# How far ahead a stop's end date may be (a planned end), in days.
STOP_AHEAD_DAYS = 366
_TIME = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$"

Text = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    drug: Text
    dose: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    frequency: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    duration_days: Annotated[int, Field(ge=1, le=365)]
    quantity: Annotated[int, Field(ge=1, le=10000)]
    instructions: Annotated[str, StringConstraints(max_length=1000)]


class Document(BaseModel):
    """The signed document (docs/records.md, "Prescriptions")."""

    model_config = ConfigDict(extra="forbid", strict=True)
    v: Literal[1]
    clinic_id: str
    patient_id: str
    patient_name: Text
    doctor_id: str
    doctor_name: Text
    device_id: str
    issued_at: Annotated[str, StringConstraints(pattern=_TIME)]
    expires_at: Annotated[str, StringConstraints(pattern=_TIME)]
    items: Annotated[list[Item], Field(min_length=1, max_length=20)]


@dataclass(frozen=True)
class Prescription:
    id: UUID
    number: str
    patient_id: UUID
    doctor_id: UUID
    status: str
    issued_at: datetime
    expires_at: datetime
    cancelled_at: datetime | None
    document: dict[str, Any]
    canonical: bytes
    signature: bytes
    public_key: bytes
    verification_code: str | None = None


@dataclass(frozen=True)
class MedicationStop:
    ended_on: date
    reason: str
    stopped_by: UUID
    stopped_at: datetime


@dataclass(frozen=True)
class Medication:
    id: UUID
    patient_id: UUID
    details: dict[str, Any]
    status: str
    recorded_by: UUID
    created_at: datetime
    stop: MedicationStop | None = None


def _bad(field: str, message: str) -> BadRequest:
    return BadRequest(message, fields=[FieldError(field, message)])


def _time(text: str, field: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _bad(field, "not a time") from None


def _status(row: PrescriptionRow) -> str:
    if row.cancelled_at is not None:
        return "cancelled"
    return "expired" if row.expires_at <= datetime.now(UTC) else "active"


def open_prescription(
    keys: ClinicKeys, row: PrescriptionRow, code: str | None = None
) -> Prescription:
    text = keys.decrypt(RX_TABLE, RX_COLUMN, row.id, row.document_ct)
    document = canonical.is_canonical(text.encode())
    assert document is not None
    return Prescription(
        id=row.id,
        number=row.number,
        patient_id=row.patient_id,
        doctor_id=row.doctor_id,
        status=_status(row),
        issued_at=row.issued_at,
        expires_at=row.expires_at,
        cancelled_at=row.cancelled_at,
        document=document,
        canonical=text.encode(),
        signature=row.signature,
        public_key=row.signer_public_key,
        verification_code=code,
    )


def _code_hash(code: str) -> bytes:
    return hashlib.sha256(code.encode()).digest()


class PrescriptionService(RecordsService):
    async def issue(
        self,
        principal: Principal,
        patient_id: UUID,
        *,
        document_bytes: bytes,
        signature: bytes,
        device_id: UUID,
        ip: str | None,
    ) -> Prescription:
        raw = canonical.is_canonical(document_bytes)
        if raw is None:
            raise _bad("body.document", "not one JSON object in canonical form (docs/records.md)")
        try:
            doc = Document.model_validate(raw)
        except ValidationError as exc:
            fields = [
                FieldError("body.document." + ".".join(str(p) for p in e["loc"]), e["msg"])
                for e in exc.errors(include_url=False)
            ]
            raise BadRequest("the prescription document is invalid", fields=fields) from None
        issued, expires = (
            _time(doc.issued_at, "body.document.issued_at"),
            _time(doc.expires_at, "body.document.expires_at"),
        )
        now = datetime.now(UTC)
        if abs(issued - now) > CLOCK_SKEW:
            raise _bad("body.document.issued_at", "must be the current time (UTC)")
        if not issued < expires <= issued + LONGEST:
            raise _bad("body.document.expires_at", "after issued_at, within a year")
        expected = {
            "patient_id": str(patient_id),
            "doctor_id": str(principal.user_id),
            "device_id": str(device_id),
        }
        for name, value in expected.items():
            if getattr(doc, name) != value:
                raise _bad(f"body.document.{name}", f"must be {value}")
        async with self._access(principal, patient_id, "medications", need="write") as access:
            conn, keys = access.conn, access.keys
            if doc.clinic_id != str(access.basis.clinic_id):
                raise _bad("body.document.clinic_id", "must be the patient's clinic")
            names = await store.people(conn, patient_id, principal.user_id)
            if names != (doc.patient_name, doc.doctor_name):
                raise _bad("body.document.patient_name", "names must be as registered")
            public_key = await store.device_key(conn, device_id, principal.user_id)
            if public_key is None:
                raise Forbidden(
                    "sign with a current device of yours", code=ErrorCode.DEVICE_NOT_USABLE
                )
            try:
                VerifyKey(public_key).verify(canonical.message(document_bytes), signature)
            except (BadSignatureError, ValueError):
                raise BadRequest(
                    "the signature does not verify with the device's key",
                    code=ErrorCode.BAD_SIGNATURE,
                    fields=[FieldError("body.signature", "does not verify")],
                ) from None
            prescription_id = uuid4()
            code = secrets.token_urlsafe(16)
            row = await store.insert(
                conn,
                prescription_id=prescription_id,
                clinic_id=access.basis.clinic_id,
                patient_id=patient_id,
                doctor_id=principal.user_id,
                number=canonical.number_of(document_bytes),
                verification_hash=_code_hash(code),
                document_ct=keys.encrypt(
                    RX_TABLE, RX_COLUMN, prescription_id, document_bytes.decode()
                ),
                signature=signature,
                device_id=device_id,
                signer_public_key=public_key,
                issued_at=issued,
                expires_at=expires,
            )
            if row is None:
                raise Conflict("this document is already a prescription")
            await self._record(
                access,
                principal,
                "prescription.issue",
                ip=ip,
                object_type="prescription",
                object_id=row.id,
                items=len(doc.items),
            )
        return open_prescription(keys, row, code)

    async def list_prescriptions(
        self, principal: Principal, patient_id: UUID, *, ip: str | None
    ) -> list[Prescription]:
        async with self._access(principal, patient_id, "medications") as access:
            rows = await store.for_patient(access.conn, patient_id)
            await self._record(access, principal, "prescription.list", ip=ip, results=len(rows))
        return [open_prescription(access.keys, row) for row in rows]

    async def cancel(
        self, principal: Principal, patient_id: UUID, prescription_id: UUID, *, ip: str | None
    ) -> Prescription:
        async with self._access(principal, patient_id, "medications", need="write") as access:
            row = await store.cancel(
                access.conn,
                patient_id=patient_id,
                prescription_id=prescription_id,
                doctor_id=principal.user_id,
            )
            if row is None:
                raise NotFound("prescription not found (only its prescriber cancels it)")
            await self._record(
                access,
                principal,
                "prescription.cancel",
                ip=ip,
                object_type="prescription",
                object_id=row.id,
            )
        return open_prescription(access.keys, row)

    async def verify(self, number: str, code: str, *, ip: str | None) -> Prescription:
        """Public: the prescription with this number and verification code, or 404."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await store.by_number(conn, number, _code_hash(code))
            if row is None:
                raise NotFound("no prescription with this number and code")
            keys = await self._crypt.for_clinic(conn, row.clinic_id)
            await self._audit.record(
                AuditEvent(
                    action="prescription.verify",
                    clinic_id=row.clinic_id,
                    object_type="prescription",
                    object_id=str(row.id),
                    ip=ip,
                    detail={"patient_id": str(row.patient_id)},
                ),
                conn,
            )
        return open_prescription(keys, row)

    # -- medication statements ----------------------------------------------------------

    async def add_medication(
        self,
        principal: Principal,
        patient_id: UUID,
        *,
        details: dict[str, Any],
        status: str,
        ip: str | None,
    ) -> Medication:
        async with self._access(principal, patient_id, "medications", need="write") as access:
            medication_id = uuid4()
            row = await store.insert_medication(
                access.conn,
                medication_id=medication_id,
                clinic_id=access.basis.clinic_id,
                patient_id=patient_id,
                details_ct=access.keys.encrypt_json(MED_TABLE, MED_COLUMN, medication_id, details),
                status=status,
                recorded_by=principal.user_id,
            )
            await self._record(
                access,
                principal,
                "medication.create",
                ip=ip,
                object_type="medication_statement",
                object_id=row.id,
            )
        return open_medication(access.keys, row)

    async def stop_medication(
        self,
        principal: Principal,
        patient_id: UUID,
        medication_id: UUID,
        *,
        ended_on: date,
        reason: str,
        ip: str | None,
    ) -> Medication:
        """Stop an active statement, once: the end date and the reason (encrypted) are a
        new fact on it; its details are never edited (migration 0022's guard)."""
        if ended_on > datetime.now(UTC).date() + timedelta(days=STOP_AHEAD_DAYS):
            raise _bad("body.ended_on", f"at most {STOP_AHEAD_DAYS} days ahead")
        async with self._access(principal, patient_id, "medications", need="write") as access:
            current = await store.medication(access.conn, patient_id, medication_id)
            if current is None:
                raise NotFound("medication statement not found")
            if current.status != "active":
                raise Conflict("this medication statement is already stopped")
            row = await store.stop_medication(
                access.conn,
                patient_id=patient_id,
                medication_id=medication_id,
                ended_on=ended_on,
                reason_ct=access.keys.encrypt(MED_TABLE, STOP_COLUMN, medication_id, reason),
                stopped_by=principal.user_id,
            )
            if row is None:  # stopped by a concurrent request since the read
                raise Conflict("this medication statement is already stopped")
            await self._record(
                access,
                principal,
                "medication.stop",
                ip=ip,
                object_type="medication_statement",
                object_id=row.id,
            )
        return open_medication(access.keys, row)

    async def medications(
        self, principal: Principal, patient_id: UUID, *, ip: str | None
    ) -> list[Medication]:
        async with self._access(principal, patient_id, "medications") as access:
            rows = await store.medications(access.conn, patient_id)
            await self._record(access, principal, "medication.list", ip=ip, results=len(rows))
        return [open_medication(access.keys, row) for row in rows]


def open_medication(keys: ClinicKeys, row: MedicationRow) -> Medication:
    return Medication(
        id=row.id,
        patient_id=row.patient_id,
        details=keys.decrypt_json(MED_TABLE, MED_COLUMN, row.id, row.details_ct),
        status=row.status,
        recorded_by=row.recorded_by,
        created_at=row.created_at,
        stop=(
            None
            if row.stopped_at is None
            or row.ended_on is None
            or row.stop_reason_ct is None
            or row.stopped_by is None
            else MedicationStop(
                ended_on=row.ended_on,
                reason=keys.decrypt(MED_TABLE, STOP_COLUMN, row.id, row.stop_reason_ct),
                stopped_by=row.stopped_by,
                stopped_at=row.stopped_at,
            )
        ),
    )
