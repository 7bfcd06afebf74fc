"""Where sealed objects live: a small :class:`BlobStore` Protocol and a local folder.

Stores hold opaque bytes (sealed objects); they never see a key or plaintext. A
name is a relative path of ``[A-Za-z0-9._-]`` segments separated by ``/``.

``LocalBlobStore`` (the default: ``<data_dir>/recordings``, mode 0700) writes
each object to a temporary file in the same folder, fsyncs it, renames it into
place and fsyncs the folder, so a reader sees a whole object or none, also after
a crash. The S3-compatible store is ``storage_s3.S3BlobStore``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO, Protocol

from teleconsult.core.errors import InfrastructureError

_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}(/[A-Za-z0-9._-]{1,128}){0,7}")
_TMP = ".tmp"


class StorageError(InfrastructureError):
    """The store failed or holds no such object. A dependency failure: a request that
    meets one is answered 503 ``unavailable`` (core/outages.py), never 500; playback
    answers a missing object of a ready recording as ``recording_damaged`` first."""


class NoSuchObject(StorageError):
    """The store answered, and holds no object of that name."""


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name) or any(part in (".", "..") for part in name.split("/")):
        raise StorageError(f"not a valid object name: {name!r}")
    if name.split("/")[0] == _TMP:
        raise StorageError("names under .tmp are the store's own")
    return name


class BlobStore(Protocol):
    """Opaque objects by name. Every method may be called concurrently for different
    names; writing one name twice at once is not supported (the last rename wins)."""

    def writer(self, name: str) -> contextlib.AbstractAsyncContextManager[BinaryIO]:
        """A binary file to write the whole object into; the object appears, whole,
        when the block ends without an exception, and never otherwise."""
        ...

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        """Up to ``length`` raw bytes from ``offset`` (fewer at the end of the object)."""
        ...

    async def size(self, name: str) -> int | None:
        """The object's size in bytes, None when there is no such object."""
        ...

    async def rewrite_head(self, name: str, data: bytes) -> None:
        """Replace the object's first ``len(data)`` bytes (a header) in place."""
        ...

    async def delete(self, name: str) -> None:
        """Remove the object; no error when it is already gone."""
        ...

    async def list(self, prefix: str = "") -> list[str]:
        """Names that start with ``prefix``, sorted."""
        ...

    async def close(self) -> None: ...


class LocalBlobStore:
    """Objects as files under ``root`` (created 0700)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        (root / _TMP).mkdir(exist_ok=True, mode=0o700)

    def path(self, name: str) -> Path:
        return self.root / check_name(name)

    @contextlib.asynccontextmanager
    async def writer(self, name: str) -> AsyncIterator[BinaryIO]:
        final = self.path(name)
        tmp = self.root / _TMP / f"{secrets.token_hex(8)}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        handle = os.fdopen(fd, "wb")
        try:
            yield handle
            await asyncio.to_thread(self._commit, handle, tmp, final)
        except BaseException:
            handle.close()
            tmp.unlink(missing_ok=True)
            raise

    @staticmethod
    def _commit(handle: BinaryIO, tmp: Path, final: Path) -> None:
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.replace(tmp, final)
        _fsync_dir(final.parent)

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        path = self.path(name)

        def read() -> bytes:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise NoSuchObject("no such object") from None
            try:
                parts: list[bytes] = []
                done = 0
                while done < length:
                    got = os.pread(fd, length - done, offset + done)
                    if not got:
                        break
                    parts.append(got)
                    done += len(got)
                return b"".join(parts)
            finally:
                os.close(fd)

        return await asyncio.to_thread(read)

    async def size(self, name: str) -> int | None:
        try:
            return (await asyncio.to_thread(os.stat, self.path(name))).st_size
        except FileNotFoundError:
            return None

    async def rewrite_head(self, name: str, data: bytes) -> None:
        path = self.path(name)

        def write() -> None:
            try:
                fd = os.open(path, os.O_WRONLY)
            except FileNotFoundError:
                raise NoSuchObject("no such object") from None
            try:
                if os.pwrite(fd, data, 0) != len(data):
                    raise StorageError("short write of an object's head")
                os.fsync(fd)
            finally:
                os.close(fd)

        await asyncio.to_thread(write)

    async def delete(self, name: str) -> None:
        path = self.path(name)

        def remove() -> None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                _fsync_dir(path.parent)

        await asyncio.to_thread(remove)

    async def list(self, prefix: str = "") -> list[str]:
        def walk() -> list[str]:
            found = []
            for path in self.root.rglob("*"):
                relative = path.relative_to(self.root).as_posix()
                if path.is_file() and not relative.startswith(_TMP + "/"):
                    if relative.startswith(prefix):
                        found.append(relative)
            return sorted(found)

        return await asyncio.to_thread(walk)

    async def close(self) -> None:
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def overwrite_and_unlink(path: Path, *, block: int = 1 << 20) -> None:
    """Overwrite a file with zeros, fsync, then unlink it (a plaintext file after it was
    sealed). On copy-on-write or journaled-data file systems and SSDs the old blocks
    may survive; docs/rtc.md says what else keeps plaintext off the disk."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        zeros = bytes(min(block, max(size, 1)))
        written = 0
        while written < size:
            written += os.pwrite(fd, zeros[: min(len(zeros), size - written)], written)
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink(missing_ok=True)
