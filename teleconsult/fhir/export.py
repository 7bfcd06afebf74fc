"""FHIR Bulk Data ``$export`` (HL7 Bulk Data Access IG v2): jobs, their worker, their files.

:class:`ExportService` answers the kick-off, status, cancel and file requests
(the transport is ``export_routes.py``); :class:`ExportWorker` runs the jobs.

Who gets what (docs/fhir.md). A job never yields more than its requester could
read resource by resource, decided again when the job runs, patient by patient:

* a doctor's export holds only their patient panel: the patients for whom
  ``records.access`` grants them, when each type is written, the scope of that
  type (``vitals`` for Observation, ``summary`` for the rest): a recent appointment,
  a care team membership, an active consent or a break-glass access. Of those
  patients' appointments and encounters, only the doctor's own. Patients without a
  basis are left out (not listed in ``error``: naming them would itself disclose
  who is a patient of the clinic);
* an admin's export holds the clinic's patients and the administrative resources
  an admin reads today (Patient, Practitioner, Organization, Appointment,
  Encounter), never clinical records (Observation, Consent).

"Group" is either the clinic (``Group/<clinic id>``: every patient, admins only)
or a doctor's patient panel as above (``Group/<doctor's user id>``: that doctor,
or an admin of the clinic, who gets its administrative resources).

Jobs survive restarts: the worker holds a job by a lease it renews; a server
that dies leaves the lease to run out and any worker resumes the job, keeping
the files already recorded and writing the interrupted one again. Files are
streamed: rows come from a server-side cursor and leave in chunks, so memory
stays flat however many resources a file holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from uuid import UUID

import asyncpg

from teleconsult.audit.store import AuditEvent, AuditTrail
from teleconsult.core.errors import BadRequest, NotFound, RateLimited
from teleconsult.core.identity import Principal, Role
from teleconsult.core.policy import OutOfScope
from teleconsult.core.settings import FhirSettings
from teleconsult.core.tasks import cancel_and_wait
from teleconsult.fhir import export_store, store
from teleconsult.fhir.export_store import ExportFile, ExportJob
from teleconsult.fhir.service import BILLING_TYPES, CLINICAL_SCOPES, COMPARTMENT_ORDER, has_basis
from teleconsult.fhir.store import Filter, Reach, Table
from teleconsult.fhir.views import operation_outcome
from teleconsult.records.fieldcrypt import FieldCrypt

logger = logging.getLogger(__name__)

# Patient- and Group-level exports: the patients' compartments.
PATIENT_TYPES = COMPARTMENT_ORDER
# Every type $export can write, in the order files are written.
EXPORT_TYPES = ("Organization", "Practitioner", *PATIENT_TYPES)
# Admins export administrative resources only: no clinical read (records/access.py).
ADMIN_EXCLUDED = frozenset(CLINICAL_SCOPES)
# Doctors read no invoices (payments authorization: the patient, front desk, admins).
DOCTOR_EXCLUDED = BILLING_TYPES
OUTPUT_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
MAX_ACTIVE_JOBS = 3
CHUNK_LINES = 1000


@dataclass(frozen=True)
class JobStatus:
    job: ExportJob
    files: list[ExportFile]

    @property
    def progress(self) -> str:
        total = len(self.job.types)
        return f"{self.job.types_done} of {total} resource types done"


def job_dir(root: Path, job_id: UUID) -> Path:
    return root / str(job_id)


class ExportService:
    """Kick-off, status, cancel and file access; safe to call concurrently."""

    def __init__(self, *, pool: asyncpg.Pool, audit: AuditTrail, settings: FhirSettings) -> None:
        self._pool = pool
        self._audit = audit
        self.settings = settings

    async def kick_off(
        self,
        principal: Principal,
        *,
        level: str,
        group_id: UUID | None,
        types: list[str] | None,
        since: datetime | None,
        output_format: str | None,
        request_url: str,
        ip: str | None,
    ) -> ExportJob:
        if output_format is not None and output_format not in OUTPUT_FORMATS:
            raise BadRequest(
                f"_outputFormat {output_format!r} is not supported; use application/fhir+ndjson"
            )
        allowed: tuple[str, ...] = EXPORT_TYPES if level == "system" else PATIENT_TYPES
        if principal.role is Role.ADMIN:
            allowed = tuple(t for t in allowed if t not in ADMIN_EXCLUDED)
        if principal.role is Role.DOCTOR:
            allowed = tuple(t for t in allowed if t not in DOCTOR_EXCLUDED)
        if types is not None:
            extra = sorted(set(types) - set(allowed))
            if extra:
                raise BadRequest(
                    f"_type {extra} cannot be exported at {level} level; "
                    f"supported: {', '.join(allowed)}"
                )
        chosen = [t for t in allowed if types is None or t in types]
        async with self._pool.acquire() as conn, conn.transaction():
            if group_id is not None:
                await _check_group(conn, principal, group_id)
            if await export_store.count_active(conn, principal.user_id) >= MAX_ACTIVE_JOBS:
                raise RateLimited(
                    f"at most {MAX_ACTIVE_JOBS} exports may run at once; wait for one to finish",
                    retry_after=self.settings.retry_after,
                )
            job = await export_store.insert_job(
                conn,
                clinic_id=principal.clinic_id,
                requested_by=principal.user_id,
                requester_role=principal.role.value,
                level=level,
                group_id=group_id,
                types=chosen,
                since=since,
                request_url=request_url[:2000],
            )
            await self._audit.record(
                AuditEvent.by(
                    principal,
                    "fhir.export.start",
                    "fhir_export",
                    job.id,
                    ip=ip,
                    detail={"level": level, "types": ",".join(chosen)},
                ),
                conn,
            )
        return job

    async def _own_job(
        self, conn: asyncpg.Connection, principal: Principal, job_id: UUID
    ) -> ExportJob:
        job = await export_store.get_job(conn, job_id)
        if job is None or job.status == "cancelled":
            raise NotFound("no such export")
        if job.requested_by != principal.user_id:
            raise OutOfScope("no such export")
        return job

    async def status(self, principal: Principal, job_id: UUID) -> JobStatus:
        """The job and its files; RateLimited when polled faster than ``retry_after``."""
        async with self._pool.acquire() as conn, conn.transaction():
            job = await self._own_job(conn, principal, job_id)
            if job.status in export_store.ACTIVE and not await export_store.note_poll(
                conn, job_id, self.settings.retry_after
            ):
                raise RateLimited(
                    "polled too often; wait for Retry-After", retry_after=self.settings.retry_after
                )
            return JobStatus(job, await export_store.files(conn, job_id))

    async def cancel(self, principal: Principal, job_id: UUID, *, ip: str | None) -> None:
        """Cancel a running job or delete a finished one; its files are removed."""
        async with self._pool.acquire() as conn, conn.transaction():
            await self._own_job(conn, principal, job_id)
            if not await export_store.cancel(conn, job_id):
                raise NotFound("no such export")
            await self._audit.record(
                AuditEvent.by(principal, "fhir.export.cancel", "fhir_export", job_id, ip=ip), conn
            )
        await asyncio.to_thread(
            shutil.rmtree, job_dir(self.settings.export_dir, job_id), ignore_errors=True
        )

    async def file(
        self, principal: Principal, job_id: UUID, file_name: str, *, ip: str | None
    ) -> Path:
        """The path of one finished file of the caller's completed job (audited)."""
        async with self._pool.acquire() as conn, conn.transaction():
            job = await self._own_job(conn, principal, job_id)
            if job.status not in ("completed", "failed"):
                raise NotFound("the export is not finished")
            names = {f.file_name for f in await export_store.files(conn, job_id)}
            if file_name not in names:
                raise NotFound("no such file in this export")
            await self._audit.record(
                AuditEvent.by(
                    principal,
                    "fhir.export.download",
                    "fhir_export",
                    job_id,
                    ip=ip,
                    detail={"file": file_name},
                ),
                conn,
            )
        path = job_dir(self.settings.export_dir, job_id) / file_name
        if not path.is_file():
            raise NotFound("the file is no longer available")
        return path


async def _check_group(conn: asyncpg.Connection, principal: Principal, group_id: UUID) -> None:
    if group_id == principal.clinic_id:
        if principal.role is not Role.ADMIN:
            raise OutOfScope("group not found")
        return
    if not await store.doctor_in_clinic(conn, principal.clinic_id, group_id):
        raise NotFound("group not found")
    if principal.role is not Role.ADMIN and principal.user_id != group_id:
        raise OutOfScope("group not found")


async def _panel(
    conn: asyncpg.Connection, clinic_id: UUID, doctor_id: UUID, scope: str
) -> list[UUID]:
    """The doctor's patient panel for ``scope``: the clinic's patients for whom
    ``records.access`` grants that doctor the scope now."""
    # Rebuilt from the job: records.access reads only the user, the clinic and the role.
    doctor = Principal(doctor_id, clinic_id, Role.DOCTOR, session_id=doctor_id)
    candidates = await store.clinical_candidates(conn, clinic_id, doctor_id)
    return [p for p in candidates if await has_basis(conn, doctor, p, scope)]


async def job_reach(conn: asyncpg.Connection, job: ExportJob, resource_type: str) -> Reach:
    """Whose rows a job may write, decided when the type is written (module doc).

    A doctor's job (and an admin's Group of a doctor): the doctor's panel for the
    type's scope (``summary`` for the administrative types); an admin's system or
    Patient export, or Group of the clinic: every patient of the clinic."""
    if resource_type in BILLING_TYPES and job.requester_role != Role.ADMIN.value:
        raise PermissionError(f"role {job.requester_role} may not export invoices")
    compartment = ("Patient", "Appointment", "Encounter", *BILLING_TYPES, *CLINICAL_SCOPES)
    if resource_type not in compartment:
        return Reach(clinic_id=job.clinic_id)  # the directory: no patient's compartment
    scope = CLINICAL_SCOPES.get(resource_type, "summary")
    own = None
    if job.requester_role == Role.ADMIN.value:
        if resource_type in ADMIN_EXCLUDED:
            raise PermissionError("admins export no clinical records")
        if job.level != "group" or job.group_id in (None, job.clinic_id):
            return Reach(clinic_id=job.clinic_id)
        doctor = job.group_id
    elif job.requester_role == Role.DOCTOR.value:
        doctor = job.requested_by
        own = doctor if resource_type in ("Appointment", "Encounter") else None
    else:
        raise PermissionError(f"role {job.requester_role} may not export")
    assert doctor is not None
    patients = await _panel(conn, job.clinic_id, doctor, scope)
    return Reach(clinic_id=job.clinic_id, patients=patients, own_doctor=own)


class _LeaseLost(Exception):
    """The job was cancelled or taken over: stop writing it."""


class ExportWorker:
    """Runs export jobs one at a time in this process; ``start``/``close`` own its task."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        audit: AuditTrail,
        tables: dict[str, Table],
        settings: FhirSettings,
        crypt: FieldCrypt | None = None,
    ) -> None:
        self._pool = pool
        self._audit = audit
        self._tables = tables
        self._crypt = crypt
        self._settings = settings
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="fhir-export-worker")

    async def close(self) -> None:
        await cancel_and_wait([self._task])
        self._task = None

    def wake(self) -> None:
        """A job was queued: look now rather than at the next poll."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                busy = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("fhir export worker failed; retrying")
                busy = False
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._settings.poll_interval)
                self._wake.clear()

    async def run_once(self) -> bool:
        """Claim and run one job; False when there was none."""
        async with self._pool.acquire() as conn:
            job = await export_store.claim(conn, self.owner, self._settings.lease_seconds)
            if job is None:
                await self._remove_expired(conn)
                return False
        logger.info("fhir export %s: running (attempt %s)", job.id, job.attempts)
        try:
            await self._process(job)
        except _LeaseLost:
            logger.info("fhir export %s: cancelled or taken over; stopped", job.id)
        except Exception as exc:
            logger.exception("fhir export %s failed", job.id)
            await self._fail(job, type(exc).__name__)
        return True

    async def _remove_expired(self, conn: asyncpg.Connection) -> None:
        for job_id in await export_store.expired_jobs(conn, self._settings.expire_hours):
            await export_store.cancel(conn, job_id)
            await asyncio.to_thread(
                shutil.rmtree, job_dir(self._settings.export_dir, job_id), ignore_errors=True
            )

    async def _process(self, job: ExportJob) -> None:
        folder = job_dir(self._settings.export_dir, job.id)
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        async with self._pool.acquire() as conn:
            done = {f.seq for f in await export_store.files(conn, job.id)}
        total = 0
        for seq, resource_type in enumerate(job.types):
            if seq in done:
                logger.info("fhir export %s: %s already written; kept", job.id, resource_type)
                continue
            name = f"{seq:02d}-{resource_type}.ndjson"
            count = await self._write(job, resource_type, folder / name)
            total += count
            async with self._pool.acquire() as conn:
                if not await export_store.add_file(
                    conn,
                    job.id,
                    self.owner,
                    seq=seq,
                    resource_type=resource_type,
                    file_name=name,
                    count=count,
                ):
                    raise _LeaseLost
        async with self._pool.acquire() as conn, conn.transaction():
            if not await export_store.finish(
                conn, job.id, self.owner, status="completed", failure=None
            ):
                raise _LeaseLost
            await self._audit.record(
                AuditEvent(
                    action="fhir.export.complete",
                    actor_id=job.requested_by,
                    actor_role=job.requester_role,
                    clinic_id=job.clinic_id,
                    object_type="fhir_export",
                    object_id=str(job.id),
                    detail={"resources": total, "attempts": job.attempts},
                ),
                conn,
            )
        logger.info("fhir export %s: completed", job.id)

    async def _write(self, job: ExportJob, resource_type: str, path: Path) -> int:
        """Stream one type into ``path`` (via ``.part``, renamed when whole)."""
        table = self._tables[resource_type]
        keys = None
        async with self._pool.acquire() as conn:
            reach = await job_reach(conn, job, resource_type)
            if table.keyed_view is not None:
                # Loaded outside the read-only transaction (the first use makes the key);
                # only rows of the patients ``reach`` allows are decrypted.
                if self._crypt is None:
                    raise RuntimeError("the export worker has no field keys")
                keys = await self._crypt.for_clinic(conn, job.clinic_id)
        flt = Filter(updated_after=job.since, updated_until=job.transaction_time)
        partial = path.with_suffix(".part")
        handle = await asyncio.to_thread(partial.open, "w", encoding="utf-8")
        lease_every = max(self._settings.lease_seconds / 3, 0.05)
        renewed = time.monotonic()
        started = time.monotonic()
        limit = self._settings.max_rows_per_second
        count = 0
        lines: list[str] = []
        try:
            async with (
                self._pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                async for _, resource in store.stream(conn, table, reach, flt, keys=keys):
                    lines.append(json.dumps(resource, separators=(",", ":")))
                    count += 1
                    if len(lines) >= CHUNK_LINES:
                        await asyncio.to_thread(handle.write, "\n".join(lines) + "\n")
                        lines.clear()
                    if limit and count % 50 == 0:
                        ahead = count / limit - (time.monotonic() - started)
                        if ahead > 0:
                            await asyncio.sleep(ahead)
                    if time.monotonic() - renewed >= lease_every:
                        await self._renew(job)
                        renewed = time.monotonic()
            if lines:
                await asyncio.to_thread(handle.write, "\n".join(lines) + "\n")
        finally:
            await asyncio.to_thread(handle.close)
        await self._renew(job)
        await asyncio.to_thread(os.replace, partial, path)
        return count

    async def _renew(self, job: ExportJob) -> None:
        async with self._pool.acquire() as conn:
            if not await export_store.renew(conn, job.id, self.owner, self._settings.lease_seconds):
                raise _LeaseLost

    async def _fail(self, job: ExportJob, reason: str) -> None:
        """Finish the job as failed, with an error file the manifest lists."""
        name = "error.ndjson"
        outcome = operation_outcome("exception", f"the export failed ({reason}); start it again")
        path = job_dir(self._settings.export_dir, job.id) / name
        with contextlib.suppress(OSError):
            await asyncio.to_thread(path.write_text, json.dumps(outcome) + "\n", "utf-8")
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await export_store.add_file(
                    conn,
                    job.id,
                    self.owner,
                    seq=len(job.types),
                    resource_type="OperationOutcome",
                    file_name=name,
                    count=1,
                    kind="error",
                )
                await export_store.finish(
                    conn, job.id, self.owner, status="failed", failure=reason[:500]
                )
        except Exception:
            logger.exception("fhir export %s: could not record the failure", job.id)
