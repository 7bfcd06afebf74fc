"""Recordings: consent, the recording's life, sealing, playback, retention, key rotation.

Domain rules only; no HTTP (routes.py is the transport). The SFU side calls
:meth:`RecordingService.begin` when the doctor starts recording (refused without
the patient's consent), :meth:`ingest` with the finished plaintext file, or
:meth:`fail`; :meth:`state` is what the room shows both sides, and listeners
added with :meth:`on_change` hear every change (the signaling broadcast hook).

Safe to call concurrently. Sealing one recording twice at once is refused
(the row is leased to one attempt); the retention sweeper and key rotation lock
the rows they work on (``FOR UPDATE SKIP LOCKED``), so several servers may run
them at once.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO
from uuid import UUID, uuid4

import asyncpg

from teleconsult.audit import AuditEvent, AuditTrail
from teleconsult.core.errors import (
    Conflict,
    ErrorCode,
    Forbidden,
    NotFound,
    TeleconsultError,
    Unprocessable,
)
from teleconsult.core.identity import Principal, Role
from teleconsult.core.policy import Action, Scope, ensure_allowed, ensure_in_scope
from teleconsult.recording import store, upkeep
from teleconsult.recording.keys import KeyRing
from teleconsult.recording.playback import (
    Playback,
    after_first,
    open_object,
    stream_range,
)
from teleconsult.recording.ranges import parse_range
from teleconsult.recording.seal import (
    KeyUnavailable,
    MasterKey,
    Sealed,
    SealError,
    seal_stream,
)
from teleconsult.recording.storage import BlobStore, NoSuchObject, overwrite_and_unlink
from teleconsult.recording.store import Consent, Recording
from teleconsult.recording.tickets import PlaybackTickets, Sessions, still_current
from teleconsult.recording.upkeep import RotationProgress, RotationReport
from teleconsult.scheduling import store as scheduling
from teleconsult.scheduling.records import Appointment
from teleconsult.scheduling.scope import appointment_in_scope, scope_of

logger = logging.getLogger(__name__)

_CONTENT_TYPE = re.compile(r"[a-z]+/[a-z0-9.+-]{1,60}")
# How long one sealing attempt holds a recording before another may take over.
SEALING_LEASE_SECONDS = 3600.0


@dataclass(frozen=True)
class RoomRecordingState:
    """What both sides of the room see: consent, and whether a recording runs."""

    appointment_id: UUID
    consent: bool
    recording: bool
    recording_id: UUID | None


Listener = Callable[[RoomRecordingState], Awaitable[None]]


class RecordingService:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        audit: AuditTrail,
        blobs: BlobStore,
        keys: KeyRing,
        chunk_size: int = 64 * 1024,
        sessions: Sessions | None = None,
    ) -> None:
        """``sessions`` re-checks a playback ticket's login session at each use; without
        it every ticket is refused."""
        self._pool = pool
        self._sessions = sessions
        self._audit = audit
        self._blobs = blobs
        self._keys = keys
        self._chunk_size = chunk_size
        self._listeners: list[Listener] = []

    @property
    def keys(self) -> KeyRing:
        return self._keys

    def on_change(self, listener: Listener) -> None:
        """Hear every change of a room's recording state (consent, start, end)."""
        self._listeners.append(listener)

    async def _changed(self, appointment_id: UUID) -> None:
        if not self._listeners:
            return
        now = await self.state(appointment_id)
        for listener in self._listeners:
            try:
                await listener(now)
            except Exception:  # a listener's failure must not undo a committed change
                logger.exception("a recording-state listener failed")

    # --- consent -------------------------------------------------------------

    async def _appointment(
        self, conn: asyncpg.Connection, principal: Principal, appointment_id: UUID
    ) -> Appointment:
        return await appointment_in_scope(conn, principal, appointment_id)

    async def give_consent(
        self, principal: Principal, appointment_id: UUID, *, ip: str | None = None
    ) -> Consent:
        """The consultation's patient consents to its recording (audited)."""
        ensure_allowed(principal, Action.RECORDING_CONSENT)
        async with self._pool.acquire() as conn, conn.transaction():
            appointment = await self._appointment(conn, principal, appointment_id)
            consent = await store.give_consent(
                conn,
                appointment_id=appointment_id,
                clinic_id=appointment.clinic_id,
                patient_id=appointment.patient_id,
            )
            await self._audit.record(
                self._event(principal, "recording.consent.give", appointment, ip), conn
            )
        await self._changed(appointment_id)
        return consent

    async def withdraw_consent(
        self, principal: Principal, appointment_id: UUID, *, ip: str | None = None
    ) -> Consent | None:
        """No new recording may start; one already running is the SFU's to stop."""
        ensure_allowed(principal, Action.RECORDING_CONSENT)
        async with self._pool.acquire() as conn, conn.transaction():
            appointment = await self._appointment(conn, principal, appointment_id)
            consent = await store.withdraw_consent(conn, appointment_id)
            await self._audit.record(
                self._event(principal, "recording.consent.withdraw", appointment, ip), conn
            )
        await self._changed(appointment_id)
        return consent

    # --- the recording's life ----------------------------------------------------

    async def begin(
        self,
        principal: Principal,
        consultation_id: UUID,
        backend_recording_id: str,
        *,
        ip: str | None = None,
    ) -> Recording:
        """Record that the consultation's doctor started recording (the SFU's recording
        id); refused with ``recording_consent_required`` without the patient's consent.
        ``consultation_id`` is the appointment id, as the SFU names rooms. Idempotent."""
        ensure_allowed(principal, Action.RECORDING_START)
        if not 1 <= len(backend_recording_id) <= 200:
            raise Unprocessable("a backend recording id is 1 to 200 characters")
        async with self._pool.acquire() as conn, conn.transaction():
            appointment = await self._appointment(conn, principal, consultation_id)
            if appointment.doctor_id != principal.user_id:
                raise Forbidden("only the consultation's doctor records it")
            # FOR SHARE: a withdrawal waits for this transaction, never slips between.
            consent = await store.get_consent(conn, consultation_id, for_share=True)
            if consent is None or not consent.active:
                raise Conflict(
                    "the patient has not consented to recording this consultation",
                    code=ErrorCode.RECORDING_CONSENT_REQUIRED,
                )
            recording, created = await store.insert_recording(
                conn,
                recording_id=uuid4(),
                clinic_id=appointment.clinic_id,
                appointment_id=consultation_id,
                backend_recording_id=backend_recording_id,
                started_by=principal.user_id,
            )
            if created:
                await self._audit.record(
                    AuditEvent.by(
                        principal,
                        "recording.start",
                        "recording",
                        recording.id,
                        clinic_id=appointment.clinic_id,
                        ip=ip,
                        detail={
                            "appointment_id": str(consultation_id),
                            "patient_id": str(appointment.patient_id),
                        },
                    ),
                    conn,
                )
        if created:
            await self._changed(consultation_id)
        return recording

    async def find(self, consultation_id: UUID, backend_recording_id: str) -> Recording | None:
        """Our recording for the SFU's recording id (for its RECORDING_FINISHED event)."""
        return await store.by_backend_id(self._pool, consultation_id, backend_recording_id)

    async def ingest(
        self, recording_id: UUID, plain_path: Path | str, content_type: str
    ) -> Recording:
        """Seal the finished plaintext file straight into the store, then overwrite and
        unlink it. Idempotent: a recording already sealed (or final) only has its
        plaintext removed again. The temporary sealed file never holds plaintext."""
        plain = Path(plain_path)
        if not _CONTENT_TYPE.fullmatch(content_type):
            raise Unprocessable(f"not a media type: {content_type!r}")
        found = await store.get_recording(self._pool, recording_id)
        if found is None:
            raise NotFound("recording not found")
        if found.state in ("ready", "failed", "expired"):
            await asyncio.to_thread(overwrite_and_unlink, plain)
            return found
        attempt = uuid4()
        claimed = await store.claim_for_sealing(
            self._pool, recording_id, attempt, SEALING_LEASE_SECONDS
        )
        if claimed is None:
            raise Conflict("this recording is being sealed by another attempt")
        await self._changed(claimed.appointment_id)
        name = f"recordings/{claimed.clinic_id}/{recording_id}-{attempt.hex[:12]}.sealed"
        master = self._keys.current
        try:
            async with self._blobs.writer(name) as sink:
                sealed = await asyncio.to_thread(_seal_file, plain, sink, master, self._chunk_size)
        except BaseException as exc:
            # Nothing was stored (the writer commits whole or not at all): give the
            # lease back so that a retry may seal at once.
            await store.release_claim(self._pool, recording_id, attempt)
            await self._changed(claimed.appointment_id)
            if isinstance(exc, FileNotFoundError):
                raise NotFound("the recording's plaintext file is not there") from None
            raise
        try:
            ready = await self._commit_sealed(claimed, attempt, name, content_type, sealed, master)
        except BaseException:
            # Not recorded as ready: the object must not outlive the attempt.
            await self._blobs.delete(name)
            raise
        if ready is None:  # our lease ran out and another attempt took over
            await self._blobs.delete(name)
            raise Conflict("this recording was sealed by another attempt")
        await asyncio.to_thread(overwrite_and_unlink, plain)
        await self._changed(ready.appointment_id)
        return ready

    async def _commit_sealed(
        self,
        claimed: Recording,
        attempt: UUID,
        name: str,
        content_type: str,
        sealed: Sealed,
        master: MasterKey,
    ) -> Recording | None:
        recording_id = claimed.id
        async with self._pool.acquire() as conn, conn.transaction():
            ready = await store.mark_ready(
                conn,
                recording_id=recording_id,
                attempt=attempt,
                object_name=name,
                content_type=content_type,
                size=sealed.plaintext_size,
                sealed_size=sealed.sealed_size,
                key_version=master.version,
                wrapped_key=sealed.header.wrapped,
            )
            if ready is not None:
                await self._audit.record(
                    AuditEvent(
                        action="recording.sealed",
                        clinic_id=claimed.clinic_id,
                        object_type="recording",
                        object_id=str(recording_id),
                        detail={
                            "appointment_id": str(claimed.appointment_id),
                            "bytes": sealed.plaintext_size,
                            "key_version": master.version,
                        },
                    ),
                    conn,
                )
        return ready

    async def fail(self, recording_id: UUID, reason: str) -> Recording | None:
        """Final failure (the SFU could not produce a file); idempotent."""
        async with self._pool.acquire() as conn, conn.transaction():
            failed = await store.mark_failed(conn, recording_id, reason or "failed")
            if failed is not None:
                await self._audit.record(
                    AuditEvent(
                        action="recording.fail",
                        outcome="failure",
                        clinic_id=failed.clinic_id,
                        object_type="recording",
                        object_id=str(recording_id),
                        detail={"appointment_id": str(failed.appointment_id)},
                    ),
                    conn,
                )
        if failed is not None:
            await self._changed(failed.appointment_id)
        return failed

    async def state(self, consultation_id: UUID) -> RoomRecordingState:
        """The room's recording state, for the signaling broadcast. No scope check and
        no audit: the caller has already admitted whoever it tells."""
        async with self._pool.acquire() as conn:
            consent = await store.get_consent(conn, consultation_id)
            found = await store.list_for_appointment(conn, consultation_id)
        active = [r for r in found if r.state in store.ACTIVE_STATES]
        return RoomRecordingState(
            appointment_id=consultation_id,
            consent=consent is not None and consent.active,
            recording=bool(active),
            recording_id=active[-1].id if active else None,
        )

    # --- reading -------------------------------------------------------------------

    async def list_for(
        self, principal: Principal, appointment_id: UUID, *, ip: str | None = None
    ) -> tuple[RoomRecordingState, list[Recording]]:
        """The room's state and its recordings, scoped like the appointment (audited)."""
        async with self._pool.acquire() as conn, conn.transaction():
            appointment = await self._appointment(conn, principal, appointment_id)
            consent = await store.get_consent(conn, appointment_id)
            found = await store.list_for_appointment(conn, appointment_id)
            await self._audit.record(
                self._event(principal, "recording.list", appointment, ip, results=len(found)),
                conn,
            )
        active = [r for r in found if r.state in store.ACTIVE_STATES]
        room = RoomRecordingState(
            appointment_id=appointment_id,
            consent=consent is not None and consent.active,
            recording=bool(active),
            recording_id=active[-1].id if active else None,
        )
        return room, found

    async def play(
        self,
        principal: Principal,
        recording_id: UUID,
        range_header: str | None,
        *,
        ip: str | None = None,
    ) -> Playback:
        """Authorize, audit (in the transaction that reads the row) and open a playback
        of the bytes ``range_header`` asks for; only the chunks they touch are read."""
        async with self._pool.acquire() as conn, conn.transaction():
            recording, appointment = await self._playable(conn, principal, recording_id, "share")
            assert recording.size is not None
            wanted = parse_range(range_header, recording.size)
            detail: dict[str, str | int] = {
                "appointment_id": str(appointment.id),
                "patient_id": str(appointment.patient_id),
            }
            if wanted is not None:
                detail |= {"range_start": wanted.start, "range_end": wanted.end}
            await self._audit.record(
                AuditEvent.by(
                    principal,
                    "recording.play",
                    "recording",
                    recording_id,
                    clinic_id=recording.clinic_id,
                    ip=ip,
                    detail=detail,
                ),
                conn,
            )
        start = 0 if wanted is None else wanted.start
        end = recording.size if wanted is None else wanted.end

        async def damaged(exc: TeleconsultError, stage: str) -> None:
            await self._damaged(principal, recording, exc, stage, ip, detail)

        try:
            # The header, the final chunk and the first batch the range touches, all
            # before the answer's status goes out: a damaged object is a clean 409.
            opener = await open_object(self._blobs, self._keys, recording)
            chunks = stream_range(self._blobs, recording, opener, start, end)
            first = await anext(chunks, b"")
        except KeyUnavailable:
            raise  # our configuration, not the object: logged as a server failure
        except (SealError, NoSuchObject) as exc:  # a ready recording's object is gone
            await damaged(exc, "before_answer")
            raise Conflict(
                "the stored recording is damaged and cannot be played",
                code=ErrorCode.RECORDING_DAMAGED,
            ) from None
        return Playback(recording, wanted, recording.size, after_first(first, chunks, damaged))

    async def _damaged(
        self,
        principal: Principal,
        recording: Recording,
        exc: TeleconsultError,
        stage: str,
        ip: str | None,
        detail: dict[str, str | int],
    ) -> None:
        """Audit (its own transaction: the playback's is committed) and log, once, that
        a playback found the stored object damaged. The log line names the recording
        and what failed, never a byte of it."""
        logger.error(
            "recording %s is damaged (%s, found %s)", recording.id, exc, stage.replace("_", " ")
        )
        event = AuditEvent.by(
            principal,
            "recording.damaged",
            "recording",
            recording.id,
            clinic_id=recording.clinic_id,
            ip=ip,
            detail={**detail, "stage": stage, "reason": str(exc)[:200]},
        )
        async with self._pool.acquire() as conn, conn.transaction():
            await self._audit.record(replace(event, outcome="failure"), conn)

    # --- playback tickets (issue 13, pages) ---
    async def play_with_ticket(
        self, ticket: str, recording_id: UUID, range_header: str | None, *, ip: str | None = None
    ) -> Playback:
        """:meth:`play` as the ticket's principal, if the ticket is good for this recording
        and its login session is still live with the same user, clinic and role;
        ``not_found`` otherwise, like any bad ticket."""
        principal = PlaybackTickets(self._keys).redeem(ticket, recording_id)
        if not await still_current(self._sessions, principal):
            raise NotFound("recording not found")
        return await self.play(principal, recording_id, range_header, ip=ip)

    async def check_playable(self, principal: Principal, recording_id: UUID) -> Recording:
        """The media route's checks, without a playback: before a ticket is issued."""
        async with self._pool.acquire() as conn:
            recording, _ = await self._playable(conn, principal, recording_id)
        return recording

    async def _playable(
        self, conn: asyncpg.Connection, principal: Principal, recording_id: UUID, lock: str = ""
    ) -> tuple[Recording, Appointment]:
        """A ready recording ``principal`` may play (a doctor: of their own appointment),
        with its appointment; NotFound outside their scope, Conflict when not ready."""
        recording = await store.get_recording(conn, recording_id, lock=lock)
        appointment = (
            await scheduling.get_appointment(conn, recording.appointment_id) if recording else None
        )
        ensure_in_scope(principal, scope_of(appointment), "recording")
        assert recording is not None and appointment is not None
        if principal.role is Role.DOCTOR and appointment.doctor_id != principal.user_id:
            raise NotFound("recording not found")
        if recording.state != "ready" or recording.size is None:
            raise Conflict(
                f"the recording is {recording.state}", code=ErrorCode.RECORDING_NOT_READY
            )
        return recording, appointment

    # --- end playback tickets ---

    async def set_retention(
        self, principal: Principal, clinic_id: UUID, days: int, *, ip: str | None = None
    ) -> int:
        """A clinic admin sets how many days its recordings are kept (audited). It applies
        to recordings sealed from now on."""
        ensure_allowed(principal, Action.RECORDING_RETENTION)
        ensure_in_scope(principal, Scope(clinic_id), "clinic")
        async with self._pool.acquire() as conn, conn.transaction():
            before = await store.get_retention(conn, clinic_id)
            after = await store.set_retention(conn, clinic_id, days)
            if after is None or before is None:
                raise NotFound("clinic not found")
            await self._audit.record(
                AuditEvent.by(
                    principal,
                    "recording.retention.set",
                    "clinic",
                    clinic_id,
                    ip=ip,
                    detail={"days": after, "before": before},
                ),
                conn,
            )
        return after

    # --- retention and key rotation (upkeep.py) ---------------------------------------

    async def sweep_expired(self, *, limit: int = 50) -> int:
        """Expire ready recordings past their clinic's retention (:func:`upkeep.sweep_expired`);
        how many."""
        expired = await upkeep.sweep_expired(self._pool, self._audit, self._blobs, limit=limit)
        for appointment_id in {r.appointment_id for r in expired}:
            await self._changed(appointment_id)
        return len(expired)

    async def rotate(
        self,
        *,
        batch: int = 50,
        progress: Callable[[RotationProgress], None] | None = None,
    ) -> RotationReport:
        """Re-wrap every data key under the newest master key (:func:`upkeep.rotate`)."""
        return await upkeep.rotate(
            self._pool, self._audit, self._blobs, self._keys, batch=batch, progress=progress
        )

    @staticmethod
    def _event(
        principal: Principal,
        action: str,
        appointment: Appointment,
        ip: str | None,
        **detail: str | int,
    ) -> AuditEvent:
        return AuditEvent.by(
            principal,
            action,
            "appointment",
            appointment.id,
            clinic_id=appointment.clinic_id,
            ip=ip,
            detail={"patient_id": str(appointment.patient_id), **detail},
        )


def _seal_file(plain: Path, sink: BinaryIO, master: MasterKey, chunk_size: int) -> Sealed:
    with plain.open("rb") as source:
        return seal_stream(source, sink, master, chunk_size=chunk_size)
