"""Who is asking: roles and the authenticated principal."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from uuid import UUID


class Role(StrEnum):
    PATIENT = "patient"
    DOCTOR = "doctor"
    NURSE = "nurse"
    RECEPTIONIST = "receptionist"
    ADMIN = "admin"


STAFF_ROLES = frozenset({Role.DOCTOR, Role.NURSE, Role.RECEPTIONIST, Role.ADMIN})
CLINICAL_ROLES = frozenset({Role.DOCTOR, Role.NURSE})


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated user, as loaded from the database on each request.

    The role and clinic come from the users table, not from the token, so a role
    change or a disabled account takes effect at once.
    """

    user_id: UUID
    clinic_id: UUID
    role: Role
    session_id: UUID

    @property
    def is_staff(self) -> bool:
        return self.role in STAFF_ROLES


@dataclass(frozen=True, slots=True)
class Grant:
    """What a valid access token proves: who, and until when (epoch seconds)."""

    principal: Principal
    expires_at: float
