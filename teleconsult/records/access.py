"""Who may see a patient's clinical data (docs/records.md, "Access rules").

One SQL statement per request, no cache: a consent revoked or expired, a care team
membership ended, a break-glass window closed, a household permission withdrawn
stops access at the very next request.

* The patient sees their own record.
* A guardian acts for a dependant of their household as far as the dependant's
  row permits (``read``, ``write``, ``consent``), never for anyone else.
* A doctor or nurse sees clinical data only on a basis:
  - an appointment (doctors): confirmed, in progress or completed, from
    ``APPOINTMENT_OPENS`` before its start until ``APPOINTMENT_CLOSES`` after its end;
  - a care team membership (doctors, nurses), between its start and its end;
  - an active consent of the patient (or their guardian) to the clinician or to their
    clinic (the organisation), covering the scope;
  - break-glass: an emergency access with a reason, for ``BREAK_GLASS_MINUTES``,
    audited as ``record.break_glass`` and told to the patient (outbox notice).
* Receptionists and administrators have no clinical read.

A clinician of the patient's clinic without a basis gets 403 ``forbidden`` (the
record exists for them; break-glass is possible). Anyone else gets 404, like a
record that does not exist.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Final, Literal
from uuid import UUID, uuid4

import asyncpg

from teleconsult.audit import AuditEvent, AuditTrail
from teleconsult.core.errors import BadRequest, FieldError, Forbidden, NotFound
from teleconsult.core.identity import CLINICAL_ROLES, Principal, Role
from teleconsult.core.policy import OutOfScope
from teleconsult.records.fieldcrypt import ClinicKeys

logger = logging.getLogger(__name__)

SCOPES: Final = ("summary", "vitals", "notes", "medications", "documents")
Scope = Literal["summary", "vitals", "notes", "medications", "documents"]
Need = Literal["read", "write", "consent"]
BasisKind = Literal[
    "self", "guardian", "staff", "appointment", "care_team", "consent", "break_glass"
]

APPOINTMENT_OPENS: Final = timedelta(hours=24)
APPOINTMENT_CLOSES: Final = timedelta(days=30)
BREAK_GLASS_MINUTES: Final = 60
BREAK_GLASS_NOTICE: Final = "break_glass_access"


@dataclass(frozen=True)
class AccessBasis:
    """Why this request may touch this patient's record."""

    kind: BasisKind
    patient_id: UUID
    clinic_id: UUID  # the patient's clinic
    ref: UUID | None = None  # the appointment, membership, consent, household or access

    @property
    def clinical(self) -> bool:
        return self.kind not in ("self", "guardian", "staff")


# $1 caller, $2 patient, $3 caller's clinic, $4 caller's role, $5 scope, $6 need.
_BASES = f"""
WITH p AS (SELECT id, clinic_id FROM users WHERE id = $2 AND role = 'patient')
SELECT p.clinic_id,
    ($4 = 'patient' AND $1 = p.id) AS is_self,
    (SELECT d.household_id FROM household_members g
        JOIN household_members d ON d.household_id = g.household_id
        JOIN households h ON h.id = g.household_id AND h.clinic_id = p.clinic_id
     WHERE $4 = 'patient' AND g.user_id = $1 AND g.kind = 'guardian' AND g.removed_at IS NULL
        AND d.user_id = p.id AND d.kind = 'dependant' AND d.removed_at IS NULL
        AND $6 = ANY (d.permissions)
     LIMIT 1) AS household,
    (SELECT a.id FROM appointments a
     WHERE $4 = 'doctor' AND a.clinic_id = p.clinic_id AND $3 = p.clinic_id
        AND a.patient_id = p.id AND a.doctor_id = $1
        AND a.status IN ('confirmed', 'in_progress', 'completed')
        AND now() >= a.starts_at - interval '{int(APPOINTMENT_OPENS.total_seconds())} seconds'
        AND now() < a.ends_at + interval '{int(APPOINTMENT_CLOSES.total_seconds())} seconds'
     ORDER BY a.starts_at DESC LIMIT 1) AS appointment,
    (SELECT c.id FROM care_team_members c
     WHERE $4 IN ('doctor', 'nurse') AND $3 = p.clinic_id AND c.clinic_id = p.clinic_id
        AND c.patient_id = p.id AND c.member_id = $1 AND c.ended_at IS NULL
        AND now() >= c.starts_at AND now() < c.ends_at
     LIMIT 1) AS care_team,
    (SELECT c.id FROM consents c
     WHERE $4 IN ('doctor', 'nurse') AND c.patient_id = p.id
        AND (c.grantee_user_id = $1 OR c.grantee_clinic_id = $3)
        AND (c.scope = 'all' OR c.scope = $5)
        AND c.revoked_at IS NULL AND now() < c.expires_at
     ORDER BY c.granted_at DESC LIMIT 1) AS consent,
    (SELECT b.id FROM break_glass_accesses b
     WHERE $4 IN ('doctor', 'nurse') AND $3 = p.clinic_id
        AND b.patient_id = p.id AND b.clinician_id = $1 AND now() < b.expires_at
     ORDER BY b.opened_at DESC LIMIT 1) AS break_glass
FROM p
"""


async def _bases(
    conn: asyncpg.Connection, principal: Principal, patient_id: UUID, scope: str, need: Need
) -> asyncpg.Record:
    """The caller's possible bases on the patient (a row of ``_BASES``); 404 when there
    is no such patient."""
    row = await conn.fetchrow(
        _BASES,
        principal.user_id,
        patient_id,
        principal.clinic_id,
        principal.role.value,
        scope,
        need,
    )
    if row is None:
        raise NotFound("patient not found")
    return row


async def ensure_clinical_access(
    conn: asyncpg.Connection,
    principal: Principal,
    patient_id: UUID,
    scope: str,
    *,
    break_glass_reason: str | None = None,
    need: Need = "read",
    keys: ClinicKeys | None = None,
    audit: AuditTrail | None = None,
    ip: str | None = None,
) -> AccessBasis:
    """The basis on which ``principal`` may ``need`` ``scope`` of the patient's record,
    or raise (403 for a clinician of the patient's clinic without a basis, 404 otherwise).

    With ``break_glass_reason`` a doctor or nurse of the patient's clinic opens an
    emergency access (stored with the reason encrypted under ``keys``), writes the
    ``record.break_glass`` audit event through ``audit`` and an outbox notice to the
    patient, all on ``conn`` (run it in the caller's transaction)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")
    row = await _bases(conn, principal, patient_id, scope, need)
    clinic_id: UUID = row["clinic_id"]

    def basis(kind: BasisKind, ref: UUID | None = None) -> AccessBasis:
        return AccessBasis(kind, patient_id, clinic_id, ref)

    if break_glass_reason is not None:
        return await _break_glass(
            conn, principal, basis("break_glass"), scope, break_glass_reason, keys, audit, ip
        )
    if row["is_self"]:
        return basis("self")
    if row["household"] is not None:
        return basis("guardian", row["household"])
    for kind in ("appointment", "care_team", "consent", "break_glass"):
        if row[kind] is not None:
            return basis(kind, row[kind])
    if principal.role in CLINICAL_ROLES and principal.clinic_id == clinic_id:
        raise Forbidden(
            "no care relationship, consent or break-glass access to this patient's record"
        )
    raise OutOfScope("patient not found")


async def _break_glass(
    conn: asyncpg.Connection,
    principal: Principal,
    basis: AccessBasis,
    scope: str,
    reason: str,
    keys: ClinicKeys | None,
    audit: AuditTrail | None,
    ip: str | None,
) -> AccessBasis:
    if principal.role not in CLINICAL_ROLES:
        raise Forbidden("only doctors and nurses may break the glass")
    if principal.clinic_id != basis.clinic_id:
        raise OutOfScope("patient not found")
    if len(reason.strip()) < 10:
        raise BadRequest(
            "a break-glass access needs a reason",
            fields=[FieldError("body.reason", "at least 10 characters")],
        )
    if keys is None or audit is None or keys.clinic_id != basis.clinic_id:
        raise ValueError("break-glass needs the clinic's keys and the audit trail")
    access_id = uuid4()
    await conn.execute(
        "INSERT INTO break_glass_accesses (id, clinic_id, patient_id, clinician_id, reason_ct, "
        "expires_at) VALUES ($1, $2, $3, $4, $5, now() + make_interval(mins => $6))",
        access_id,
        basis.clinic_id,
        basis.patient_id,
        principal.user_id,
        keys.encrypt("break_glass_accesses", "reason_ct", access_id, reason),
        BREAK_GLASS_MINUTES,
    )
    # The patient is told (ids only); one unsent notice per patient at a time.
    await conn.execute(
        "INSERT INTO notification_outbox (kind, user_id, due_at, payload) "
        "VALUES ($1, $2, now(), $3::text::jsonb) ON CONFLICT DO NOTHING",
        BREAK_GLASS_NOTICE,
        basis.patient_id,
        json.dumps({"access_id": str(access_id), "clinician_id": str(principal.user_id)}),
    )
    await audit.record(
        AuditEvent.by(
            principal,
            "record.break_glass",
            "patient",
            basis.patient_id,
            ip=ip,
            detail={
                "access_id": str(access_id),
                "scope": scope,
                "minutes": BREAK_GLASS_MINUTES,
                "role": principal.role.value,
            },
        ),
        conn,
    )
    logger.warning(
        "break-glass access %s opened by %s %s on patient %s",
        access_id,
        principal.role.value,
        principal.user_id,
        basis.patient_id,
    )
    return AccessBasis("break_glass", basis.patient_id, basis.clinic_id, access_id)


# $1 guardian, $2 the guardian's clinic, $3 need.
_DEPENDANTS = """
SELECT DISTINCT d.user_id FROM household_members g
    JOIN household_members d ON d.household_id = g.household_id
    JOIN households h ON h.id = g.household_id AND h.clinic_id = $2
WHERE g.user_id = $1 AND g.kind = 'guardian' AND g.removed_at IS NULL
    AND d.kind = 'dependant' AND d.removed_at IS NULL AND $3 = ANY (d.permissions)
"""


async def dependants_of(
    conn: asyncpg.Connection, principal: Principal, *, need: Need = "read"
) -> list[UUID]:
    """The patients whose record a patient caller may ``need`` as their guardian (the
    same household rule as :func:`ensure_clinical_access`); none for staff."""
    if principal.role is not Role.PATIENT:
        return []
    rows = await conn.fetch(_DEPENDANTS, principal.user_id, principal.clinic_id, need)
    return sorted(r["user_id"] for r in rows)


async def ensure_profile_access(
    conn: asyncpg.Connection, principal: Principal, patient_id: UUID, *, need: Need = "read"
) -> AccessBasis:
    """The demographic profile (not clinical): the patient, a guardian with ``need``, or
    any staff member of the patient's clinic (the front desk needs it); else 404."""
    row = await _bases(conn, principal, patient_id, "summary", need)
    clinic_id: UUID = row["clinic_id"]
    if row["is_self"]:
        return AccessBasis("self", patient_id, clinic_id)
    if row["household"] is not None:
        return AccessBasis("guardian", patient_id, clinic_id, row["household"])
    if principal.role is not Role.PATIENT and principal.clinic_id == clinic_id:
        return AccessBasis("staff", patient_id, clinic_id)
    raise OutOfScope("patient not found")


async def ensure_access(
    conn: asyncpg.Connection,
    principal: Principal,
    patient_id: UUID,
    scope: str,
    *,
    need: Need = "read",
) -> AccessBasis:
    """The basis for ``scope`` of the record: ``profile`` is the demographic profile
    (:func:`ensure_profile_access`), the others are clinical (:func:`ensure_clinical_access`)."""
    if scope == "profile":
        return await ensure_profile_access(conn, principal, patient_id, need=need)
    return await ensure_clinical_access(conn, principal, patient_id, scope, need=need)
