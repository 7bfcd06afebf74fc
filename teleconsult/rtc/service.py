"""Pre-call network tests: who may run and read them, and their record.

Domain rules live here; this module knows nothing of HTTP. A test belongs to a
consultation (an appointment of kind video or audio) and to the user who ran
it. Running one needs the appointment in the caller's scope, as reading the
appointment does; reading results too, except that a patient sees only their
own. Every start, report and read is audited. A session that ends (logout,
password change, disabling, role change) closes the peers it started at once
(:meth:`NetworkTestService.on_revocation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from teleconsult.audit import AuditEvent, AuditTrail
from teleconsult.core.batching import Batcher
from teleconsult.core.errors import Conflict, ErrorCode, NotFound, Unprocessable
from teleconsult.core.identity import Principal, Role
from teleconsult.core.revocation import Revocation
from teleconsult.rtc import store
from teleconsult.rtc.figures import ClientFigures
from teleconsult.rtc.network_test import NetworkTestRunner, Outcome
from teleconsult.rtc.records import NetworkTest
from teleconsult.scheduling import store as scheduling
from teleconsult.scheduling.availability import Clock, utc_now
from teleconsult.scheduling.records import Appointment
from teleconsult.scheduling.scope import appointment_in_scope

# A client reports when its own measurement is over; allow for a slow network.
REPORT_GRACE = timedelta(minutes=5)


@dataclass(frozen=True)
class StartedTest:
    test: NetworkTest
    answer_sdp: str


class NetworkTestService:
    """Safe to call concurrently; the runner bounds the peers, the database the rows."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        audit: AuditTrail,
        runner: NetworkTestRunner,
        clock: Clock = utc_now,
    ) -> None:
        self._pool = pool
        self._audit = audit
        self._runner = runner
        self._now = clock
        # Patients knocking at once: their doctors' lookups share one statement.
        self._latest: Batcher[tuple[UUID, UUID], NetworkTest | None] = Batcher(
            self._latest_of_users, max_batch=64, max_inflight=2, name="rtc-latest"
        )

    async def close(self) -> None:
        await self._latest.close()

    async def _latest_of_users(self, asks: Sequence[tuple[UUID, UUID]]) -> list[NetworkTest | None]:
        async with self._pool.acquire() as conn:
            return await store.latest_of_users(conn, asks)

    @property
    def runner(self) -> NetworkTestRunner:
        return self._runner

    async def start(
        self, principal: Principal, appointment_id: UUID, offer_sdp: str, *, ip: str | None
    ) -> StartedTest:
        """Answer the caller's offer with the server's peer and record the test."""
        appointment = await self._appointment(principal, appointment_id)
        consultation = await scheduling.get_consultation_for_appointment(self._pool, appointment_id)
        if consultation is None:
            raise Unprocessable(
                "the appointment has no video or audio consultation to test for",
                code=ErrorCode.NO_CONSULTATION,
            )
        if consultation.status in ("ended", "cancelled"):
            raise Conflict(f"the consultation is {consultation.status}")
        test_id = uuid4()
        started = await self._runner.start(
            test_id,
            owner=(principal.user_id, appointment_id),
            offer_sdp=offer_sdp,
            on_finish=self._finished,
            user_id=principal.user_id,
            session_id=principal.session_id,
        )
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                test = await store.insert_test(
                    conn,
                    test_id=test_id,
                    clinic_id=appointment.clinic_id,
                    appointment_id=appointment_id,
                    consultation_id=consultation.id,
                    user_id=principal.user_id,
                    user_role=principal.role.value,
                    expires_at=started.expires_at,
                )
                await self._audit.record(
                    self._event(principal, "network_test.start", test, appointment, ip),
                    conn=conn,
                )
        except BaseException:
            await self._runner.stop(test_id, reason="aborted", discard=True)
            raise
        self._runner.arm(test_id)
        return StartedTest(test, started.answer_sdp)

    async def on_revocation(self, revocation: Revocation) -> None:
        """A :data:`~teleconsult.core.revocation.RevocationHandler`: close the server's
        peers of the sessions that ended (idempotent)."""
        await self._runner.end_sessions(revocation.covers)

    async def report(
        self, principal: Principal, test_id: UUID, figures: ClientFigures, *, ip: str | None
    ) -> NetworkTest:
        """Store what the client measured, once; the server's peer is closed first, so
        the answer holds both sides' figures."""
        test = await store.get_test(self._pool, test_id)
        if (
            test is None
            or test.clinic_id != principal.clinic_id
            or test.user_id != principal.user_id
        ):
            raise NotFound("network test not found")
        if test.reported_at is not None:
            raise Conflict("this test's result was already reported")
        if self._now() > test.expires_at + REPORT_GRACE:
            raise Conflict("this test ended too long ago to report its result")
        await self._runner.stop(test_id, reason="completed")
        async with self._pool.acquire() as conn, conn.transaction():
            reported = await store.report_test(conn, test_id, figures.as_report())
            if reported is None:
                raise Conflict("this test's result was already reported")
            await self._audit.record(
                AuditEvent.by(
                    principal,
                    "network_test.report",
                    "network_test",
                    test_id,
                    clinic_id=reported.clinic_id,
                    ip=ip,
                    detail={"appointment_id": str(reported.appointment_id)},
                ),
                conn=conn,
            )
        return reported

    async def latest(
        self, principal: Principal, appointment_id: UUID, *, ip: str | None
    ) -> list[NetworkTest]:
        """Each user's newest test for the appointment; a patient sees only their own."""
        appointment = await self._appointment(principal, appointment_id)
        only = principal.user_id if principal.role is Role.PATIENT else None
        async with self._pool.acquire() as conn:
            found = await store.latest_per_user(conn, appointment_id, user_id=only)
            await self._audit.record(
                AuditEvent.by(
                    principal,
                    "network_test.list",
                    "appointment",
                    appointment_id,
                    clinic_id=appointment.clinic_id,
                    ip=ip,
                    detail={"patient_id": str(appointment.patient_id), "results": len(found)},
                ),
                conn,
            )
        return found

    async def latest_for(self, appointment_id: UUID, user_id: UUID) -> dict[str, Any] | None:
        """A user's newest result for an appointment, as JSON, for the waiting room.

        No scope check and no audit row: the caller (signaling) has already
        admitted the doctor to the consultation and answers for the read.
        """
        found = await self._latest.submit((appointment_id, user_id))
        return None if found is None else summary(found)

    async def _appointment(self, principal: Principal, appointment_id: UUID) -> Appointment:
        return await appointment_in_scope(self._pool, principal, appointment_id)

    async def _finished(self, test_id: UUID, outcome: Outcome) -> None:
        await store.finish_test(self._pool, test_id, outcome.status, outcome.figures.as_json())

    @staticmethod
    def _event(
        principal: Principal,
        action: str,
        test: NetworkTest,
        appointment: Appointment,
        ip: str | None,
    ) -> AuditEvent:
        facts = {"appointment_id": str(appointment.id), "patient_id": str(appointment.patient_id)}
        return AuditEvent.by(
            principal,
            action,
            "network_test",
            test.id,
            clinic_id=test.clinic_id,
            ip=ip,
            detail=facts,
        )


def summary(test: NetworkTest) -> dict[str, Any]:
    """A test as JSON-ready values (ids and times as strings)."""
    return {
        "id": str(test.id),
        "user_id": str(test.user_id),
        "user_role": test.user_role,
        "status": test.status,
        "started_at": test.started_at.isoformat(),
        "finished_at": test.finished_at.isoformat() if test.finished_at else None,
        "server": test.server,
        "client": test.client,
    }
