"""The blob store the settings ask for (``RECORDING_STORAGE``)."""

from __future__ import annotations

from teleconsult.core.settings import RecordingSettings
from teleconsult.recording.storage import BlobStore, LocalBlobStore
from teleconsult.recording.storage_s3 import S3BlobStore


def open_blob_store(settings: RecordingSettings) -> BlobStore:
    if settings.storage == "s3":
        assert settings.s3_endpoint is not None
        return S3BlobStore(
            endpoint=settings.s3_endpoint,
            bucket=settings.s3_bucket,
            region=settings.s3_region,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            prefix=settings.s3_prefix,
            staging=settings.staging_dir,
        )
    return LocalBlobStore(settings.local_dir)
