"""The Janus backend of the Sfu interface against a real Janus on loopback, with real
aiortc peers (tests/januskit.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import aiohttp
import av
import pytest

from teleconsult.core.errors import Forbidden, InfrastructureError
from teleconsult.rtc.janus import UNAUTHORIZED, JanusError, JanusSession
from teleconsult.rtc.janus_process import JanusProcess
from teleconsult.rtc.janus_recording import header_start_us, post_process
from teleconsult.rtc.janus_sfu import JanusSfu
from teleconsult.rtc.sfu import SfuEvent, SfuEventKind, SfuRole
from tests.januskit import SfuPeer, require_janus, running_janus, wait_for


@pytest.fixture
async def janus(tmp_path: Path) -> AsyncIterator[tuple[JanusProcess, JanusSfu]]:
    async with running_janus(tmp_path / "janus") as found:
        yield found


@pytest.fixture
async def outsider(janus: tuple[JanusProcess, JanusSfu]) -> AsyncIterator[JanusSession]:
    """A Janus session of someone who holds no secret (as a browser would)."""
    async with aiohttp.ClientSession() as http:
        session = await JanusSession.create(http, janus[0].url)
        try:
            yield session
        finally:
            await session.destroy()


async def join_as(session: JanusSession, room: int, feed: int, token: str | None) -> Any:
    handle = await session.attach()
    body: dict[str, Any] = {
        "request": "join",
        "ptype": "publisher",
        "room": room,
        "id": feed,
        "display": "someone",
    }
    if token is not None:
        body["token"] = token
    data, _ = await session.request(handle, body)
    return data


async def exists(session: JanusSession, room: int) -> bool:
    handle = await session.attach()
    data, _ = await session.request(handle, {"request": "exists", "room": room})
    return bool(data["exists"])


async def test_the_server_creates_and_destroys_rooms(
    janus: tuple[JanusProcess, JanusSfu], outsider: JanusSession
) -> None:
    _, sfu = janus
    consultation = uuid4()
    room = await sfu.create_room(consultation)
    assert room.backend == "janus"
    assert await exists(outsider, int(room.name))
    assert await sfu.create_room(consultation) == room  # idempotent
    await sfu.close_room(consultation)
    assert not await exists(outsider, int(room.name))
    await sfu.close_room(consultation)  # idempotent


async def test_nobody_without_the_admin_key_creates_a_room(
    janus: tuple[JanusProcess, JanusSfu], outsider: JanusSession
) -> None:
    handle = await outsider.attach()
    with pytest.raises(JanusError) as missing:
        await outsider.request(handle, {"request": "create", "room": 4242})
    assert "admin_key" in str(missing.value)
    with pytest.raises(JanusError) as refused:
        await outsider.request(handle, {"request": "create", "room": 4242, "admin_key": "guess"})
    assert refused.value.code == UNAUTHORIZED
    assert not await exists(outsider, 4242)


async def test_nobody_without_the_room_secret_destroys_a_room(
    janus: tuple[JanusProcess, JanusSfu], outsider: JanusSession
) -> None:
    _, sfu = janus
    room = int((await sfu.create_room(uuid4())).name)
    handle = await outsider.attach()
    with pytest.raises(JanusError) as refused:
        await outsider.request(handle, {"request": "destroy", "room": room, "secret": "guess"})
    assert refused.value.code == UNAUTHORIZED
    assert await exists(outsider, room)


async def test_a_grant_holds_the_room_and_own_token_only(
    janus: tuple[JanusProcess, JanusSfu],
) -> None:
    _, sfu = janus
    consultation = uuid4()
    grant = await sfu.grant(consultation, "patient-1", SfuRole.PATIENT)
    assert grant.backend == "janus" and grant.role is SfuRole.PATIENT
    assert set(grant.details) == {"room", "token", "feed"}
    assert grant.details["room"] == sfu.room_number(consultation)
    again = await sfu.grant(consultation, "patient-1", SfuRole.PATIENT)
    assert again.details["token"] == grant.details["token"]
    other = await sfu.grant(consultation, "doctor-1", SfuRole.DOCTOR)
    assert other.details["token"] != grant.details["token"]


async def test_joining_needs_a_granted_token(
    janus: tuple[JanusProcess, JanusSfu], outsider: JanusSession
) -> None:
    _, sfu = janus
    consultation = uuid4()
    grant = await sfu.grant(consultation, "patient-1", SfuRole.PATIENT)
    room, feed = grant.details["room"], grant.details["feed"]
    for token in (None, "not-a-granted-token"):
        with pytest.raises(JanusError) as refused:
            await join_as(outsider, room, feed, token)
        assert refused.value.code == UNAUTHORIZED
    joined = await join_as(outsider, room, feed, grant.details["token"])
    assert joined["videoroom"] == "joined" and joined["id"] == feed
    assert [p.identity for p in await sfu.participants(consultation)] == ["someone"]


async def test_a_removed_participant_cannot_rejoin_with_the_same_token(
    janus: tuple[JanusProcess, JanusSfu], outsider: JanusSession
) -> None:
    _, sfu = janus
    consultation = uuid4()
    await sfu.grant(consultation, "doctor-1", SfuRole.DOCTOR)
    grant = await sfu.grant(consultation, "guest-1", SfuRole.GUEST)
    room, feed, token = grant.details["room"], grant.details["feed"], grant.details["token"]
    await join_as(outsider, room, feed, token)
    assert len(await sfu.participants(consultation)) == 1

    await sfu.remove(consultation, "guest-1")
    await wait_for(lambda: _count(sfu, consultation, 0))
    with pytest.raises(JanusError) as refused:
        await join_as(outsider, room, feed, token)
    assert refused.value.code == UNAUTHORIZED
    await sfu.remove(consultation, "guest-1")  # idempotent
    # The relay refuses too: the server forgot the token.
    await _publish_is_forbidden(sfu, consultation, "guest-1")


async def _publish_is_forbidden(sfu: JanusSfu, consultation: UUID, identity: str) -> None:
    peer = SfuPeer(identity, video=False)
    try:
        with pytest.raises(Forbidden):
            await sfu.publish(consultation, identity, await peer.offer())
    finally:
        await peer.close()


async def _count(sfu: JanusSfu, consultation: UUID, n: int) -> bool:
    return len(await sfu.participants(consultation)) == n


async def test_an_observer_may_not_publish(janus: tuple[JanusProcess, JanusSfu]) -> None:
    _, sfu = janus
    consultation = uuid4()
    await sfu.grant(consultation, "observer-1", SfuRole.OBSERVER)
    await _publish_is_forbidden(sfu, consultation, "observer-1")


async def _publish_all(sfu: JanusSfu, consultation: UUID, peers: list[SfuPeer]) -> None:
    roles = [SfuRole.DOCTOR, SfuRole.PATIENT, SfuRole.GUEST]
    for peer, role in zip(peers, roles, strict=False):
        await sfu.grant(consultation, peer.identity, role)
        await peer.published(await sfu.publish(consultation, peer.identity, await peer.offer()))
    for peer in peers:
        assert await sfu.wait_live(consultation, peer.identity)


async def _subscribe_all(sfu: JanusSfu, consultation: UUID, peers: list[SfuPeer]) -> None:
    for peer in peers:
        others = [p.identity for p in peers if p is not peer]
        offer = (await sfu.subscription(consultation, peer.identity, others)).sdp
        await sfu.answer(consultation, peer.identity, await peer.answer(offer))


@pytest.mark.slow
async def test_three_peers_each_receive_the_other_two(
    janus: tuple[JanusProcess, JanusSfu],
) -> None:
    _, sfu = janus
    consultation = uuid4()
    events: list[SfuEvent] = []

    async def handler(event: SfuEvent) -> None:
        events.append(event)

    sfu.on_event(handler)
    # Audio only: aiortc (not Janus, not browsers) drops the second of two video streams
    # in one subscription; each peer still gets one stream from each of the other two.
    peers = [SfuPeer(name, video=False) for name in ("doctor", "patient", "interpreter")]
    try:
        await _publish_all(sfu, consultation, peers)
        await _subscribe_all(sfu, consultation, peers)
        listed = await sfu.participants(consultation)
        assert sorted(p.identity for p in listed) == ["doctor", "interpreter", "patient"]
        assert all(p.publishing for p in listed)
        for peer in peers:
            # Two publishers, one audio stream each: two inbound streams that grow.
            await wait_for(lambda peer=peer: _streams(peer, 2))
            first = await peer.inbound_packets()
            await wait_for(lambda peer=peer, first=first: _grew(peer, first))
        joined = {e.identity for e in events if e.kind is SfuEventKind.JOINED}
        assert joined == {"doctor", "patient", "interpreter"}
    finally:
        for peer in peers:
            await peer.close()


async def _streams(peer: SfuPeer, n: int) -> bool:
    counts = await peer.inbound_packets()
    return len(counts) >= n and all(c > 0 for c in counts.values())


async def _grew(peer: SfuPeer, before: dict[str, int]) -> bool:
    now = await peer.inbound_packets()
    return all(now.get(ssrc, 0) > count for ssrc, count in before.items())


def _recording_end(sfu: JanusSfu, read: Callable[[Path], None]) -> asyncio.Future[SfuEvent]:
    """The recording's end (finished or failed); ``read`` looks at the finished WebM while
    it is there, as the recording store would (it seals it)."""
    finished: asyncio.Future[SfuEvent] = asyncio.get_running_loop().create_future()

    async def handler(event: SfuEvent) -> None:
        if event.kind is SfuEventKind.RECORDING_FINISHED:
            assert event.file_path is not None
            await asyncio.to_thread(read, Path(event.file_path))
        if event.kind in (SfuEventKind.RECORDING_FINISHED, SfuEventKind.RECORDING_FAILED):
            finished.set_result(event)

    sfu.on_event(handler)
    return finished


def _written(folder: Path, files: int, size: int) -> Callable[[], Awaitable[bool]]:
    """Whether ``folder`` holds ``files`` .mjr files, each over ``size`` bytes."""

    def there() -> bool:
        mjr = list(folder.glob("*.mjr"))
        return len(mjr) == files and all(p.stat().st_size > size for p in mjr)

    async def check() -> bool:
        return await asyncio.to_thread(there)

    return check


@pytest.mark.slow
async def test_a_recording_becomes_one_playable_webm_and_no_raw_file_stays(
    janus: tuple[JanusProcess, JanusSfu],
) -> None:
    process, sfu = janus
    consultation = uuid4()
    seen: dict[str, Any] = {}

    def read(path: Path) -> None:
        seen["mode"] = path.parent.stat().st_mode & 0o777
        with av.open(str(path)) as media:
            seen["kinds"] = sorted(s.type for s in media.streams)
            seen["frames"] = sum(1 for _ in media.decode(media.streams.video[0]))

    finished = _recording_end(sfu, read)
    peers = [SfuPeer("doctor"), SfuPeer("patient")]
    try:
        await _publish_all(sfu, consultation, peers)
        recording_id = await sfu.start_recording(consultation)
        folder = process.recordings / str(sfu.room_number(consultation))
        assert folder.stat().st_mode & 0o777 == 0o700
        await wait_for(_written(folder, 4, 20_000), within=60)
        await sfu.stop_recording(consultation, recording_id)
        event = await asyncio.wait_for(finished, 120)
    finally:
        for peer in peers:
            await peer.close()
    assert event.kind is SfuEventKind.RECORDING_FINISHED, event
    assert event.recording_id == recording_id and event.consultation_id == consultation
    assert seen["kinds"] == ["audio", "audio", "video", "video"]
    assert seen["frames"] > 0
    assert seen["mode"] == 0o700
    await sfu.wait_recordings()
    assert list(folder.iterdir()) == []  # no .mjr, no intermediate file, no plaintext WebM


async def test_post_processing_an_empty_recording_fails_and_leaves_nothing(
    tmp_path: Path,
) -> None:

    _, pp = require_janus()
    folder = tmp_path / "rec"
    folder.mkdir()
    # A track file that is not a Janus recording at all.
    (folder / "videoroom-1-user-2-3-audio-0.mjr").write_bytes(b"not a recording")
    with pytest.raises(InfrastructureError):
        await post_process(pp, folder, folder / "out.webm")
    assert list(folder.iterdir()) == []


# How long the second publisher waits after the recording started (not asserted as a
# time: the WebM must show it joined later, by clearly more than half of it).
LATE_BY = 2.0


def _first_seconds(path: Path) -> dict[str, float]:
    """Each track's (title's) first packet time in the WebM, in seconds."""
    firsts: dict[str, float] = {}
    with av.open(str(path)) as media:
        for packet in media.demux():
            title, base = packet.stream.metadata["title"], packet.stream.time_base
            if packet.pts is not None and base is not None and title not in firsts:
                firsts[title] = float(packet.pts * base)
    return firsts


@pytest.mark.slow
async def test_a_late_publisher_starts_at_its_real_offset_in_the_webm(
    janus: tuple[JanusProcess, JanusSfu],
) -> None:
    process, sfu = janus
    consultation = uuid4()
    firsts: dict[str, float] = {}
    finished = _recording_end(sfu, lambda path: firsts.update(_first_seconds(path)))
    early, late = SfuPeer("doctor"), SfuPeer("patient")
    try:
        await _publish_all(sfu, consultation, [early])
        recording_id = await sfu.start_recording(consultation)
        folder = process.recordings / str(sfu.room_number(consultation))
        await wait_for(_written(folder, 2, 5_000), within=60)
        await asyncio.sleep(LATE_BY)
        grant = await sfu.grant(consultation, late.identity, SfuRole.PATIENT)
        await late.published(await sfu.publish(consultation, late.identity, await late.offer()))
        assert await sfu.wait_live(consultation, late.identity)
        await wait_for(_written(folder, 4, 20_000), within=60)
        await sfu.stop_recording(consultation, recording_id)
        event = await asyncio.wait_for(finished, 120)
    finally:
        await early.close()
        await late.close()
    assert event.kind is SfuEventKind.RECORDING_FINISHED, event
    late_feed = grant.details["feed"]
    late_tracks = {t: s for t, s in firsts.items() if t.endswith(f"feed {late_feed}")}
    early_tracks = {t: s for t, s in firsts.items() if t not in late_tracks}
    assert sorted(t.split()[0] for t in late_tracks) == ["audio", "video"], firsts
    assert sorted(t.split()[0] for t in early_tracks) == ["audio", "video"], firsts
    # The first publisher starts the WebM; the late one starts about LATE_BY later.
    assert min(early_tracks.values()) < 0.5, firsts
    assert min(late_tracks.values()) >= LATE_BY / 2, firsts


def test_a_tracks_start_is_its_headers_first_packet_time() -> None:
    printed = b'{"t": "a", "c": "opus", "s": 1700000000000100, "u": 1700000000050000}\n'
    assert header_start_us(printed, 7) == 1700000000050000
    assert header_start_us(b'{"t": "a", "s": 1700000000000100}', 7) == 1700000000000100
    for junk in (b"", b"not json", b"[1]", b'{"u": "soon", "s": true}', b'{"u": 0}'):
        assert header_start_us(junk, 7) == 7, junk
