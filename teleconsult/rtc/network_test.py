"""The server's own WebRTC peer for pre-call network tests, and the limits on it.

A client offers (a data channel, optionally one audio and one video track); an
:class:`EchoPeer` answers once ICE gathering is complete (no trickle), sends
every data-channel message straight back and returns each received track to
its sender, decoded and re-encoded as a call would be. While it runs it samples
its own statistics (RTCP round trips, inbound RTP loss and jitter, transport
bytes), and when it closes it reports them as :class:`ServerFigures`.

:class:`NetworkTestRunner` owns every peer of the process: at most
``max_concurrent`` at once (more: 503 ``unavailable`` with ``Retry-After``),
each closed at the latest ``max_seconds`` after it answered, all closed on
shutdown. It knows nothing of HTTP or SQL: whoever starts a test passes a
callback that stores the outcome.

The peer contacts only the addresses its :class:`PeerAddressPolicy` permits: the
offer's other candidates are dropped before aiortc sees them (an offer left with
none is refused, 422 ``peer_address_refused``), and its ICE agents ignore
checks from refused addresses (``ice_guard``). With public addresses given, the
answer names only those. Each test remembers the user and login session that
started it, so :meth:`NetworkTestRunner.end_sessions` can close a revoked
session's peers at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCInboundRtpStreamStats,
    RTCPeerConnection,
    RTCRemoteInboundRtpStreamStats,
    RTCSessionDescription,
    RTCStatsReport,
    RTCTransportStats,
)
from aiortc.mediastreams import MediaStreamError

from teleconsult.core.errors import ErrorCode, Unauthenticated, Unavailable
from teleconsult.rtc.addresses import Address, PeerAddressPolicy
from teleconsult.rtc.figures import RtpCounts, ServerFigures, ServerSamples, server_figures
from teleconsult.rtc.ice_guard import Refusal, guard_peer
from teleconsult.rtc.sdp import (
    CandidatesRefused,
    SdpError,
    announce,
    check_offer,
    clock_rates,
    filter_candidates,
)

logger = logging.getLogger(__name__)

EndReason = Literal["completed", "expired", "failed", "aborted"]
# An RTCIceServer as WebRTC spells it: {"urls": ..., "username": ..., "credential": ...}.
IceServer = Mapping[str, Any]
SAMPLE_INTERVAL = 0.5
# How long answering may take: applying the offer and gathering every candidate.
ANSWER_TIMEOUT = 10.0
# How long a finished test waits for its starter to record it (see NetworkTestRunner.arm).
ARM_TIMEOUT = 10.0
# How long shutdown waits for the peers to close and their outcomes to be stored.
CLOSE_TIMEOUT = 10.0


def _session_ended() -> Unauthenticated:
    return Unauthenticated(
        "the session ended while the server's peer answered", code=ErrorCode.TOKEN_INVALID
    )


def rtc_configuration(ice_servers: Sequence[IceServer] = ()) -> RTCConfiguration:
    """An RTCConfiguration with exactly these servers.

    An empty list means host candidates only: aiortc would otherwise fall back
    to a public STUN server.
    """
    servers = []
    for index, entry in enumerate(ice_servers):
        urls = entry.get("urls")
        if not (
            isinstance(urls, str)
            or (isinstance(urls, list) and urls and all(isinstance(u, str) for u in urls))
        ):
            raise ValueError(f"ice server {index}: 'urls' must be a string or a list of strings")
        servers.append(
            RTCIceServer(
                urls=urls, username=entry.get("username"), credential=entry.get("credential")
            )
        )
    return RTCConfiguration(iceServers=servers)


class EchoTrack(MediaStreamTrack):
    """Returns a received track to its sender, frame by frame."""

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.kind = source.kind
        self._source = source

    async def recv(self) -> Any:
        if self.readyState != "live":
            raise MediaStreamError
        return await self._source.recv()


class EchoPeer:
    """The server's side of one test. One owner drives it; ``end`` may be called anytime."""

    def __init__(
        self,
        configuration: RTCConfiguration,
        *,
        refusal: Refusal,
        public_ips: Sequence[Address] = (),
    ) -> None:
        self._pc = RTCPeerConnection(configuration)
        self._refusal = refusal
        self._public_ips = tuple(public_ips)
        self._samples = ServerSamples()
        self._ended = asyncio.Event()
        self._reason: EndReason | None = None
        self._connected_at: float | None = None
        self._clock_rates: dict[str, int] = {}
        self._sampler: asyncio.Task[None] | None = None
        self._close_lock = asyncio.Lock()
        self._figures: ServerFigures | None = None
        self._pc.on("datachannel", self._on_datachannel)
        self._pc.on("track", self._on_track)
        self._pc.on("connectionstatechange", self._on_state)

    @property
    def reason(self) -> EndReason | None:
        return self._reason

    @property
    def connected(self) -> bool:
        return self._connected_at is not None

    async def answer(self, offer_sdp: str) -> str:
        """Apply the offer (its candidates already filtered) and return the answer,
        with every local candidate in it, or only the public addresses."""
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except Exception as exc:  # aiortc refuses what it cannot use with assorted errors
            raise SdpError(f"the offer cannot be answered: {exc}"[:300]) from None
        # Before any socket exists: setLocalDescription gathers, then checks start.
        guard_peer(self._pc, self._refusal)
        await self._pc.setLocalDescription(await self._pc.createAnswer())
        local = self._pc.localDescription
        self._clock_rates = clock_rates(local.sdp)
        return announce(local.sdp, self._public_ips) if self._public_ips else local.sdp

    def end(self, reason: EndReason) -> None:
        """Ask the test to end (the first reason given is kept)."""
        if self._reason is None:
            self._reason = reason
        self._ended.set()

    async def wait(self) -> None:
        await self._ended.wait()

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        def echo(message: str | bytes) -> None:
            if channel.readyState == "open":
                channel.send(message)
                self._samples.messages_echoed += 1

        channel.on("message", echo)
        channel.on("close", lambda: self.end("completed"))

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._pc.addTrack(EchoTrack(track))

    def _on_state(self) -> None:
        state = self._pc.connectionState
        if state == "connected" and self._connected_at is None:
            self._connected_at = time.monotonic()
            self._sampler = asyncio.create_task(self._sample())
        elif state == "failed":
            self.end("failed")
        elif state == "closed":
            self.end("completed")

    async def _sample(self) -> None:
        """Keep each new RTCP round-trip estimate (aiortc reports only the latest)."""
        seen: dict[str, datetime] = {}
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL)
            report = await self._pc.getStats()
            for stats in report.values():
                if (
                    isinstance(stats, RTCRemoteInboundRtpStreamStats)
                    and stats.roundTripTime is not None
                    and seen.get(stats.id) != stats.timestamp
                ):
                    seen[stats.id] = stats.timestamp
                    self._samples.rtts.append(max(0.0, stats.roundTripTime))

    async def close(self) -> ServerFigures:
        """Measure one last time, then close the connection. Idempotent."""
        async with self._close_lock:
            if self._figures is not None:
                return self._figures
            self.end("aborted")
            if self._sampler is not None:
                self._sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._sampler
            try:
                self._figures = await self._measure()
            finally:
                await self._pc.close()
            return self._figures

    async def _measure(self) -> ServerFigures:
        inbound: list[RtpCounts] = []
        remote_lost: list[float] = []
        bytes_in = bytes_out = 0
        try:
            report = await self._pc.getStats()
        except Exception:  # a half-built connection: no figures, still closed
            logger.warning("network test: getStats failed", exc_info=True)
            report = RTCStatsReport()
        for stats in report.values():
            if isinstance(stats, RTCInboundRtpStreamStats):
                inbound.append(
                    RtpCounts(stats.kind, stats.packetsReceived, stats.packetsLost, stats.jitter)
                )
            elif isinstance(stats, RTCRemoteInboundRtpStreamStats):
                remote_lost.append(stats.fractionLost)
            elif isinstance(stats, RTCTransportStats):
                bytes_in += stats.bytesReceived
                bytes_out += stats.bytesSent
        connected = self._connected_at
        return server_figures(
            connected_seconds=None if connected is None else time.monotonic() - connected,
            samples=self._samples,
            inbound=inbound,
            remote_fraction_lost=remote_lost,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            clock_rates=self._clock_rates,
        )


@dataclass(frozen=True)
class Outcome:
    status: EndReason
    figures: ServerFigures


@dataclass(frozen=True)
class Started:
    answer_sdp: str
    expires_at: datetime


OnFinish = Callable[[UUID, Outcome], Awaitable[None]]


@dataclass(eq=False)
class _Test:
    test_id: UUID
    owner: Hashable
    user_id: UUID | None
    session_id: UUID | None
    peer: EchoPeer
    deadline: float  # loop time
    on_finish: OnFinish
    armed: asyncio.Event = field(default_factory=asyncio.Event)
    discard: bool = False
    holds_slot: bool = True
    revoked: bool = False
    task: asyncio.Task[None] | None = None


class NetworkTestRunner:
    """Every server peer of this process, under a count limit and a time limit.

    Lives on one event loop; request handlers may call ``start`` and ``stop``
    concurrently. Limits are per process: with several server processes each
    has its own ``max_concurrent``.
    """

    def __init__(
        self,
        *,
        max_concurrent: int,
        max_seconds: float,
        ice_servers: Sequence[IceServer] = (),
        answer_timeout: float = ANSWER_TIMEOUT,
        peer_policy: PeerAddressPolicy | None = None,
        public_ips: Sequence[Address] = (),
    ) -> None:
        """``peer_policy``: the remote addresses the peers may contact (default:
        public unicast only). ``public_ips``: the only addresses answers name."""
        if max_concurrent < 1 or max_seconds <= 0:
            raise ValueError("max_concurrent must be >= 1 and max_seconds > 0")
        self._policy = peer_policy or PeerAddressPolicy()
        self._public_ips = tuple(public_ips)
        self._max_concurrent = max_concurrent
        self._max_seconds = max_seconds
        self._configuration = rtc_configuration(ice_servers)
        self._answer_timeout = answer_timeout
        self._tests: dict[UUID, _Test] = {}
        self._owners: dict[Hashable, UUID] = {}
        self._slots = 0
        self._closing = False

    @property
    def max_seconds(self) -> float:
        return self._max_seconds

    @property
    def running(self) -> int:
        """Peers open right now (each holds one of the ``max_concurrent`` slots)."""
        return self._slots

    def is_running(self, test_id: UUID) -> bool:
        test = self._tests.get(test_id)
        return test is not None and test.holds_slot

    async def start(
        self,
        test_id: UUID,
        *,
        owner: Hashable,
        offer_sdp: str,
        on_finish: OnFinish,
        user_id: UUID | None = None,
        session_id: UUID | None = None,
    ) -> Started:
        """Answer ``offer_sdp`` with a new peer; ``on_finish`` gets its outcome once
        the peer has closed and the starter has called :meth:`arm`.

        A test already running for the same ``owner`` is ended first (aborted):
        someone who starts again does not hold two slots. ``user_id`` and
        ``session_id`` say whose it is, for :meth:`end_sessions`.
        """
        check_offer(offer_sdp)
        filtered = filter_candidates(offer_sdp, self._policy.refusal)
        if filtered.refused or filtered.mdns:
            logger.info(
                "network test %s: %d remote candidates refused, %d mDNS dropped, %d kept",
                test_id,
                len(filtered.refused),
                filtered.mdns,
                filtered.kept,
            )
        if filtered.unusable:
            raise CandidatesRefused(filtered.refused)
        if self._closing:
            raise Unavailable("the server is shutting down", headers={"Retry-After": "5"})
        previous = self._owners.get(owner)
        if previous is not None:
            await self.stop(previous, reason="aborted")
        if self._slots >= self._max_concurrent:
            raise Unavailable(
                "too many network tests are running; try again shortly",
                headers={"Retry-After": str(self._retry_after())},
            )
        loop = asyncio.get_running_loop()
        peer = EchoPeer(
            self._configuration, refusal=self._policy.refusal, public_ips=self._public_ips
        )
        test = _Test(
            test_id, owner, user_id, session_id, peer, loop.time() + self._max_seconds, on_finish
        )
        self._slots += 1
        self._tests[test_id] = test
        self._owners[owner] = test_id
        try:
            async with asyncio.timeout(self._answer_timeout):
                answer = await peer.answer(filtered.sdp)
            if test.revoked:
                raise _session_ended()
        except BaseException as exc:
            test.discard = True
            await self._close_peer(test)
            self._forget(test)
            if isinstance(exc, TimeoutError):
                raise Unavailable(
                    "the server's peer could not answer in time", headers={"Retry-After": "5"}
                ) from None
            raise
        test.task = asyncio.create_task(self._lifetime(test), name=f"network-test-{test_id}")
        remaining = max(0.0, test.deadline - loop.time())
        return Started(answer, datetime.now(UTC) + timedelta(seconds=remaining))

    def arm(self, test_id: UUID) -> None:
        """The starter has recorded the test: its outcome may now be stored."""
        test = self._tests.get(test_id)
        if test is not None:
            test.armed.set()

    async def stop(
        self, test_id: UUID, *, reason: EndReason = "completed", discard: bool = False
    ) -> bool:
        """End a test of this process and wait until its outcome is stored.

        False when no such test runs here. ``discard``: store nothing (the starter
        could not record it).
        """
        test = self._tests.get(test_id)
        if test is None:
            return False
        if discard:
            test.discard = True
            test.armed.set()
        test.peer.end(reason)
        if test.task is not None:
            # wait(), not await: a cancelled caller must not cancel the test's task.
            await asyncio.wait([test.task], timeout=ARM_TIMEOUT + CLOSE_TIMEOUT)
        return True

    async def end_sessions(self, covers: Callable[[UUID, UUID | None], bool]) -> int:
        """Close at once the peers of every test whose (user, login session) ``covers``
        says has ended; their outcomes (aborted) are stored in the background.

        Returns how many were closed. A test still answering is closed as soon as
        its answer is ready, and its starter gets 401 ``token_invalid``.
        """
        ended = [
            t
            for t in self._tests.values()
            if t.user_id is not None and not t.revoked and covers(t.user_id, t.session_id)
        ]
        for test in ended:
            test.revoked = True
            test.peer.end("aborted")
        running = [t for t in ended if t.task is not None]
        await asyncio.gather(*(self._close_peer(t) for t in running), return_exceptions=True)
        return len(ended)

    async def close(self) -> None:
        """Shutdown: end every test (aborted), store their outcomes, refuse new ones."""
        self._closing = True
        tests = list(self._tests.values())
        for test in tests:
            test.peer.end("aborted")
        tasks = [t.task for t in tests if t.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for test in tests:  # those still answering when shutdown began
            await self._close_peer(test)

    async def _lifetime(self, test: _Test) -> None:
        try:
            try:
                async with asyncio.timeout_at(test.deadline):
                    await test.peer.wait()
                status: EndReason = test.peer.reason or "completed"
            except TimeoutError:
                status = "expired"
            figures = await self._close_peer(test)
            if not figures.connected and status != "aborted":
                status = "failed"
            await self._report(test, Outcome(status, figures))
        finally:
            await self._close_peer(test)  # cancelled mid-way: still close the connection
            self._forget(test)

    async def _report(self, test: _Test, outcome: Outcome) -> None:
        try:
            async with asyncio.timeout(ARM_TIMEOUT):
                await test.armed.wait()
        except TimeoutError:
            logger.warning("network test %s ended before it was recorded", test.test_id)
            return
        if test.discard:
            return
        try:
            await test.on_finish(test.test_id, outcome)
        except Exception:
            logger.exception("network test %s: storing the outcome failed", test.test_id)

    async def _close_peer(self, test: _Test) -> ServerFigures:
        try:
            return await test.peer.close()
        finally:
            if test.holds_slot:
                test.holds_slot = False
                self._slots -= 1

    def _forget(self, test: _Test) -> None:
        self._tests.pop(test.test_id, None)
        if self._owners.get(test.owner) == test.test_id:
            del self._owners[test.owner]

    def _retry_after(self) -> int:
        """Seconds until the soonest running test reaches its time limit."""
        now = asyncio.get_running_loop().time()
        deadlines = [t.deadline for t in self._tests.values() if t.holds_slot]
        soonest = min(deadlines, default=now + 1)
        return max(1, math.ceil(soonest - now))
