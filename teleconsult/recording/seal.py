"""Sealed objects: a file encrypted at rest in fixed-size chunks, seekable, re-wrappable.

Pure code over bytes and file-like objects; no storage, no database. Used for
recordings and meant for any large object (documents too).

Format, version 1 (all integers big-endian)::

    header (108 bytes)
      fixed part (32 bytes, never changes after sealing)
        magic        8   b"TCSEAL\\x00\\x01"
        format       1   1
        reserved     3   zero
        chunk_size   4   plaintext bytes per chunk (the last one may be shorter)
        nonce_prefix 16  random per object
      key part (76 bytes, replaced by a re-wrap)
        key_version  4   the master key that wraps the data key
        wrap_nonce   24  random per wrap
        wrapped_key  48  XChaCha20-Poly1305(data key), AD = WRAP_DOMAIN || fixed || key_version
    chunks, each chunk_size + 16 bytes (the last: 16 to chunk_size + 16)
      XChaCha20-Poly1305(plaintext chunk) under the data key,
      nonce = nonce_prefix || index (7 bytes) || last (1 byte: 1 for the final chunk),
      AD = fixed part

As in age's STREAM construction, the index and the last-chunk flag in the nonce
make every chunk decrypt only at its own position and only with its own
"last" answer, so a reordered, dropped, duplicated or truncated chunk fails,
and a file cut at a chunk boundary fails because its new final chunk was not
sealed as the last. Every object has its own random data key and nonce prefix,
so a chunk moved from another object (or spliced from another file) fails too.
The fixed part of the header is the AD of every chunk and of the wrap, so a
changed header byte fails as well. The key part is authenticated by the wrap
itself (its AD names the fixed part and the key version); re-wrapping under
another master key replaces only those 76 bytes and touches no chunk.

An empty object is one final chunk of 0 bytes. Opening a byte range decrypts
only the chunks it touches, plus the final chunk, which proves the length
(and hence that the file was not truncated) on every open.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import BinaryIO, Final

from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

from teleconsult.core.errors import TeleconsultError

MAGIC: Final = b"TCSEAL\x00\x01"
FORMAT_VERSION: Final = 1
TAG_BYTES: Final = 16
KEY_BYTES: Final = 32
DEFAULT_CHUNK_SIZE: Final = 64 * 1024
MIN_CHUNK_SIZE: Final = 1024
MAX_CHUNK_SIZE: Final = 16 * 1024 * 1024
WRAP_DOMAIN: Final = b"teleconsult/seal-wrap/v1\x00"

_FIXED = struct.Struct(">8sB3sI16s")  # magic, format, reserved, chunk_size, nonce_prefix
_KEYPART = struct.Struct(">I24s48s")  # key_version, wrap_nonce, wrapped_key
FIXED_BYTES: Final = _FIXED.size
HEADER_BYTES: Final = _FIXED.size + _KEYPART.size
_MAX_INDEX: Final = (1 << 56) - 1


class SealError(TeleconsultError):
    """A sealed object is malformed, tampered with, truncated, or its key is gone."""


class KeyUnavailable(SealError):
    """The master key that wraps this object is not configured, or the key was destroyed."""


@dataclass(frozen=True)
class MasterKey:
    """One version of a master key (32 bytes); the newest version seals and re-wraps."""

    version: int
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.version < 2**32:
            raise ValueError("a master key version is 1 to 2^32 - 1")
        if len(self.key) != KEY_BYTES:
            raise ValueError("a master key is 32 bytes")


@dataclass(frozen=True)
class Header:
    chunk_size: int
    nonce_prefix: bytes
    key_version: int
    wrap_nonce: bytes
    wrapped_key: bytes

    @property
    def fixed(self) -> bytes:
        return _FIXED.pack(MAGIC, FORMAT_VERSION, b"\0\0\0", self.chunk_size, self.nonce_prefix)

    @property
    def wrapped(self) -> bytes:
        """The key part without the version (what the database keeps beside it)."""
        return self.wrap_nonce + self.wrapped_key

    @property
    def shredded(self) -> bool:
        return self.wrapped_key == bytes(48)

    def encode(self) -> bytes:
        return self.fixed + _KEYPART.pack(self.key_version, self.wrap_nonce, self.wrapped_key)

    def with_wrapped(self, key_version: int, wrapped: bytes) -> Header:
        if len(wrapped) != 72:
            raise SealError("a wrapped data key is 72 bytes")
        return replace(
            self, key_version=key_version, wrap_nonce=wrapped[:24], wrapped_key=wrapped[24:]
        )

    @classmethod
    def decode(cls, data: bytes) -> Header:
        if len(data) < HEADER_BYTES:
            raise SealError("not a sealed object: the header is cut short")
        magic, version, reserved, chunk_size, prefix = _FIXED.unpack_from(data, 0)
        if magic != MAGIC:
            raise SealError("not a sealed object: wrong magic")
        if version != FORMAT_VERSION or reserved != b"\0\0\0":
            raise SealError(f"unsupported sealed-object format {version}")
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise SealError("the header's chunk size is out of range")
        key_version, wrap_nonce, wrapped_key = _KEYPART.unpack_from(data, FIXED_BYTES)
        return cls(chunk_size, prefix, key_version, wrap_nonce, wrapped_key)


def _wrap_ad(fixed: bytes, key_version: int) -> bytes:
    return WRAP_DOMAIN + fixed + key_version.to_bytes(4, "big")


def wrap(header_fixed: bytes, data_key: bytes, master: MasterKey) -> bytes:
    """The data key wrapped by ``master`` for the object whose fixed header part is given
    (72 bytes: nonce and ciphertext)."""
    nonce = os.urandom(24)
    sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(
        data_key, _wrap_ad(header_fixed, master.version), nonce, master.key
    )
    return nonce + sealed


def unwrap(header: Header, lookup: Callable[[int], MasterKey | None]) -> bytes:
    """The object's data key; KeyUnavailable when its master key is missing or the key
    was destroyed, SealError when the header was changed."""
    if header.shredded:
        raise KeyUnavailable("the data key of this object was destroyed")
    master = lookup(header.key_version)
    if master is None:
        raise KeyUnavailable(f"master key version {header.key_version} is not configured")
    try:
        return crypto_aead_xchacha20poly1305_ietf_decrypt(
            header.wrapped_key,
            _wrap_ad(header.fixed, header.key_version),
            header.wrap_nonce,
            master.key,
        )
    except CryptoError:
        raise SealError("the header does not authenticate under its master key") from None


def rewrap(header: Header, lookup: Callable[[int], MasterKey | None], new: MasterKey) -> Header:
    """The same header with its data key wrapped by ``new`` (the chunks stay valid)."""
    data_key = unwrap(header, lookup)
    return header.with_wrapped(new.version, wrap(header.fixed, data_key, new))


def shred(header: Header) -> Header:
    """The header with its wrapped key zeroed: nothing can open the object any more."""
    return replace(header, wrap_nonce=bytes(24), wrapped_key=bytes(48))


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    if index > _MAX_INDEX:
        raise SealError("too many chunks")
    return prefix + index.to_bytes(7, "big") + (b"\x01" if last else b"\x00")


@dataclass(frozen=True)
class Sealed:
    header: Header
    plaintext_size: int
    sealed_size: int


def _read_full(src: BinaryIO, size: int) -> bytes:
    parts: list[bytes] = []
    remaining = size
    while remaining:
        part = src.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def seal_stream(
    src: BinaryIO, dst: BinaryIO, master: MasterKey, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Sealed:
    """Seal everything ``src`` yields into ``dst`` with a fresh data key wrapped by
    ``master``. Memory stays at about two chunks whatever the size."""
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE}")
    data_key = os.urandom(KEY_BYTES)
    prefix = os.urandom(16)
    partial = Header(chunk_size, prefix, 0, b"", b"")
    fixed = partial.fixed
    wrapped = wrap(fixed, data_key, master)
    header = partial.with_wrapped(master.version, wrapped)
    dst.write(header.encode())
    written = HEADER_BYTES
    total = 0
    index = 0
    current = _read_full(src, chunk_size)
    while True:
        following = _read_full(src, chunk_size) if len(current) == chunk_size else b""
        last = not following
        sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(
            current, fixed, _nonce(prefix, index, last), data_key
        )
        dst.write(sealed)
        written += len(sealed)
        total += len(current)
        if last:
            break
        index += 1
        current = following
    return Sealed(header, total, written)


@dataclass(frozen=True)
class Layout:
    """Where each chunk sits in a sealed object of ``sealed_size`` bytes."""

    chunk_size: int
    sealed_size: int

    @property
    def chunks(self) -> int:
        body = self.sealed_size - HEADER_BYTES
        if body < TAG_BYTES:
            raise SealError("the sealed object is truncated")
        step = self.chunk_size + TAG_BYTES
        count = -(-body // step)
        if body - (count - 1) * step < TAG_BYTES:
            # A tail shorter than a tag cannot be a chunk: cut in the middle of one.
            raise SealError("the sealed object is truncated")
        return count

    @property
    def plaintext_size(self) -> int:
        """The length the chunk sizes imply (proved by opening the final chunk)."""
        return self.sealed_size - HEADER_BYTES - self.chunks * TAG_BYTES

    def chunk_span(self, index: int) -> tuple[int, int]:
        """The sealed byte range [start, end) of chunk ``index``."""
        step = self.chunk_size + TAG_BYTES
        start = HEADER_BYTES + index * step
        return start, min(start + step, self.sealed_size)

    def chunks_for(self, start: int, end: int) -> range:
        """The chunks that hold plaintext bytes [start, end) (end > start)."""
        return range(start // self.chunk_size, (end - 1) // self.chunk_size + 1)


class Opener:
    """Decrypts chunks of one sealed object; knows its header, data key and size."""

    def __init__(self, header: Header, data_key: bytes, sealed_size: int) -> None:
        self.header = header
        self.layout = Layout(header.chunk_size, sealed_size)
        self._key = data_key
        self._fixed = header.fixed
        self._chunks = self.layout.chunks

    @property
    def plaintext_size(self) -> int:
        return self.layout.plaintext_size

    @property
    def final_chunk(self) -> int:
        return self._chunks - 1

    def open_chunk(self, index: int, sealed: bytes) -> bytes:
        if not 0 <= index < self._chunks:
            raise SealError("chunk index out of range")
        last = index == self._chunks - 1
        if len(sealed) < TAG_BYTES:  # pynacl would raise ValueError on it
            raise SealError(f"chunk {index} is cut short")
        try:
            return crypto_aead_xchacha20poly1305_ietf_decrypt(
                sealed, self._fixed, _nonce(self.header.nonce_prefix, index, last), self._key
            )
        except CryptoError:
            raise SealError(f"chunk {index} does not authenticate") from None


def open_header(
    head: bytes,
    lookup: Callable[[int], MasterKey | None],
    sealed_size: int,
    *,
    wrapped: bytes | None = None,
    key_version: int | None = None,
) -> Opener:
    """An :class:`Opener` for an object whose first bytes are ``head``. ``wrapped`` and
    ``key_version``, when given (the database's copy), are used instead of the header's
    own key part."""
    header = Header.decode(head)
    if wrapped is not None and key_version is not None:
        header = header.with_wrapped(key_version, wrapped)
    return Opener(header, unwrap(header, lookup), sealed_size)


def open_range(
    read: Callable[[int, int], bytes],
    sealed_size: int,
    lookup: Callable[[int], MasterKey | None],
    start: int = 0,
    end: int | None = None,
    *,
    batch_chunks: int = 16,
) -> Iterator[bytes]:
    """Yield the plaintext bytes [start, end) of a sealed object read through
    ``read(offset, length)``. Reads and decrypts the header, the final chunk (which
    proves the length) and the chunks the range touches, ``batch_chunks`` at a time."""
    opener = open_header(read(0, HEADER_BYTES), lookup, sealed_size)
    yield from open_range_with(opener, read, start, end, batch_chunks=batch_chunks)


def verify_final(opener: Opener, read: Callable[[int, int], bytes]) -> None:
    """Open the final chunk: proves the object is whole (SealError when cut)."""
    first, last = opener.layout.chunk_span(opener.final_chunk)
    opener.open_chunk(opener.final_chunk, read(first, last - first))


def open_range_with(
    opener: Opener,
    read: Callable[[int, int], bytes],
    start: int = 0,
    end: int | None = None,
    *,
    batch_chunks: int = 16,
) -> Iterator[bytes]:
    size = opener.plaintext_size
    end = size if end is None else min(end, size)
    verify_final(opener, read)
    if start >= end:
        return
    wanted = opener.layout.chunks_for(start, end)
    for batch_start in range(wanted.start, wanted.stop, batch_chunks):
        batch = range(batch_start, min(batch_start + batch_chunks, wanted.stop))
        first_offset = opener.layout.chunk_span(batch.start)[0]
        last_offset = opener.layout.chunk_span(batch.stop - 1)[1]
        raw = read(first_offset, last_offset - first_offset)
        if len(raw) != last_offset - first_offset:
            raise SealError("the sealed object is truncated")
        plain = []
        for index in batch:
            lo, hi = opener.layout.chunk_span(index)
            plain.append(opener.open_chunk(index, raw[lo - first_offset : hi - first_offset]))
        base = batch.start * opener.header.chunk_size
        yield b"".join(plain)[max(start, base) - base : end - base]


def file_reader(handle: BinaryIO) -> Callable[[int, int], bytes]:
    """``read(offset, length)`` over a seekable binary file."""

    def read(offset: int, length: int) -> bytes:
        handle.seek(offset)
        return _read_full(handle, length)

    return read
