"""Consultation rooms for signaling tests (an appointment with a room, open now), and a
bare /signal client for the tests of connections that end."""

from __future__ import annotations

import asyncio
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


class RawSignal:
    """A bare python-socketio client of /signal: any event, acks as they come, what the
    server pushes, and whether the server hung up."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False, handle_sigint=False)
        self.pushed: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.refusals: list[Any] = []
        self.gone = asyncio.Event()
        self.sio.on("*", self._pushed, namespace=NS)
        self.sio.on("connect_error", self._refused, namespace=NS)
        self.sio.on("disconnect", self._disconnected, namespace=NS)

    async def _pushed(self, event: str, data: Any = None) -> None:
        self.pushed.put_nowait((event, data))

    async def _refused(self, data: Any = None) -> None:
        self.refusals.append(data)

    async def _disconnected(self, *_: Any) -> None:
        self.gone.set()

    async def connect(self, base: str, token: str) -> None:
        await self.sio.connect(
            base, auth={"token": token}, transports=["websocket"], namespaces=[NS], wait_timeout=10
        )

    async def call(self, event: str, data: Any = None) -> Any:
        return await self.sio.call(event, data, namespace=NS, timeout=10)

    async def next_event(self, name: str, *, within: float = 10.0) -> Any:
        async with asyncio.timeout(within):
            while True:
                event, data = await self.pushed.get()
                if event == name:
                    return data


@contextlib.asynccontextmanager
async def raw_signal(base: str, token: str) -> AsyncIterator[RawSignal]:
    client = RawSignal()
    try:
        await client.connect(base, token)
        yield client
    finally:
        await client.sio.disconnect()


async def signal_refusal(base: str, token: str) -> Any:
    """What the server sends with its refusal of a /signal connect with ``token``."""
    client = RawSignal()
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(base, token)
    finally:
        await client.sio.disconnect()
    assert len(client.refusals) == 1, client.refusals
    return client.refusals[0]
