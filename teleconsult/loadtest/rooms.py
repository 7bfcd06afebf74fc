"""Consultation rooms for the signal scenario, made through the public API only.

An operator's load test has no database access, so rooms come the way a
clinic's come: as the admin, doctors offering video consultations of
``slot_minutes`` every day 00:00-23:59 (the clinic's clock), and for each
room a booking, by the admin, of one of a doctor's earliest free slots for a
patient who registered themself. A staff booking is confirmed at once and
its answer carries the consultation (``room_id``, ``join_opens_at``,
``join_closes_at``); the doctor and the patient then read the room id from
``GET /api/v1/appointments/{id}`` as their apps would.

A room can be joined from ``JOIN_BEFORE_MINUTES`` (default 15) before its
start until ``JOIN_AFTER_MINUTES`` (30) after its end, and a booking must
start in the future. Slots lie on a grid of ``slot_minutes`` from the start
of the working day, so a doctor's earliest slot is at most one slot away and
its three earliest 5-minute slots are all joinable at once.
:func:`wait_for_windows` waits (a few minutes at most) for a window that
opens later, as on a server with a shorter ``JOIN_BEFORE_MINUTES``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode
from uuid import UUID

import aiohttp

from teleconsult.client.rest import ApiError
from teleconsult.loadtest import LoadtestError
from teleconsult.loadtest.accounts import Accounts, Member

logger = logging.getLogger(__name__)

SERVICE = "video"
BOOK_ATTEMPTS = 3
BOOK_MARGIN = timedelta(seconds=15)  # a slot must still be in the future when booked
MAX_WINDOW_WAIT = 300.0  # seconds to wait for a room's join window to open


@dataclass(frozen=True)
class Booked:
    """A confirmed video appointment and its room, as the API gave them."""

    index: int
    doctor: Member  # signed in
    patient: Member  # signed in (registered)
    appointment_id: UUID
    room_id: str
    opens_at: datetime
    closes_at: datetime


async def book_rooms(
    accounts: Accounts, *, rooms: int, rooms_per_doctor: int, slot_minutes: int
) -> list[Booked]:
    """``rooms`` rooms, ``rooms_per_doctor`` on each doctor's earliest free slots."""
    doctors = await accounts.staff(math.ceil(rooms / rooms_per_doctor), "doctor", sign_in=True)
    admin = accounts.admin

    async def bookable(j: int) -> None:
        doctor = doctors[j].user_id
        profile = {
            "specialties": ["load test"],
            "languages": ["en"],
            "consultation_minutes": slot_minutes,
            "services": [SERVICE],
        }
        await admin.call("PUT", f"/api/v1/doctors/{doctor}/profile", profile)
        for weekday in range(7):
            rule = {"weekday": weekday, "start_time": "00:00", "end_time": "23:59"}
            await admin.call("POST", f"/api/v1/doctors/{doctor}/availability/rules", rule)

    try:
        await accounts.bounded("setting doctors' hours", len(doctors), bookable)
    except ApiError as exc:
        raise LoadtestError(f"could not set a doctor's profile or hours: {exc}") from None
    patients = await accounts.patients(rooms)
    booked: dict[int, Booked] = {}

    async def book(j: int) -> None:
        # Room i is doctor i % len(doctors)'s, on that doctor's next earliest slot.
        for i in range(j, rooms, len(doctors)):
            booked[i] = await _book(accounts, doctors[j], patients[i], i)

    await accounts.bounded("booking rooms", len(doctors), book)
    found = [booked[i] for i in range(rooms)]

    async def read(i: int) -> None:
        for member in (found[i].doctor, found[i].patient):
            await _read_as_participant(member, found[i])

    await accounts.bounded("reading each room as its doctor and patient", rooms, read)
    return found


async def _book(accounts: Accounts, doctor: Member, patient: Member, index: int) -> Booked:
    """Book the doctor's earliest free slot for the patient, as the admin."""
    admin = accounts.admin
    for attempt in range(1, BOOK_ATTEMPTS + 1):
        now = datetime.now(UTC)
        query = urlencode(
            {
                "doctor": str(doctor.user_id),
                "from": (now + BOOK_MARGIN).isoformat(),
                "to": (now + timedelta(days=2)).isoformat(),
                "service": SERVICE,
            }
        )
        try:
            slots = await admin.call("GET", f"/api/v1/slots?{query}")
            if not slots["items"]:
                raise LoadtestError(f"doctor {doctor.email} has no free slot in two days")
            body = {
                "doctor_id": str(doctor.user_id),
                "patient_id": str(patient.user_id),
                "service": SERVICE,
                "starts_at": slots["items"][0]["starts_at"],
            }
            made = await admin.call("POST", "/api/v1/appointments", body)
        except ApiError as exc:
            # The slot began meanwhile, or someone else took it: search again.
            if exc.code in ("in_the_past", "slot_taken") and attempt < BOOK_ATTEMPTS:
                continue
            raise LoadtestError(f"could not book a room: {exc}") from None
        room = made.get("consultation")
        if not room or made.get("status") != "confirmed":
            raise LoadtestError(
                "a video appointment booked by the admin came back without a confirmed "
                f"consultation room: {made}"
            )
        return Booked(
            index=index,
            doctor=doctor,
            patient=patient,
            appointment_id=UUID(made["id"]),
            room_id=room["room_id"],
            opens_at=datetime.fromisoformat(room["join_opens_at"]),
            closes_at=datetime.fromisoformat(room["join_closes_at"]),
        )
    raise AssertionError("unreachable")


async def _read_as_participant(member: Member, room: Booked) -> None:
    try:
        seen = await member.rest.call("GET", f"/api/v1/appointments/{room.appointment_id}")
    except ApiError as exc:
        raise LoadtestError(f"the {member.role} could not read their appointment: {exc}") from None
    found = (seen.get("consultation") or {}).get("room_id")
    if found != room.room_id:
        raise LoadtestError(
            f"the {member.role}'s GET /api/v1/appointments/{{id}} gave room {found!r}, "
            f"not {room.room_id!r}"
        )


async def wait_for_windows(rooms: list[Booked], *, run_seconds: float, quiet: bool) -> float:
    """Wait until every room's join window is open; returns the seconds waited.

    Refuses when that is more than :data:`MAX_WINDOW_WAIT` away, or when a
    window closes before ``run_seconds`` from then.
    """
    now = datetime.now(UTC)
    latest = max(r.opens_at for r in rooms)
    wait = max(0.0, (latest - now).total_seconds())
    if wait > MAX_WINDOW_WAIT:
        raise LoadtestError(
            f"the last room's join window opens only at {latest.isoformat()} "
            f"({wait:.0f} s from now): the server opens rooms JOIN_BEFORE_MINUTES before "
            "their start; use fewer --rooms-per-doctor or a shorter --slot-minutes"
        )
    first_close = min(r.closes_at for r in rooms)
    if first_close < now + timedelta(seconds=wait + run_seconds):
        raise LoadtestError(
            f"a room's join window closes at {first_close.isoformat()}, before the run "
            "would end: shorten --duration"
        )
    if wait > 0:
        if not quiet:
            print(f"waiting {wait:.0f} s for the rooms' join windows to open", file=sys.stderr)
        await asyncio.sleep(wait + 1.0)
    return wait


async def cancel_appointments(accounts: Accounts, rooms: list[Booked]) -> None:
    """Cancel the rooms' appointments, which closes the rooms; failures are logged."""
    if not rooms:
        return
    try:
        admin = await accounts.fresh_admin()
    except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
        logger.warning("could not cancel the run's appointments: %s", exc)
        return

    async def cancel(i: int) -> None:
        appointment = rooms[i].appointment_id
        try:
            await admin.call(
                "POST",
                f"/api/v1/appointments/{appointment}/cancel",
                {"reason": "load test over"},
            )
        except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("could not cancel load-test appointment %s: %s", appointment, exc)

    await accounts.bounded("cancelling the run's appointments", len(rooms), cancel)
