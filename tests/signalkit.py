"""Consultation rooms for signaling tests (an appointment with a room, open now), and a
bare /signal client for the tests of connections that end."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import pytest
import socketio

from teleconsult.core.identity import Role
from teleconsult.scheduling import store as scheduling
from teleconsult.scheduling.records import AppointmentStatus, ServiceKind
from tests.rawsio import Raw
from tests.world import Tenant

NS = "/signal"


async def open_room(
    pool: asyncpg.Pool,
    tenant: Tenant,
    *,
    patient_id: UUID | None = None,
    opens_in: timedelta = timedelta(minutes=-5),
    length: timedelta = timedelta(minutes=40),
    offset_days: int = 0,
) -> str:
    """A confirmed video appointment of the tenant's doctor whose room is open now."""
    doctor = tenant[Role.DOCTOR].user_id
    patient = patient_id or tenant[Role.PATIENT].user_id
    await scheduling.upsert_doctor_profile(
        pool,
        user_id=doctor,
        clinic_id=tenant.clinic_id,
        specialties=[],
        languages=["en"],
        consultation_minutes=30,
        buffer_minutes=0,
        fee_cents=0,
        currency="KES",
        services=[ServiceKind.VIDEO],
    )
    now = datetime.now(UTC).replace(microsecond=0)
    # Each room of a test gets its own hour so the appointments never overlap.
    starts_at = now + timedelta(days=offset_days, minutes=10)
    appointment = await scheduling.insert_appointment(
        pool,
        clinic_id=tenant.clinic_id,
        doctor_id=doctor,
        patient_id=patient,
        service=ServiceKind.VIDEO,
        starts_at=starts_at,
        ends_at=starts_at + timedelta(minutes=30),
        created_by=doctor,
        status=AppointmentStatus.CONFIRMED,
    )
    consultation = await scheduling.insert_consultation(
        pool,
        appointment_id=appointment.id,
        join_opens_at=now + opens_in,
        join_closes_at=now + opens_in + length,
    )
    return consultation.room_id


@contextlib.asynccontextmanager
async def raw_signal(base: str, token: str) -> AsyncIterator[Raw]:
    """A bare python-socketio client of /signal (tests/rawsio.py)."""
    client = Raw(NS)
    try:
        await client.connect(base, {"token": token})
        yield client
    finally:
        await client.sio.disconnect()


async def signal_refusal(base: str, token: str) -> Any:
    """What the server sends with its refusal of a /signal connect with ``token``."""
    client = Raw(NS)
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(base, {"token": token})
    finally:
        await client.sio.disconnect()
    assert len(client.refusals) == 1, client.refusals
    return client.refusals[0]
