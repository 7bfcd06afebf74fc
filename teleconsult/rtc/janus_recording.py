"""Turning a room's Janus recordings (.mjr files) into one playable WebM.

VideoRoom's recorder writes one .mjr file per track of each publisher, named
``videoroom-<room>-user-<feed>-<epoch us>-<audio|video>-<mindex>.mjr``.
``janus-pp-rec`` turns each into a playable file (Opus audio into .opus, VP8
video into .webm); PyAV then copies every track, without re-encoding, into one
WebM (Matroska), interleaved by time. Each track's title is its publisher's feed
id. Each track starts where it started in the call: ``janus-pp-rec`` puts a track's
first packet at zero, so every packet is shifted by the time its first packet was
written (the .mjr header's ``u``, epoch µs; the header's ``s``, when the file was
created, or the file name's time if ``u`` is missing) less the earliest such time
of all tracks. A publisher who joined two seconds after the recording started
starts two seconds into the WebM.

Nothing here deletes the result: the caller hands it to the recording store,
which seals it, and then removes it. The .mjr files and the intermediate files
are removed here, whatever happens.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from teleconsult.core.errors import InfrastructureError

logger = logging.getLogger(__name__)

MJR = re.compile(r"^videoroom-(?P<room>\d+)-user-(?P<feed>\d+)-(?P<at>\d+)-(?P<kind>audio|video)")
PP_TIMEOUT = 600.0
HEADER_TIMEOUT = 60.0


@dataclass(frozen=True)
class Track:
    """One converted track: its title, its playable file, and when its first packet was
    written (epoch µs)."""

    title: str
    path: Path
    start_us: int


def recorded_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.mjr") if MJR.match(p.name))


async def _run(*command: str, seconds: float) -> tuple[int | None, bytes, bytes]:
    """Run ``command``: its exit status (None when it ran out of time and was killed),
    what it printed and what it logged."""
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), seconds)
    except TimeoutError:
        process.kill()
        await process.wait()
        return None, b"", b""
    return process.returncode, out, err


async def _pp_rec(binary: str, source: Path, target: Path) -> None:
    status, _, err = await _run(binary, str(source), str(target), seconds=PP_TIMEOUT)
    if status is None:
        raise InfrastructureError(f"janus-pp-rec timed out on {source.name}")
    if status != 0 or not await asyncio.to_thread(_non_empty, target):
        tail = err.decode(errors="replace")[-300:]
        raise InfrastructureError(f"janus-pp-rec failed on {source.name}: {tail}")


async def first_packet_us(binary: str, source: Path) -> int:
    """When ``source``'s first packet was written (epoch µs), from its header
    (``janus-pp-rec --header --json``: ``u`` written, ``s`` created); the time in its
    name when the header cannot be read or has neither."""
    found = MJR.match(source.name)
    assert found is not None
    named = int(found["at"])
    status, out, _ = await _run(binary, "--header", "--json", str(source), seconds=HEADER_TIMEOUT)
    return header_start_us(out, named) if status == 0 else named


def header_start_us(printed: bytes, fallback: int) -> int:
    """The first-packet time of a header that ``janus-pp-rec --header --json`` printed:
    ``u`` (first packet written), else ``s`` (file created), else ``fallback``."""
    try:
        header = json.loads(printed.decode("utf-8", errors="replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        return fallback
    if not isinstance(header, dict):
        return fallback
    for key in ("u", "s"):
        value = header.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return fallback


def _non_empty(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _packets(
    container: Any, out_stream: Any, offset: Fraction
) -> Iterator[tuple[Fraction, int, Any]]:
    """The track's packets, each moved ``offset`` seconds later, with their times."""
    stream = container.streams[0]
    # In the input's own time base (the muxer rescales each packet from it), rounded
    # to its tick: 1 ms for janus-pp-rec's WebM, 1/48000 s for its Opus.
    shift = round(offset / stream.time_base)
    # A track recorded from the middle of a call may begin before its first keyframe;
    # those packets cannot be decoded, so a video track starts at its first keyframe.
    keyed = stream.type != "video"
    for packet in container.demux(stream):
        if packet.dts is None:
            continue
        keyed = keyed or packet.is_keyframe
        if not keyed:
            continue
        packet.dts += shift
        if packet.pts is not None:
            packet.pts += shift
        packet.stream = out_stream
        yield (packet.dts * stream.time_base, id(out_stream), packet)


def mux(tracks: Sequence[Track], target: Path) -> None:
    """Copy the first stream of each track into one WebM, in time order, each starting
    at its own start less the earliest track's."""
    earliest = min((t.start_us for t in tracks), default=0)
    inputs = [av.open(str(t.path)) for t in tracks]
    try:
        with av.open(str(target), "w", format="webm") as output:
            streams = []
            for track, container in zip(tracks, inputs, strict=True):
                stream = output.add_stream_from_template(container.streams[0])
                stream.metadata["title"] = track.title
                streams.append(stream)
            merged = heapq.merge(
                *(
                    _packets(c, s, Fraction(t.start_us - earliest, 1_000_000))
                    for t, c, s in zip(tracks, inputs, streams, strict=True)
                ),
                key=lambda item: (item[0], item[1]),
            )
            for _, _, packet in merged:
                output.mux(packet)
    finally:
        for container in inputs:
            container.close()


async def post_process(binary: str, folder: Path, target: Path) -> Path:
    """Turn every .mjr file in ``folder`` into one WebM at ``target``; remove the .mjr
    and intermediate files. Raises :class:`InfrastructureError` when nothing usable
    was recorded."""
    sources = recorded_files(folder)
    converted: list[Track] = []
    try:
        if not sources:
            raise InfrastructureError("janus: the recording has no tracks")
        for source in sources:
            found = MJR.match(source.name)
            assert found is not None
            suffix = ".opus" if found["kind"] == "audio" else ".webm"
            part = source.with_suffix(".part" + suffix)
            try:
                await _pp_rec(binary, source, part)
            except InfrastructureError:
                # An empty track (a publisher who sent nothing) is not a failed recording.
                logger.warning("skipping an unplayable track %s", source.name)
                _remove([part])
                continue
            start = await first_packet_us(binary, source)
            converted.append(Track(f"{found['kind']} of feed {found['feed']}", part, start))
        if not converted:
            raise InfrastructureError("janus: no track of the recording could be converted")
        await asyncio.to_thread(mux, converted, target)
        return target
    except BaseException:
        _remove([target])
        raise
    finally:
        _remove([*sources, *(track.path for track in converted)])
