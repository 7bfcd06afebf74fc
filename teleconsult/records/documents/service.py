"""Documents (lab results, images, reports): uploaded in ordered chunks, checked against
the declared size, SHA-256 and content type (magic bytes), then sealed into the blob
store of recordings under the recording master keys; versioned, never replaced.

Limits: ``MAX_BYTES`` per document, ``CHUNK_BYTES`` per chunk, an upload lives
``UPLOAD_HOURS``. While an upload is in progress its chunks wait in the database, each
encrypted with the clinic's field key (the offset bound into the associated data), so
no plaintext touches a disk."""

from __future__ import annotations

import asyncio
import hashlib
import io
from dataclasses import dataclass
from datetime import datetime
from typing import Final
from uuid import UUID, uuid4

import asyncpg

from teleconsult.audit import AuditEvent
from teleconsult.core.errors import (
    BadRequest,
    Conflict,
    FieldError,
    NotFound,
    PayloadTooLarge,
    Unprocessable,
    UnsupportedMediaType,
)
from teleconsult.core.identity import Principal
from teleconsult.recording.keys import KeyRing
from teleconsult.recording.seal import file_reader, open_range, seal_stream
from teleconsult.recording.storage import BlobStore
from teleconsult.records.base import RecordsDeps, RecordsService
from teleconsult.records.documents import content, store
from teleconsult.records.documents.store import DocumentRow, UploadRow, VersionRow
from teleconsult.records.fieldcrypt import ClinicKeys

MAX_BYTES: Final = 20 * 1024 * 1024
CHUNK_BYTES: Final = 512 * 1024
UPLOAD_HOURS: Final = 24
SCOPE: Final = "documents"


@dataclass(frozen=True)
class Document:
    id: UUID
    patient_id: UUID
    title: str
    category: str
    created_by: UUID
    created_at: datetime
    versions: list[VersionRow]


@dataclass(frozen=True)
class Upload:
    id: UUID
    received: int
    size: int
    chunk_size: int
    expires_at: datetime


@dataclass(frozen=True)
class Content:
    body: bytes
    content_type: str
    filename: str


def _chunk_column(offset: int) -> str:
    return f"data_ct@{offset}"


def open_document(keys: ClinicKeys, row: DocumentRow, versions: list[VersionRow]) -> Document:
    return Document(
        id=row.id,
        patient_id=row.patient_id,
        title=keys.decrypt("documents", "title_ct", row.id, row.title_ct),
        category=row.category,
        created_by=row.created_by,
        created_at=row.created_at,
        versions=versions,
    )


class DocumentService(RecordsService):
    def __init__(self, deps: RecordsDeps, *, blobs: BlobStore, keys: KeyRing) -> None:
        super().__init__(deps)
        self._blobs = blobs
        self._keys = keys

    async def sweep_expired_uploads(self, *, limit: int = 50) -> int:
        """Delete uploads past their expiry with their sealed chunks, one batch in one
        transaction, one ``document.upload_expire`` audit row each; how many."""
        async with self._pool.acquire() as conn, conn.transaction():
            due = await store.lock_expired_uploads(conn, limit=limit)
            if not due:
                return 0
            await store.drop_uploads(conn, [u.id for u in due])
            await self._audit.record_many(
                [
                    AuditEvent(
                        action="document.upload_expire",
                        clinic_id=u.clinic_id,
                        object_type="document_upload",
                        object_id=str(u.id),
                        detail={"patient_id": str(u.patient_id), "received": u.received},
                    )
                    for u in due
                ],
                conn,
            )
        return len(due)

    async def start_upload(
        self,
        principal: Principal,
        patient_id: UUID,
        *,
        document_id: UUID | None,
        title: str | None,
        category: str | None,
        content_type: str,
        size: int,
        sha256: bytes,
        ip: str | None,
    ) -> Upload:
        if size > MAX_BYTES:
            raise PayloadTooLarge(f"a document is at most {MAX_BYTES} bytes")
        if (document_id is None) != (title is not None and category is not None):
            raise BadRequest(
                "give document_id (a new version) or title and category (a new document)",
                fields=[FieldError("body.document_id", "or title and category")],
            )
        async with self._access(principal, patient_id, SCOPE, need="write") as access:
            if (
                document_id is not None
                and await store.document(access.conn, patient_id, document_id) is None
            ):
                raise NotFound("document not found")
            upload_id = uuid4()
            row = await store.insert_upload(
                access.conn,
                upload_id=upload_id,
                clinic_id=access.basis.clinic_id,
                patient_id=patient_id,
                document_id=document_id,
                title_ct=None
                if title is None
                else access.keys.encrypt("document_uploads", "title_ct", upload_id, title),
                category=category,
                content_type=content_type,
                size=size,
                sha256=sha256,
                created_by=principal.user_id,
                hours=UPLOAD_HOURS,
            )
            await self._record(
                access,
                principal,
                "document.upload_start",
                ip=ip,
                object_type="document_upload",
                object_id=upload_id,
                size=size,
            )
        return Upload(row.id, 0, row.size, CHUNK_BYTES, row.expires_at)

    async def _upload(
        self, conn: asyncpg.Connection, patient_id: UUID, upload_id: UUID
    ) -> UploadRow:
        found = await store.upload(conn, patient_id, upload_id)
        if found is None:
            raise NotFound("upload not found or expired")
        return found

    async def put_chunk(
        self,
        principal: Principal,
        patient_id: UUID,
        upload_id: UUID,
        *,
        offset: int,
        data: bytes,
        ip: str | None,
    ) -> Upload:
        """Append a chunk at ``offset`` (the bytes received so far). Sending again a chunk
        already received is a no-op (a retry after a lost answer)."""
        if not 0 < len(data) <= CHUNK_BYTES:
            raise PayloadTooLarge(f"a chunk is 1 to {CHUNK_BYTES} bytes")
        async with self._access(principal, patient_id, SCOPE, need="write") as access:
            upload = await self._upload(access.conn, patient_id, upload_id)
            received = upload.received
            if offset + len(data) <= received:
                return Upload(upload.id, received, upload.size, CHUNK_BYTES, upload.expires_at)
            if offset != received:
                raise Conflict(f"expected the chunk at offset {received}")
            if received + len(data) > upload.size:
                raise BadRequest(
                    "more bytes than declared", fields=[FieldError("body", "past the size")]
                )
            sealed = access.keys.encrypt_bytes(
                "document_upload_chunks", _chunk_column(offset), upload_id, data
            )
            received = await store.add_chunk(access.conn, upload_id, offset, sealed, len(data))
            await self._record(
                access,
                principal,
                "document.upload_chunk",
                ip=ip,
                object_type="document_upload",
                object_id=upload_id,
                offset=offset,
            )
        return Upload(upload.id, received, upload.size, CHUNK_BYTES, upload.expires_at)

    async def complete(
        self, principal: Principal, patient_id: UUID, upload_id: UUID, *, ip: str | None
    ) -> Document:
        async with self._access(principal, patient_id, SCOPE, need="write") as access:
            conn, keys = access.conn, access.keys
            upload = await self._upload(conn, patient_id, upload_id)
            if upload.received != upload.size:
                raise Conflict(f"{upload.received} of {upload.size} bytes received")
            plain = b"".join(
                keys.decrypt_bytes("document_upload_chunks", _chunk_column(o), upload_id, ct)
                for o, ct in await store.chunks(conn, upload_id)
            )
            problem: Exception | None = None
            if hashlib.sha256(plain).digest() != upload.sha256:
                problem = Unprocessable(
                    "the content does not match its SHA-256: upload it again",
                    fields=[FieldError("body.sha256", "mismatch")],
                )
            elif not content.matches(upload.content_type, plain[:132]):
                problem = UnsupportedMediaType(
                    f"the content is not {upload.content_type}: upload it again"
                )
            if problem is not None:
                await store.drop_upload(conn, upload_id)
                await self._record(
                    access,
                    principal,
                    "document.upload_refused",
                    ip=ip,
                    object_type="document_upload",
                    object_id=upload_id,
                )
                # Commit the drop and its audit row, then refuse.
                refused = problem
            else:
                refused = None
                document_id = upload.document_id or uuid4()
                if upload.document_id is None:
                    assert upload.title_ct is not None and upload.category is not None
                    title = keys.decrypt("document_uploads", "title_ct", upload_id, upload.title_ct)
                    await store.insert_document(
                        conn,
                        document_id=document_id,
                        clinic_id=upload.clinic_id,
                        patient_id=patient_id,
                        title_ct=keys.encrypt("documents", "title_ct", document_id, title),
                        category=upload.category,
                        created_by=principal.user_id,
                    )
                version_id = uuid4()
                name = f"documents/{upload.clinic_id}/{document_id}/{version_id}"
                async with self._blobs.writer(name) as handle:
                    await asyncio.to_thread(
                        seal_stream, io.BytesIO(plain), handle, self._keys.current
                    )
                await store.insert_version(
                    conn,
                    version_id=version_id,
                    document_id=document_id,
                    content_type=upload.content_type,
                    size=upload.size,
                    sha256=upload.sha256,
                    blob_name=name,
                    uploaded_by=principal.user_id,
                )
                await store.drop_upload(conn, upload_id)
                await self._record(
                    access,
                    principal,
                    "document.create",
                    ip=ip,
                    object_type="document",
                    object_id=document_id,
                    size=upload.size,
                )
        if refused is not None:
            raise refused
        return await self.get(principal, patient_id, document_id, ip=ip)

    async def list_documents(
        self, principal: Principal, patient_id: UUID, *, ip: str | None
    ) -> list[Document]:
        async with self._access(principal, patient_id, SCOPE) as access:
            rows = await store.documents(access.conn, patient_id)
            versions = await store.versions(access.conn, [r.id for r in rows])
            await self._record(access, principal, "document.list", ip=ip, results=len(rows))
        return [
            open_document(access.keys, r, [v for v in versions if v.document_id == r.id])
            for r in rows
        ]

    async def get(
        self, principal: Principal, patient_id: UUID, document_id: UUID, *, ip: str | None
    ) -> Document:
        async with self._access(principal, patient_id, SCOPE) as access:
            row = await store.document(access.conn, patient_id, document_id)
            if row is None:
                raise NotFound("document not found")
            versions = await store.versions(access.conn, [row.id])
            await self._record(
                access,
                principal,
                "document.read",
                ip=ip,
                object_type="document",
                object_id=row.id,
            )
        return open_document(access.keys, row, versions)

    async def content(
        self,
        principal: Principal,
        patient_id: UUID,
        document_id: UUID,
        *,
        version: int | None,
        ip: str | None,
    ) -> Content:
        async with self._access(principal, patient_id, SCOPE) as access:
            row = await store.document(access.conn, patient_id, document_id)
            versions = [] if row is None else await store.versions(access.conn, [row.id])
            chosen = [v for v in versions if version is None or v.version == version]
            if row is None or not chosen:
                raise NotFound("document or version not found")
            wanted = chosen[-1]
            await self._record(
                access,
                principal,
                "document.download",
                ip=ip,
                object_type="document",
                object_id=row.id,
                version=wanted.version,
            )
        sealed_size = await self._blobs.size(wanted.blob_name)
        if sealed_size is None:
            raise NotFound("the document's content is gone")
        raw = await self._blobs.get_range(wanted.blob_name, 0, sealed_size)
        body = await asyncio.to_thread(
            lambda: b"".join(open_range(file_reader(io.BytesIO(raw)), sealed_size, self._keys.get))
        )
        extension = content.EXTENSIONS[wanted.content_type]
        return Content(body, wanted.content_type, f"{document_id}-v{wanted.version}.{extension}")
