"""HTTP transport for documents: chunked upload, list, download as an attachment."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, Field, StringConstraints

from teleconsult.api.models import INT4_MAX, Body
from teleconsult.api.registry import Api, ApiRequest
from teleconsult.core.errors import UnsupportedMediaType
from teleconsult.core.policy import Action
from teleconsult.records.documents.service import (
    CHUNK_BYTES,
    Document,
    DocumentService,
    Upload,
)

DOCUMENTS = web.AppKey("record_documents", DocumentService)
api = Api()

ContentType = Literal["application/pdf", "image/png", "image/jpeg", "application/dicom"]
Category = Literal["lab_result", "image", "report", "other"]


class UploadBody(Body):
    """A new document (``title`` and ``category``) or a new version of one
    (``document_id``)."""

    document_id: UUID | None = None
    title: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"\S")] | None = (
        None
    )
    category: Category | None = None
    content_type: ContentType
    size: Annotated[int, Field(ge=1, le=2**40)]
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class UploadOut(BaseModel):
    id: UUID
    received: int
    size: int
    chunk_size: int
    expires_at: datetime

    @classmethod
    def of(cls, u: Upload) -> UploadOut:
        return cls(
            id=u.id,
            received=u.received,
            size=u.size,
            chunk_size=u.chunk_size,
            expires_at=u.expires_at,
        )


class ChunkQuery(BaseModel):
    offset: Annotated[int, Field(ge=0, le=2**40)]


class Version(BaseModel):
    version: int
    content_type: ContentType
    size: int
    sha256: str
    uploaded_by: UUID
    created_at: datetime


class DocumentOut(BaseModel):
    id: UUID
    patient_id: UUID
    title: str
    category: Category
    created_by: UUID
    created_at: datetime
    versions: list[Version]

    @classmethod
    def of(cls, d: Document) -> DocumentOut:
        return cls(
            id=d.id,
            patient_id=d.patient_id,
            title=d.title,
            category=d.category,  # type: ignore[arg-type]
            created_by=d.created_by,
            created_at=d.created_at,
            versions=[
                Version(
                    version=v.version,
                    content_type=v.content_type,  # type: ignore[arg-type]
                    size=v.size,
                    sha256=v.sha256.hex(),
                    uploaded_by=v.uploaded_by,
                    created_at=v.created_at,
                )
                for v in d.versions
            ],
        )


class DocumentList(BaseModel):
    items: list[DocumentOut]


class ContentQuery(BaseModel):
    version: Annotated[int, Field(ge=1, le=INT4_MAX)] | None = None


def _svc(req: ApiRequest) -> DocumentService:
    return req.request.app[DOCUMENTS]


UPLOADS = "/api/v1/patients/{patient_id}/document-uploads"
DOCS = "/api/v1/patients/{patient_id}/documents"


@api.op(
    "POST",
    UPLOADS,
    operation_id="startDocumentUpload",
    tag="records",
    summary="Start uploading a document or a new version: declare its type, size and SHA-256",
    action=Action.DOCUMENT_WRITE,
    body=UploadBody,
    response=UploadOut,
    status=201,
    errors=(413,),
)
async def start_upload(req: ApiRequest) -> UploadOut:
    body = req.body(UploadBody)
    upload = await _svc(req).start_upload(
        req.principal,
        req.params["patient_id"],
        document_id=body.document_id,
        title=body.title,
        category=body.category,
        content_type=body.content_type,
        size=body.size,
        sha256=bytes.fromhex(body.sha256),
        ip=req.ip,
    )
    return UploadOut.of(upload)


@api.op(
    "PUT",
    UPLOADS + "/{upload_id}",
    operation_id="putDocumentChunk",
    tag="records",
    summary=f"Send the next chunk (application/octet-stream, at most {CHUNK_BYTES} bytes) "
    "at offset = bytes received so far",
    action=Action.DOCUMENT_WRITE,
    query=ChunkQuery,
    response=UploadOut,
    errors=(409, 413, 415),
)
async def put_chunk(req: ApiRequest) -> UploadOut:
    request = req.request
    if request.content_type != "application/octet-stream":
        raise UnsupportedMediaType("send the chunk as application/octet-stream")
    data = await request.read()
    upload = await _svc(req).put_chunk(
        req.principal,
        req.params["patient_id"],
        req.params["upload_id"],
        offset=req.query(ChunkQuery).offset,
        data=data,
        ip=req.ip,
    )
    return UploadOut.of(upload)


@api.op(
    "POST",
    UPLOADS + "/{upload_id}/complete",
    operation_id="completeDocumentUpload",
    tag="records",
    summary="Check the whole (size, SHA-256, content type) and store it sealed, as a version",
    action=Action.DOCUMENT_WRITE,
    response=DocumentOut,
    status=201,
    errors=(409, 415, 422),
)
async def complete_upload(req: ApiRequest) -> DocumentOut:
    document = await _svc(req).complete(
        req.principal, req.params["patient_id"], req.params["upload_id"], ip=req.ip
    )
    return DocumentOut.of(document)


@api.op(
    "GET",
    DOCS,
    operation_id="listDocuments",
    tag="records",
    summary="A patient's documents and their versions",
    action=Action.DOCUMENT_READ,
    response=DocumentList,
)
async def list_documents(req: ApiRequest) -> DocumentList:
    found = await _svc(req).list_documents(req.principal, req.params["patient_id"], ip=req.ip)
    return DocumentList(items=[DocumentOut.of(d) for d in found])


@api.op(
    "GET",
    DOCS + "/{document_id}/content",
    operation_id="downloadDocument",
    tag="records",
    summary="A document's content (the newest version, or ?version=), always as an attachment",
    action=Action.DOCUMENT_READ,
    query=ContentQuery,
    media_type="application/octet-stream",
)
async def download(req: ApiRequest) -> web.Response:
    found = await _svc(req).content(
        req.principal,
        req.params["patient_id"],
        req.params["document_id"],
        version=req.query(ContentQuery).version,
        ip=req.ip,
    )
    return web.Response(
        body=found.body,
        content_type=found.content_type,
        headers={
            # Never rendered in the browser, whatever the bytes are.
            "Content-Disposition": f'attachment; filename="{found.filename}"',
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'none'; sandbox",
        },
    )
