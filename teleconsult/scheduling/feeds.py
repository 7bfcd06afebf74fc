"""Calendar feeds: a revocable secret URL per doctor serving their appointments as iCalendar.

The token is a bearer secret that ends up in calendar apps and sync services,
so only its SHA-256 is stored, and the feed carries no patient data: summaries
name the kind of appointment, links carry only the room's opaque id.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg

from teleconsult.accounts import store as accounts
from teleconsult.audit import AuditEvent, AuditTrail
from teleconsult.core.errors import NotFound
from teleconsult.core.identity import Principal, Role
from teleconsult.core.policy import ensure_self_or_any
from teleconsult.scheduling import feed_store, store
from teleconsult.scheduling.availability import AvailabilityService
from teleconsult.scheduling.ics import render_calendar
from teleconsult.scheduling.records import CalendarFeed

FEED_PAST = timedelta(days=30)
FEED_FUTURE = timedelta(days=180)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class CalendarFeedService:
    """Safe to call concurrently."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        audit: AuditTrail,
        calendars: AvailabilityService,
        public_url: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._pool = pool
        self._audit = audit
        self._calendars = calendars
        self._public_url = public_url
        self._now = clock

    def url_for(self, token: str) -> str:
        return f"{self._public_url}/api/v1/calendar/{token}"

    async def _own_calendar(self, principal: Principal, doctor_id: UUID) -> None:
        await self._calendars.get_doctor(principal, doctor_id)
        ensure_self_or_any(principal, doctor_id, self_only=Role.DOCTOR)

    async def create(
        self, principal: Principal, doctor_id: UUID, *, ip: str | None
    ) -> tuple[CalendarFeed, str]:
        """A new feed; the token is returned once and never stored."""
        await self._own_calendar(principal, doctor_id)
        token = secrets.token_urlsafe(32)
        async with self._pool.acquire() as conn, conn.transaction():
            feed = await feed_store.create_calendar_feed(
                conn, doctor_id=doctor_id, token_hash=_digest(token)
            )
            await self._audit.record(
                self._event(principal, "calendar_feed.create", feed, ip), conn=conn
            )
        return feed, token

    async def list_feeds(self, principal: Principal, doctor_id: UUID) -> list[CalendarFeed]:
        await self._own_calendar(principal, doctor_id)
        return await feed_store.list_calendar_feeds(self._pool, doctor_id)

    async def revoke(
        self, principal: Principal, doctor_id: UUID, feed_id: UUID, *, ip: str | None
    ) -> None:
        await self._own_calendar(principal, doctor_id)
        async with self._pool.acquire() as conn, conn.transaction():
            if not await feed_store.revoke_calendar_feed(
                conn, doctor_id=doctor_id, feed_id=feed_id
            ):
                raise NotFound("feed not found")
            await self._audit.record(
                AuditEvent(
                    action="calendar_feed.revoke",
                    actor_id=principal.user_id,
                    actor_role=principal.role.value,
                    clinic_id=principal.clinic_id,
                    object_type="calendar_feed",
                    object_id=str(feed_id),
                    ip=ip,
                ),
                conn=conn,
            )

    async def render(self, token: str, *, ip: str | None) -> str:
        """The feed behind ``token``; NotFound for unknown or revoked tokens."""
        async with self._pool.acquire() as conn:
            feed = await feed_store.find_calendar_feed(conn, _digest(token))
            if feed is None:
                raise NotFound("no such calendar")
            doctor = await store.get_doctor_profile(conn, feed.doctor_id)
            if doctor is None:
                raise NotFound("no such calendar")
            clinic = await accounts.get_clinic(conn, doctor.clinic_id)
            assert clinic is not None
            now = self._now()
            appointments = await store.list_appointments(
                conn,
                start=now - FEED_PAST,
                end=now + FEED_FUTURE,
                doctor_id=doctor.user_id,
                limit=2000,
            )
            rooms = await store.consultations_for(conn, [a.id for a in appointments])
            await self._audit.record(
                AuditEvent(
                    action="calendar_feed.read",
                    clinic_id=doctor.clinic_id,
                    object_type="calendar_feed",
                    object_id=str(feed.id),
                    ip=ip,
                    detail={"results": len(appointments)},
                ),
                conn,
            )
        links = {aid: f"{self._public_url}/join/{room.room_id}" for aid, room in rooms.items()}
        return render_calendar(
            doctor_name=doctor.full_name,
            clinic_name=clinic.name,
            appointments=appointments,
            consult_links=links,
            now=now,
        )

    @staticmethod
    def _event(principal: Principal, action: str, feed: CalendarFeed, ip: str | None) -> AuditEvent:
        return AuditEvent(
            action=action,
            actor_id=principal.user_id,
            actor_role=principal.role.value,
            clinic_id=principal.clinic_id,
            object_type="calendar_feed",
            object_id=str(feed.id),
            ip=ip,
            detail={"doctor_id": str(feed.doctor_id)},
        )
