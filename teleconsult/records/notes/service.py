"""Clinical notes: append-only and versioned. An amendment is a new version pointing at
the one it supersedes; nothing is edited (the database refuses it). Bodies are
encrypted per version."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID, uuid4

from teleconsult.core.errors import Conflict, ErrorCode, FieldError, NotFound, Unprocessable
from teleconsult.core.identity import Principal
from teleconsult.records.base import RecordsService
from teleconsult.records.fieldcrypt import ClinicKeys
from teleconsult.records.notes import store
from teleconsult.records.notes.store import VersionRow

TABLE, COLUMN = "clinical_note_versions", "body_ct"


@dataclass(frozen=True)
class NoteVersion:
    id: UUID  # the note (stable across versions)
    version_id: UUID
    version: int
    patient_id: UUID
    consultation_id: UUID | None
    author_id: UUID
    body: str
    supersedes: UUID | None
    created_at: datetime  # when the note was first written
    version_created_at: datetime


def open_version(keys: ClinicKeys, row: VersionRow) -> NoteVersion:
    return NoteVersion(
        id=row.note_id,
        version_id=row.id,
        version=row.version,
        patient_id=row.patient_id,
        consultation_id=row.consultation_id,
        author_id=row.author_id,
        body=keys.decrypt(TABLE, COLUMN, row.id, row.body_ct),
        supersedes=row.supersedes,
        created_at=row.note_created_at,
        version_created_at=row.created_at,
    )


class NotesService(RecordsService):
    async def create(
        self,
        principal: Principal,
        patient_id: UUID,
        body: str,
        *,
        consultation_id: UUID | None = None,
        ip: str | None,
    ) -> NoteVersion:
        async with self._access(principal, patient_id, "notes", need="write") as access:
            if consultation_id is not None and not await store.consultation_of_patient(
                access.conn, consultation_id, patient_id
            ):
                raise Unprocessable(
                    "not a consultation of this patient",
                    fields=[FieldError("body.consultation_id", "unknown consultation")],
                )
            version_id = uuid4()
            row = await store.insert_first(
                access.conn,
                version_id=version_id,
                clinic_id=access.basis.clinic_id,
                patient_id=patient_id,
                consultation_id=consultation_id,
                author_id=principal.user_id,
                body_ct=access.keys.encrypt(TABLE, COLUMN, version_id, body),
            )
            await self._record(
                access, principal, "patient.notes.create", ip=ip, note_id=str(row.note_id)
            )
        return open_version(access.keys, row)

    async def amend(
        self,
        principal: Principal,
        patient_id: UUID,
        note_id: UUID,
        body: str,
        *,
        based_on_version: int | None,
        ip: str | None,
    ) -> NoteVersion:
        async with self._access(principal, patient_id, "notes", need="write") as access:
            previous = await store.latest(access.conn, patient_id, note_id)
            if previous is None:
                raise NotFound("note not found")
            if based_on_version is not None and based_on_version != previous.version:
                raise Conflict(
                    f"the note is at version {previous.version}: read it, then amend",
                    code=ErrorCode.STALE_VERSION,
                )
            version_id = uuid4()
            row = await store.insert_amendment(
                access.conn,
                version_id=version_id,
                previous=previous,
                clinic_id=access.basis.clinic_id,
                author_id=principal.user_id,
                body_ct=access.keys.encrypt(TABLE, COLUMN, version_id, body),
            )
            if row is None:
                raise Conflict(
                    "another amendment came first: read the note, then amend",
                    code=ErrorCode.STALE_VERSION,
                )
            await self._record(
                access,
                principal,
                "patient.notes.amend",
                ip=ip,
                note_id=str(note_id),
                version=row.version,
            )
        return open_version(access.keys, row)

    async def list_notes(
        self,
        principal: Principal,
        patient_id: UUID,
        *,
        after: tuple[datetime, UUID] | None,
        limit: int,
        ip: str | None,
    ) -> list[NoteVersion]:
        async with self._access(principal, patient_id, "notes") as access:
            rows = await store.latest_page(
                access.conn, patient_id=patient_id, after=after, limit=limit
            )
            await self._record(access, principal, "patient.notes.read", ip=ip, results=len(rows))
        return [open_version(access.keys, row) for row in rows]

    async def history(
        self, principal: Principal, patient_id: UUID, note_id: UUID, *, ip: str | None
    ) -> list[NoteVersion]:
        async with self._access(principal, patient_id, "notes") as access:
            rows = await store.history(access.conn, patient_id, note_id)
            if not rows:
                raise NotFound("note not found")
            await self._record(
                access,
                principal,
                "patient.notes.history",
                ip=ip,
                note_id=str(note_id),
                results=len(rows),
            )
        return [open_version(access.keys, row) for row in rows]
