"""Turning a room's Janus recordings (.mjr files) into one playable WebM.

VideoRoom's recorder writes one .mjr file per track of each publisher, named
``videoroom-<room>-user-<feed>-<epoch us>-<audio|video>-<mindex>.mjr``.
``janus-pp-rec`` turns each into a playable file (Opus audio into .opus, VP8
video into .webm); PyAV then copies every track, without re-encoding, into one
WebM (Matroska), interleaved by time. Each track's title is its publisher's feed
id. Every publisher's tracks start at zero: the offsets of publishers who joined
later are not restored (docs/rtc.md).

Nothing here deletes the result: the caller hands it to the recording store,
which seals it, and then removes it. The .mjr files and the intermediate files
are removed here, whatever happens.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import re
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from teleconsult.core.errors import InfrastructureError

logger = logging.getLogger(__name__)

MJR = re.compile(r"^videoroom-(?P<room>\d+)-user-(?P<feed>\d+)-(?P<at>\d+)-(?P<kind>audio|video)")
PP_TIMEOUT = 600.0


def recorded_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.mjr") if MJR.match(p.name))


async def _pp_rec(binary: str, source: Path, target: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        binary,
        str(source),
        str(target),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(process.communicate(), PP_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise InfrastructureError(f"janus-pp-rec timed out on {source.name}") from None
    if process.returncode != 0 or not await asyncio.to_thread(_non_empty, target):
        tail = err.decode(errors="replace")[-300:]
        raise InfrastructureError(f"janus-pp-rec failed on {source.name}: {tail}")


def _non_empty(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _packets(container: Any, out_stream: Any) -> Iterator[tuple[Fraction, int, Any]]:
    stream = container.streams[0]
    # A track recorded from the middle of a call may begin before its first keyframe;
    # those packets cannot be decoded, so a video track starts at its first keyframe.
    keyed = stream.type != "video"
    for packet in container.demux(stream):
        if packet.dts is None:
            continue
        keyed = keyed or packet.is_keyframe
        if not keyed:
            continue
        packet.stream = out_stream
        yield (packet.dts * stream.time_base, id(out_stream), packet)


def mux(parts: Sequence[tuple[str, Path]], target: Path) -> None:
    """Copy the first stream of each part (title, file) into one WebM, in time order."""
    inputs = [av.open(str(path)) for _, path in parts]
    try:
        with av.open(str(target), "w", format="webm") as output:
            streams = []
            for (title, _), container in zip(parts, inputs, strict=True):
                stream = output.add_stream_from_template(container.streams[0])
                stream.metadata["title"] = title
                streams.append(stream)
            merged = heapq.merge(
                *(_packets(c, s) for c, s in zip(inputs, streams, strict=True)),
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
    converted: list[tuple[str, Path]] = []
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
            converted.append((f"{found['kind']} of feed {found['feed']}", part))
        if not converted:
            raise InfrastructureError("janus: no track of the recording could be converted")
        await asyncio.to_thread(mux, converted, target)
        return target
    except BaseException:
        _remove([target])
        raise
    finally:
        _remove([*sources, *(part for _, part in converted)])
