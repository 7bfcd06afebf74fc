"""The one authorization policy every route goes through.

Two checks, in this order:

1. ``ensure_allowed``: may this role perform this action at all? Done by the
   route wrapper before the handler runs (403 ``forbidden`` when not).
2. ``ensure_in_scope``: may this principal touch this object? Done by the
   service once it has loaded the object. Objects of another clinic, and for a
   patient any patient record other than their own, answer 404 ``not_found``,
   so ids of other tenants' objects reveal nothing.

The table below is the written policy; docs/policy.md explains it and the
authorization matrix test checks every route against its own copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from uuid import UUID

from teleconsult.core.errors import Forbidden, NotFound
from teleconsult.core.identity import Principal, Role

ALL = frozenset(Role)
STAFF = frozenset({Role.DOCTOR, Role.NURSE, Role.RECEPTIONIST, Role.ADMIN})
CLINICAL = frozenset({Role.DOCTOR, Role.NURSE})
ADMIN = frozenset({Role.ADMIN})


class Action(StrEnum):
    ME_READ = "me.read"
    ME_UPDATE = "me.update"
    SESSION_END = "session.end"
    CLINIC_READ = "clinic.read"
    CLINIC_UPDATE = "clinic.update"
    USER_LIST = "user.list"
    USER_READ = "user.read"
    USER_CREATE = "user.create"
    USER_UPDATE = "user.update"
    PATIENT_LIST = "patient.list"
    PATIENT_READ = "patient.read"
    PATIENT_UPDATE = "patient.update"
    NOTE_LIST = "note.list"
    NOTE_CREATE = "note.create"
    AUDIT_LIST = "audit.list"
    DOCTOR_READ = "doctor.read"
    DOCTOR_PROFILE_WRITE = "doctor.profile.write"
    AVAILABILITY_READ = "availability.read"
    AVAILABILITY_WRITE = "availability.write"
    SLOT_SEARCH = "slot.search"
    APPOINTMENT_BOOK = "appointment.book"
    APPOINTMENT_READ = "appointment.read"
    APPOINTMENT_CHANGE = "appointment.change"
    APPOINTMENT_CONFIRM = "appointment.confirm"
    APPOINTMENT_CONDUCT = "appointment.conduct"
    FRONT_DESK = "front_desk"
    CALENDAR_FEED_MANAGE = "calendar_feed.manage"
    DEVICE_MANAGE = "device.manage"
    THREAD_CREATE = "thread.create"
    THREAD_READ = "thread.read"
    MESSAGE_SEND = "message.send"
    TURN_CREDENTIALS = "turn.credentials"
    NETWORK_TEST_RUN = "network_test.run"
    NETWORK_TEST_READ = "network_test.read"
    # --- payments (issue 15) ---
    INVOICE_READ = "invoice.read"
    PAYMENT_START = "payment.start"
    PAYMENT_DESK = "payment.desk"
    PAYMENT_REPORT = "payment.report"
    PAYMENT_SETTINGS = "payment.settings"
    # --- fhir (issue 14, part F) ---
    FHIR_DIRECTORY_READ = "fhir.directory.read"
    FHIR_PATIENT_READ = "fhir.patient.read"
    FHIR_ENCOUNTER_READ = "fhir.encounter.read"
    FHIR_EVERYTHING = "fhir.everything"
    FHIR_CLINICAL_READ = "fhir.clinical.read"
    FHIR_EXPORT = "fhir.export"
    # --- end fhir ---
    # --- recordings (issue 13, part R) ---
    RECORDING_CONSENT = "recording.consent"
    RECORDING_START = "recording.start"
    RECORDING_READ = "recording.read"
    RECORDING_PLAY = "recording.play"
    RECORDING_RETENTION = "recording.retention"
    # --- end recordings ---
    # --- records (issue 14, part R) ---
    CONSENT_MANAGE = "consent.manage"
    CARE_TEAM_MANAGE = "care_team.manage"
    BREAK_GLASS = "record.break_glass"
    PROFILE_READ = "profile.read"
    PROFILE_WRITE = "profile.write"
    PATIENT_LOOKUP = "patient.lookup"
    SUMMARY_READ = "summary.read"
    SUMMARY_WRITE = "summary.write"
    HOUSEHOLD_MANAGE = "household.manage"
    HOUSEHOLD_READ = "household.read"
    VITALS_READ = "vitals.read"
    VITALS_WRITE = "vitals.write"
    NOTE_READ = "note.read"
    NOTE_AMEND = "note.amend"
    PRESCRIPTION_ISSUE = "prescription.issue"
    PRESCRIPTION_READ = "prescription.read"
    MEDICATION_READ = "medication.read"
    MEDICATION_WRITE = "medication.write"
    CARE_PLAN_READ = "care_plan.read"
    CARE_PLAN_WRITE = "care_plan.write"
    RECORD_SYNC = "record.sync"
    DOCUMENT_READ = "document.read"
    DOCUMENT_WRITE = "document.write"
    # --- end records ---


ROLE_RULES: dict[Action, frozenset[Role]] = {
    Action.ME_READ: ALL,
    Action.ME_UPDATE: ALL,
    Action.SESSION_END: ALL,
    Action.CLINIC_READ: ALL,
    Action.CLINIC_UPDATE: ADMIN,
    Action.USER_LIST: ADMIN,
    Action.USER_READ: ADMIN,
    Action.USER_CREATE: ADMIN,
    Action.USER_UPDATE: ADMIN,
    Action.PATIENT_LIST: STAFF,
    Action.PATIENT_READ: STAFF | {Role.PATIENT},
    Action.PATIENT_UPDATE: STAFF | {Role.PATIENT},
    # A patient may read their own record (right of access); front desk and
    # administrators never see clinical notes.
    Action.NOTE_LIST: CLINICAL | {Role.PATIENT},
    Action.NOTE_CREATE: CLINICAL,
    Action.AUDIT_LIST: ADMIN,
    # Scheduling. Where a doctor appears, they act on their own calendar only
    # (ensure_self_or_any); appointments are scoped by Scope.doctor_id.
    Action.DOCTOR_READ: ALL,
    Action.DOCTOR_PROFILE_WRITE: ADMIN | {Role.DOCTOR},
    Action.AVAILABILITY_READ: STAFF,
    Action.AVAILABILITY_WRITE: frozenset({Role.ADMIN, Role.RECEPTIONIST, Role.DOCTOR}),
    Action.SLOT_SEARCH: ALL,
    Action.APPOINTMENT_BOOK: frozenset({Role.PATIENT, Role.RECEPTIONIST, Role.ADMIN, Role.DOCTOR}),
    Action.APPOINTMENT_READ: ALL,
    Action.APPOINTMENT_CHANGE: frozenset(
        {Role.PATIENT, Role.RECEPTIONIST, Role.ADMIN, Role.DOCTOR}
    ),
    Action.APPOINTMENT_CONFIRM: frozenset({Role.RECEPTIONIST, Role.ADMIN, Role.DOCTOR}),
    Action.APPOINTMENT_CONDUCT: frozenset({Role.DOCTOR}),
    Action.FRONT_DESK: STAFF,
    Action.CALENDAR_FEED_MANAGE: ADMIN | {Role.DOCTOR},
    # Messaging: membership of the thread is the object scope (non-members: 404).
    Action.DEVICE_MANAGE: ALL,
    Action.THREAD_CREATE: STAFF,
    Action.THREAD_READ: ALL,
    Action.MESSAGE_SEND: ALL,
    # Video calls: anyone signed in may relay through TURN (docs/turn.md).
    Action.TURN_CREDENTIALS: ALL,
    # Pre-call network tests: whoever takes part in a consultation (the patient, the
    # doctor, a nurse) runs one; the clinic's staff read the results (scoped by the
    # appointment, a patient only their own).
    Action.NETWORK_TEST_RUN: CLINICAL | {Role.PATIENT},
    Action.NETWORK_TEST_READ: ALL,
    # --- payments (issue 15) --- A patient reads and pays their own invoices (scoped
    # by the invoice's patient); the front desk and admins their clinic's, and only they
    # take cash, refund and waive. Doctors and nurses see no bills.
    Action.INVOICE_READ: frozenset({Role.PATIENT, Role.RECEPTIONIST, Role.ADMIN}),
    Action.PAYMENT_START: frozenset({Role.PATIENT, Role.RECEPTIONIST, Role.ADMIN}),
    Action.PAYMENT_DESK: frozenset({Role.RECEPTIONIST, Role.ADMIN}),
    Action.PAYMENT_REPORT: frozenset({Role.RECEPTIONIST, Role.ADMIN}),
    Action.PAYMENT_SETTINGS: ADMIN,
    # --- fhir (issue 14, part F; docs/fhir.md) ---
    # Practitioners and the clinic (Organization) are the clinic's directory, as
    # DOCTOR_READ. Patient resources follow PATIENT_READ (a patient: their own).
    # Encounters follow APPOINTMENT_READ (a doctor: their own). Patient/$everything:
    # the patient themself, or clinical staff with a care relationship. $export: a
    # doctor (their own patients), an admin (the clinic's non-clinical resources);
    # it never yields more than the caller could read resource by resource.
    Action.FHIR_DIRECTORY_READ: ALL,
    Action.FHIR_PATIENT_READ: STAFF | {Role.PATIENT},
    Action.FHIR_ENCOUNTER_READ: ALL,
    Action.FHIR_EVERYTHING: CLINICAL | {Role.PATIENT},
    # Observation, Consent: records.access decides per patient (self, guardian, or a
    # clinician's care relationship, consent or break-glass); front desk and admins never.
    Action.FHIR_CLINICAL_READ: CLINICAL | {Role.PATIENT},
    Action.FHIR_EXPORT: ADMIN | {Role.DOCTOR},
    # --- end fhir ---
    # --- recordings (issue 13, part R; docs/rtc.md, "Recordings") ---
    # Only the consultation's patient gives or withdraws consent; only its doctor
    # starts a recording (through the SFU, no route). The state and the list are
    # scoped like the appointment (a doctor: their own; a patient: their own). The
    # media plays to the consultation's doctor and to its patient (right of access);
    # no other role hears it.
    Action.RECORDING_CONSENT: frozenset({Role.PATIENT}),
    Action.RECORDING_START: frozenset({Role.DOCTOR}),
    Action.RECORDING_READ: ALL,
    Action.RECORDING_PLAY: frozenset({Role.DOCTOR, Role.PATIENT}),
    # A clinic's retention period is its admins' to set.
    Action.RECORDING_RETENTION: ADMIN,
    # --- end recordings ---
    # --- records (issue 14, part R; docs/records.md) ---
    # The role may try; records/access.py decides per patient in SQL (self, guardian,
    # appointment, care team, consent, break-glass). Front desk and admins never read
    # clinical data; they keep the demographic profile and the organisational parts.
    Action.CONSENT_MANAGE: frozenset({Role.PATIENT}),
    Action.CARE_TEAM_MANAGE: ADMIN,
    Action.BREAK_GLASS: CLINICAL,
    Action.PROFILE_READ: STAFF | {Role.PATIENT},
    Action.PROFILE_WRITE: frozenset({Role.RECEPTIONIST, Role.ADMIN, Role.PATIENT}),
    Action.PATIENT_LOOKUP: STAFF,
    Action.SUMMARY_READ: CLINICAL | {Role.PATIENT},
    Action.SUMMARY_WRITE: CLINICAL,
    Action.HOUSEHOLD_MANAGE: frozenset({Role.RECEPTIONIST, Role.ADMIN}),
    Action.HOUSEHOLD_READ: STAFF | {Role.PATIENT},
    Action.VITALS_READ: CLINICAL | {Role.PATIENT},
    Action.VITALS_WRITE: CLINICAL | {Role.PATIENT},
    Action.NOTE_READ: CLINICAL | {Role.PATIENT},
    Action.NOTE_AMEND: CLINICAL,
    Action.PRESCRIPTION_ISSUE: frozenset({Role.DOCTOR}),
    Action.PRESCRIPTION_READ: CLINICAL | {Role.PATIENT},
    Action.MEDICATION_READ: CLINICAL | {Role.PATIENT},
    Action.MEDICATION_WRITE: CLINICAL | {Role.PATIENT},
    Action.CARE_PLAN_READ: CLINICAL | {Role.PATIENT},
    Action.CARE_PLAN_WRITE: CLINICAL,
    # Changes to every record the caller may see (scoped per patient and part).
    Action.RECORD_SYNC: CLINICAL | {Role.PATIENT},
    Action.DOCUMENT_READ: CLINICAL | {Role.PATIENT},
    Action.DOCUMENT_WRITE: CLINICAL | {Role.PATIENT},
    # --- end records ---
}


@dataclass(frozen=True)
class Scope:
    """Whose object this is: its clinic, for patient data the patient, and for an
    appointment its doctor (a doctor sees only their own appointments)."""

    clinic_id: UUID
    patient_id: UUID | None = None
    doctor_id: UUID | None = None


def is_allowed(role: Role, action: Action) -> bool:
    return role in ROLE_RULES[action]


def ensure_allowed(principal: Principal, action: Action) -> None:
    if not is_allowed(principal.role, action):
        raise Forbidden(f"role {principal.role.value} may not {action.value}")


def in_scope(principal: Principal, scope: Scope) -> bool:
    if scope.clinic_id != principal.clinic_id:
        return False
    if principal.role is Role.PATIENT:
        return scope.patient_id is not None and scope.patient_id == principal.user_id
    if principal.role is Role.DOCTOR and scope.doctor_id is not None:
        return scope.doctor_id == principal.user_id
    return True


class OutOfScope(NotFound):
    """The object exists but is not the caller's to see: answered exactly like a
    missing one (404), and audited as a refused attempt (``api.registry``)."""


def ensure_in_scope(principal: Principal, scope: Scope | None, what: str) -> None:
    """Raise NotFound when the object is missing (None), OutOfScope (a NotFound) when
    it is outside the principal's scope."""
    if scope is None:
        raise NotFound(f"{what} not found")
    if not in_scope(principal, scope):
        raise OutOfScope(f"{what} not found")


def ensure_self_or_any(principal: Principal, target_user_id: UUID, *, self_only: Role) -> None:
    """Principals of role ``self_only`` may act only on their own ``target_user_id``.

    Used where the object is visible clinic-wide (a doctor's profile, their
    availability) but a doctor may change only their own.
    """
    if principal.role is self_only and principal.user_id != target_user_id:
        raise Forbidden(f"a {self_only.value} may change only their own")
