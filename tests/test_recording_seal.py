"""Sealed objects (teleconsult/recording/seal.py): pure, no I/O but BytesIO."""

from __future__ import annotations

import base64
import io
import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teleconsult.core.errors import ConfigError, RangeNotSatisfiable
from teleconsult.core.settings import RecordingSettings, load_settings
from teleconsult.recording.keys import KeyRing
from teleconsult.recording.ranges import ByteRange, parse_range
from teleconsult.recording.seal import (
    FIXED_BYTES,
    HEADER_BYTES,
    TAG_BYTES,
    Header,
    KeyUnavailable,
    MasterKey,
    SealError,
    file_reader,
    open_range,
    rewrap,
    seal_stream,
    shred,
)

CHUNK = 1024
K1 = MasterKey(1, bytes(range(32)))
K2 = MasterKey(2, bytes(range(32, 64)))
RING = KeyRing((K1,))


def seal(data: bytes, master: MasterKey = K1, chunk: int = CHUNK) -> bytes:
    out = io.BytesIO()
    sealed = seal_stream(io.BytesIO(data), out, master, chunk_size=chunk)
    blob = out.getvalue()
    assert sealed.sealed_size == len(blob)
    assert sealed.plaintext_size == len(data)
    return blob


def open_all(blob: bytes, ring: KeyRing = RING, start: int = 0, end: int | None = None) -> bytes:
    return b"".join(open_range(file_reader(io.BytesIO(blob)), len(blob), ring.get, start, end))


@given(st.binary(max_size=5 * CHUNK + 7))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_content_round_trips(data: bytes) -> None:
    assert open_all(seal(data)) == data


@given(st.binary(min_size=1, max_size=6 * CHUNK), st.data())
@settings(max_examples=80, deadline=None)
def test_any_range_gives_exactly_those_bytes(data: bytes, draw: st.DataObject) -> None:
    start = draw.draw(st.integers(0, len(data) - 1))
    end = draw.draw(st.integers(start + 1, len(data)))
    assert open_all(seal(data), start=start, end=end) == data[start:end]


def test_sizes_follow_the_chunk_layout() -> None:
    for size, chunks in ((0, 1), (1, 1), (CHUNK, 1), (CHUNK + 1, 2), (3 * CHUNK, 3)):
        assert len(seal(os.urandom(size))) == HEADER_BYTES + size + chunks * TAG_BYTES


def test_a_range_reads_only_the_chunks_it_touches() -> None:
    data = os.urandom(40 * CHUNK)
    blob = seal(data)
    reads: list[tuple[int, int]] = []
    inner = file_reader(io.BytesIO(blob))

    def read(offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return inner(offset, length)

    start, end = 20 * CHUNK + 5, 21 * CHUNK + 5  # chunks 20 and 21
    got = b"".join(open_range(read, len(blob), RING.get, start, end))
    assert got == data[start:end]
    touched = sum(length for offset, length in reads if offset >= HEADER_BYTES)
    # the two chunks, plus the final chunk that proves the length
    assert touched == 3 * (CHUNK + TAG_BYTES)


@pytest.mark.parametrize("where", ["header_fixed", "key_part", "first_chunk", "middle", "tag"])
def test_a_flipped_byte_anywhere_is_detected(where: str) -> None:
    data = os.urandom(5 * CHUNK + 100)
    blob = bytearray(seal(data))
    step = CHUNK + TAG_BYTES
    offset = {
        "header_fixed": FIXED_BYTES - 3,
        "key_part": HEADER_BYTES - 10,
        "first_chunk": HEADER_BYTES + 3,
        "middle": HEADER_BYTES + 2 * step + 500,
        "tag": len(blob) - 1,
    }[where]
    blob[offset] ^= 0x01
    with pytest.raises(SealError):
        open_all(bytes(blob))


@given(st.integers(0, 5 * CHUNK + 100 + HEADER_BYTES + 6 * TAG_BYTES - 1), st.integers(1, 255))
@settings(max_examples=100, deadline=None)
def test_every_single_byte_change_is_detected(offset: int, mask: int) -> None:
    blob = bytearray(SAMPLE_BLOB)
    blob[offset] ^= mask
    with pytest.raises(SealError):
        open_all(bytes(blob))


SAMPLE = os.urandom(5 * CHUNK + 100)
SAMPLE_BLOB = seal(SAMPLE)


def chunks_of(blob: bytes) -> tuple[bytes, list[bytes]]:
    step = CHUNK + TAG_BYTES
    body = blob[HEADER_BYTES:]
    return blob[:HEADER_BYTES], [body[i : i + step] for i in range(0, len(body), step)]


def test_truncation_at_a_chunk_boundary_is_detected() -> None:
    head, chunks = chunks_of(SAMPLE_BLOB)
    cut = head + b"".join(chunks[:-1])
    with pytest.raises(SealError):
        open_all(cut)
    # even when the range asked for lies before the cut
    with pytest.raises(SealError):
        open_all(cut, start=0, end=10)


def test_truncation_inside_a_chunk_is_detected() -> None:
    for cut in (len(SAMPLE_BLOB) - 1, len(SAMPLE_BLOB) - TAG_BYTES - 1, HEADER_BYTES + 5):
        with pytest.raises(SealError):
            open_all(SAMPLE_BLOB[:cut])


def test_reordered_chunks_are_detected() -> None:
    head, chunks = chunks_of(SAMPLE_BLOB)
    swapped = head + chunks[1] + chunks[0] + b"".join(chunks[2:])
    with pytest.raises(SealError):
        open_all(swapped, start=0, end=CHUNK)


def test_a_duplicated_chunk_is_detected() -> None:
    head, chunks = chunks_of(SAMPLE_BLOB)
    doubled = head + chunks[0] + chunks[0] + b"".join(chunks[2:])
    with pytest.raises(SealError):
        open_all(doubled)


def test_a_chunk_from_another_file_is_detected() -> None:
    """Same master key, same length, same position: still refused (own data key)."""
    head, chunks = chunks_of(SAMPLE_BLOB)
    _, foreign = chunks_of(seal(os.urandom(len(SAMPLE))))
    spliced = head + chunks[0] + foreign[1] + b"".join(chunks[2:])
    with pytest.raises(SealError):
        open_all(spliced, start=CHUNK, end=2 * CHUNK)


def test_another_files_header_on_these_chunks_is_detected() -> None:
    _, chunks = chunks_of(SAMPLE_BLOB)
    foreign_head, _ = chunks_of(seal(os.urandom(len(SAMPLE))))
    with pytest.raises(SealError):
        open_all(foreign_head + b"".join(chunks))


def test_a_file_extended_with_a_final_chunk_of_another_file_is_detected() -> None:
    head, chunks = chunks_of(SAMPLE_BLOB)
    _, other = chunks_of(seal(os.urandom(len(SAMPLE) + CHUNK)))
    with pytest.raises(SealError):
        open_all(head + b"".join(chunks[:-1]) + other[-2] + other[-1])


def test_rewrap_changes_only_the_key_part_and_keeps_it_readable() -> None:
    header = Header.decode(SAMPLE_BLOB)
    fresh = rewrap(header, RING.get, K2)
    assert fresh.key_version == 2 and fresh.fixed == header.fixed
    rewrapped = fresh.encode() + SAMPLE_BLOB[HEADER_BYTES:]
    assert rewrapped[FIXED_BYTES:HEADER_BYTES] != SAMPLE_BLOB[FIXED_BYTES:HEADER_BYTES]
    assert rewrapped[HEADER_BYTES:] == SAMPLE_BLOB[HEADER_BYTES:]
    # The old key can go: only key 2 is needed now.
    assert open_all(rewrapped, KeyRing((K2,))) == SAMPLE
    with pytest.raises(KeyUnavailable):
        open_all(rewrapped, RING)


def test_a_key_part_moved_to_another_version_number_is_refused() -> None:
    header = Header.decode(SAMPLE_BLOB)
    relabelled = header.with_wrapped(2, header.wrapped)
    with pytest.raises(SealError):
        open_all(
            relabelled.encode() + SAMPLE_BLOB[HEADER_BYTES:], KeyRing((K1, MasterKey(2, K1.key)))
        )


def test_a_shredded_header_opens_with_no_key() -> None:
    shredded = shred(Header.decode(SAMPLE_BLOB)).encode() + SAMPLE_BLOB[HEADER_BYTES:]
    with pytest.raises(KeyUnavailable):
        open_all(shredded, KeyRing((K1, K2)))


def test_not_a_sealed_object() -> None:
    with pytest.raises(SealError):
        open_all(b"\x1a\x45\xdf\xa3" + bytes(200))


def test_key_ring_current_is_the_newest() -> None:
    ring = KeyRing((K2, K1))
    assert ring.current is K2 and ring.get(1) is K1 and ring.get(3) is None


@pytest.mark.parametrize(
    ("header", "total", "want"),
    [
        (None, 100, None),
        ("bytes=0-", 100, ByteRange(0, 100)),
        ("bytes=10-19", 100, ByteRange(10, 20)),
        ("bytes=90-200", 100, ByteRange(90, 100)),
        ("bytes=-10", 100, ByteRange(90, 100)),
        ("bytes=-500", 100, ByteRange(0, 100)),
        ("bytes=0-1,5-6", 100, None),  # several ranges: ignored, everything is sent
        ("items=0-5", 100, None),
        ("bytes=5-1", 100, None),
        ("bytes=abc", 100, None),
    ],
)
def test_range_header(header: str | None, total: int, want: ByteRange | None) -> None:
    assert parse_range(header, total) == want


@pytest.mark.parametrize(
    ("header", "total"), [("bytes=100-", 100), ("bytes=-0", 100), ("bytes=0-", 0)]
)
def test_unsatisfiable_range(header: str, total: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as caught:
        parse_range(header, total)
    assert caught.value.headers == {"Content-Range": f"bytes */{total}"}


# --- RECORDING_KEYS -------------------------------------------------------------------


def recording_settings(tmp_path: Path, **env: str) -> RecordingSettings:
    base = {"TELECONSULT_DATA_DIR": str(tmp_path / "data"), "JWT_SECRET": "s" * 40}
    return load_settings({**base, **env}).recording


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_keys_are_read_newest_first(tmp_path: Path) -> None:
    found = recording_settings(tmp_path, RECORDING_KEYS=f"2:{b64(K2.key)}, 1:{b64(K1.key)}")
    assert found.keys == ((2, K2.key), (1, K1.key))
    assert KeyRing.of(found.keys).current == K2
    assert found.keys_file is None
    assert not (tmp_path / "data" / "recording-keys").exists()


def test_a_keys_file_has_one_entry_a_line(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"2:{b64(K2.key)}\n1:{b64(K1.key)}\n")
    found = recording_settings(tmp_path, RECORDING_KEYS_FILE=str(path))
    assert [v for v, _ in found.keys] == [2, 1]


def test_a_development_key_is_generated_once(tmp_path: Path) -> None:
    first = recording_settings(tmp_path)
    assert first.keys_file == tmp_path / "data" / "recording-keys"
    assert stat.S_IMODE(first.keys_file.stat().st_mode) == 0o600
    assert recording_settings(tmp_path).keys == first.keys
    assert [v for v, _ in first.keys] == [1] and len(first.keys[0][1]) == 32


@pytest.mark.parametrize(
    "value",
    [
        f"1:{b64(K1.key)},1:{b64(K2.key)}",  # a version twice
        f"1:{b64(K1.key)},2:{b64(K2.key)}",  # oldest first
        f"1:{b64(K1.key[:16])}",  # 16 bytes
        "1:not base64!",
        f"x:{b64(K1.key)}",
        f"0:{b64(K1.key)}",
        ",",
    ],
)
def test_bad_keys_stop_the_start_naming_the_variable(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as refused:
        recording_settings(tmp_path, RECORDING_KEYS=value)
    assert refused.value.variable == "RECORDING_KEYS"
