"""Frozen records of network tests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

TestStatus = Literal["running", "completed", "expired", "failed", "aborted"]


@dataclass(frozen=True)
class NetworkTest:
    """One test: who ran it for which consultation, and both sides' figures (JSON)."""

    id: UUID
    clinic_id: UUID
    appointment_id: UUID
    consultation_id: UUID
    user_id: UUID
    user_role: str
    started_at: datetime
    expires_at: datetime
    finished_at: datetime | None
    status: TestStatus
    server: dict[str, Any] | None
    client: dict[str, Any] | None
    reported_at: datetime | None
