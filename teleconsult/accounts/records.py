"""Domain records of the accounts package (plain values, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from uuid import UUID

from teleconsult.core.identity import Role


@dataclass(frozen=True)
class ClinicRecord:
    id: UUID
    name: str
    timezone: str
    created_at: datetime


@dataclass(frozen=True)
class UserRecord:
    id: UUID
    clinic_id: UUID
    email: str
    role: Role
    full_name: str
    phone: str | None
    date_of_birth: date | None
    status: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class IssuedTokens:
    access_token: str
    refresh_token: str
    expires_in: int
    user: UserRecord
    # A sign-in's new device token, and the one it came in with (a browser's cookie
    # drops it). None for a refresh.
    device_token: str | None = None
    replaced_device_token: str | None = None
