"""Reading a sealed recording for playback: open and check it, then stream a range.

No HTTP and no database: :meth:`RecordingService.play` authorizes and audits, then
uses these to read only the chunks a range touches, :data:`PLAYBACK_BATCH_CHUNKS` at a
time. Opening reads and authenticates the header and the final chunk (which proves
the length); the service pulls the first batch before the answer's status goes out,
so that a damaged object is refused cleanly, and :func:`after_first` turns damage found
later into :class:`PlaybackCut`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from teleconsult.core.errors import TeleconsultError
from teleconsult.recording.keys import KeyRing
from teleconsult.recording.ranges import ByteRange
from teleconsult.recording.seal import HEADER_BYTES, Opener, SealError, open_header
from teleconsult.recording.storage import BlobStore
from teleconsult.recording.store import Recording

# Chunks read and decrypted per step of a playback (1 MiB at 64 KiB chunks).
PLAYBACK_BATCH_CHUNKS = 16

Damaged = Callable[[TeleconsultError, str], Awaitable[None]]


class PlaybackCut(TeleconsultError):
    """A damaged chunk was found after the answer's status and headers went out. It is
    already logged and audited; the transport must cut the connection, so that the
    client cannot take the short body for the whole media."""


@dataclass(frozen=True)
class Playback:
    """One audited playback: which bytes, of how many, and how to get them."""

    recording: Recording
    range: ByteRange | None  # None: the whole media (a 200)
    total: int
    chunks: AsyncIterator[bytes]

    @property
    def start(self) -> int:
        return 0 if self.range is None else self.range.start

    @property
    def end(self) -> int:
        return self.total if self.range is None else self.range.end


async def open_object(blobs: BlobStore, keys: KeyRing, recording: Recording) -> Opener:
    """An opener for a ready recording's sealed object, its header and final chunk
    authenticated and its length the recorded one (SealError otherwise)."""
    assert recording.object_name and recording.sealed_size is not None
    assert recording.wrapped_key is not None and recording.key_version is not None
    head = await blobs.get_range(recording.object_name, 0, HEADER_BYTES)
    opener = open_header(
        head,
        keys.get,
        recording.sealed_size,
        wrapped=recording.wrapped_key,
        key_version=recording.key_version,
    )
    # The final chunk proves the length: a truncated object fails here, before any
    # byte is sent.
    first, last = opener.layout.chunk_span(opener.final_chunk)
    raw = await blobs.get_range(recording.object_name, first, last - first)
    opener.open_chunk(opener.final_chunk, raw)
    if opener.plaintext_size != recording.size:
        raise SealError("the sealed object's length does not match its record")
    return opener


async def stream_range(
    blobs: BlobStore, recording: Recording, opener: Opener, start: int, end: int
) -> AsyncIterator[bytes]:
    """The plaintext bytes [start, end), a batch of chunks at a time."""
    if start >= end:
        return
    assert recording.object_name is not None
    wanted = opener.layout.chunks_for(start, end)
    step = PLAYBACK_BATCH_CHUNKS
    for first_chunk in range(wanted.start, wanted.stop, step):
        batch = range(first_chunk, min(first_chunk + step, wanted.stop))
        lo = opener.layout.chunk_span(batch.start)[0]
        hi = opener.layout.chunk_span(batch.stop - 1)[1]
        raw = await blobs.get_range(recording.object_name, lo, hi - lo)
        if len(raw) != hi - lo:
            raise SealError("the sealed object is truncated")
        plain = await asyncio.to_thread(_open_batch, opener, batch, raw, lo)
        base = batch.start * opener.header.chunk_size
        yield plain[max(start, base) - base : end - base]


async def after_first(
    first: bytes, chunks: AsyncIterator[bytes], damaged: Damaged
) -> AsyncIterator[bytes]:
    """The first piece (already checked), then the rest; damage found in the rest is
    reported to ``damaged`` (audit and log), then raised as :class:`PlaybackCut`."""
    if first:
        yield first
    try:
        async for part in chunks:
            yield part
    except SealError as exc:
        await damaged(exc, "mid_stream")
        raise PlaybackCut(str(exc)) from None


def _open_batch(opener: Opener, batch: range, raw: bytes, offset: int) -> bytes:
    parts = []
    for index in batch:
        lo, hi = opener.layout.chunk_span(index)
        parts.append(opener.open_chunk(index, raw[lo - offset : hi - offset]))
    return b"".join(parts)
