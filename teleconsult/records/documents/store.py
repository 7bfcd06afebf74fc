"""SQL of documents, their versions and uploads in progress (migration 0017)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias
from uuid import UUID

import asyncpg

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"


@dataclass(frozen=True)
class UploadRow:
    id: UUID
    clinic_id: UUID
    patient_id: UUID
    document_id: UUID | None
    title_ct: bytes | None
    category: str | None
    content_type: str
    size: int
    sha256: bytes
    received: int
    created_by: UUID
    expires_at: datetime


@dataclass(frozen=True)
class DocumentRow:
    id: UUID
    patient_id: UUID
    title_ct: bytes
    category: str
    created_by: UUID
    created_at: datetime


@dataclass(frozen=True)
class VersionRow:
    id: UUID
    document_id: UUID
    version: int
    content_type: str
    size: int
    sha256: bytes
    blob_name: str
    uploaded_by: UUID
    created_at: datetime


_UPLOAD = (
    "id, clinic_id, patient_id, document_id, title_ct, category, content_type, size, sha256, "
    "received, created_by, expires_at"
)
_DOC = "id, patient_id, title_ct, category, created_by, created_at"
_VERSION = (
    "id, document_id, version, content_type, size, sha256, blob_name, uploaded_by, created_at"
)


async def document(conn: Conn, patient_id: UUID, document_id: UUID) -> DocumentRow | None:
    row = await conn.fetchrow(
        f"SELECT {_DOC} FROM documents WHERE id = $2 AND patient_id = $1", patient_id, document_id
    )
    return None if row is None else DocumentRow(**dict(row))


async def insert_upload(
    conn: Conn,
    *,
    upload_id: UUID,
    clinic_id: UUID,
    patient_id: UUID,
    document_id: UUID | None,
    title_ct: bytes | None,
    category: str | None,
    content_type: str,
    size: int,
    sha256: bytes,
    created_by: UUID,
    hours: int,
) -> UploadRow:
    row = await conn.fetchrow(
        f"""
        INSERT INTO document_uploads (id, clinic_id, patient_id, document_id, title_ct,
            category, content_type, size, sha256, created_by, expires_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now() + make_interval(hours => $11))
        RETURNING {_UPLOAD}
        """,
        upload_id,
        clinic_id,
        patient_id,
        document_id,
        title_ct,
        category,
        content_type,
        size,
        sha256,
        created_by,
        hours,
    )
    assert row is not None
    return UploadRow(**dict(row))


async def upload(conn: Conn, patient_id: UUID, upload_id: UUID) -> UploadRow | None:
    """The upload, locked for this transaction, unless it expired."""
    row = await conn.fetchrow(
        f"SELECT {_UPLOAD} FROM document_uploads WHERE id = $2 AND patient_id = $1 "
        "AND expires_at > now() FOR UPDATE",
        patient_id,
        upload_id,
    )
    return None if row is None else UploadRow(**dict(row))


async def add_chunk(conn: Conn, upload_id: UUID, offset: int, data_ct: bytes, length: int) -> int:
    received: int = await conn.fetchval(
        'WITH c AS (INSERT INTO document_upload_chunks (upload_id, "offset", data_ct) '
        "VALUES ($1, $2, $3)) "
        "UPDATE document_uploads SET received = received + $4 WHERE id = $1 RETURNING received",
        upload_id,
        offset,
        data_ct,
        length,
    )
    return received


async def chunks(conn: Conn, upload_id: UUID) -> list[tuple[int, bytes]]:
    rows = await conn.fetch(
        'SELECT "offset", data_ct FROM document_upload_chunks WHERE upload_id = $1 '
        'ORDER BY "offset"',
        upload_id,
    )
    return [(row["offset"], row["data_ct"]) for row in rows]


async def drop_upload(conn: Conn, upload_id: UUID) -> None:
    await conn.execute("DELETE FROM document_uploads WHERE id = $1", upload_id)


async def insert_document(
    conn: Conn,
    *,
    document_id: UUID,
    clinic_id: UUID,
    patient_id: UUID,
    title_ct: bytes,
    category: str,
    created_by: UUID,
) -> None:
    await conn.execute(
        "INSERT INTO documents (id, clinic_id, patient_id, title_ct, category, created_by) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        document_id,
        clinic_id,
        patient_id,
        title_ct,
        category,
        created_by,
    )


async def insert_version(
    conn: Conn,
    *,
    version_id: UUID,
    document_id: UUID,
    content_type: str,
    size: int,
    sha256: bytes,
    blob_name: str,
    uploaded_by: UUID,
) -> VersionRow:
    """The next version (the caller holds the upload's row lock; a concurrent twin for
    the same document fails the unique (document_id, version))."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO document_versions (id, document_id, version, content_type, size, sha256,
            blob_name, uploaded_by)
        SELECT $1, $2, coalesce(max(version), 0) + 1, $3, $4, $5, $6, $7
        FROM document_versions WHERE document_id = $2
        RETURNING {_VERSION}
        """,
        version_id,
        document_id,
        content_type,
        size,
        sha256,
        blob_name,
        uploaded_by,
    )
    assert row is not None
    return VersionRow(**dict(row))


async def documents(conn: Conn, patient_id: UUID) -> list[DocumentRow]:
    rows = await conn.fetch(
        f"SELECT {_DOC} FROM documents WHERE patient_id = $1 ORDER BY created_at, id LIMIT 500",
        patient_id,
    )
    return [DocumentRow(**dict(row)) for row in rows]


async def versions(conn: Conn, document_ids: list[UUID]) -> list[VersionRow]:
    rows = await conn.fetch(
        f"SELECT {_VERSION} FROM document_versions WHERE document_id = ANY($1::uuid[]) "
        "ORDER BY document_id, version",
        document_ids,
    )
    return [VersionRow(**dict(row)) for row in rows]


async def lock_expired_uploads(conn: Conn, *, limit: int) -> list[UploadRow]:
    """Uploads past their expiry, locked; rows another sweeper holds are skipped."""
    rows = await conn.fetch(
        f"SELECT {_UPLOAD} FROM document_uploads WHERE expires_at <= now() "
        "ORDER BY expires_at, id LIMIT $1 FOR UPDATE SKIP LOCKED",
        limit,
    )
    return [UploadRow(**dict(row)) for row in rows]


async def drop_uploads(conn: Conn, upload_ids: list[UUID]) -> int:
    """Delete the uploads and their chunks (explicitly, not only by the cascade)."""
    await conn.execute(
        "DELETE FROM document_upload_chunks WHERE upload_id = ANY($1::uuid[])", upload_ids
    )
    done: str = await conn.execute(
        "DELETE FROM document_uploads WHERE id = ANY($1::uuid[])", upload_ids
    )
    return int(done.rsplit(" ", 1)[1])
