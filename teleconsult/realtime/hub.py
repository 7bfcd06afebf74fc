"""Live delivery to this process's connections of one namespace, fed through the bus.

Connections are bound to addresses (``/chat``: a user id; ``/signal``: a room peer
id). ``publish`` delivers an event to every connection bound to any of the given
addresses, on any server process:

- here, at once, without touching the bus;
- elsewhere, through ONE bus frame per event on the namespace's channel, carrying
  the addresses. Every other process decodes it once and delivers to its own
  connections. A process holds one bus subscription per namespace, whatever the
  number of users.

Each event is encoded once per encoding (JSON or msgpack clients) and the same
engine.io packets are queued for every recipient (``seam``); nothing per recipient
runs as a task. Back-pressure: a connection whose engine.io backlog passes
``max_events`` events, or ``max_bytes`` bytes (encoded) handed over since its
backlog was last seen empty, is a slow consumer. What it had not read is
dropped, it is told ``bye {"reason": "slow_consumer"}`` ahead of anything else,
and it is disconnected; it resumes by seq when it comes back.

Live delivery is best effort (the bus is at most once, slow consumers are cut);
what makes chat reliable is the per-thread seq and resume (docs/protocol.md).
When the bus comes back after an outage, a hub with a ``resync_event`` tells every
connection it holds to resume at once: frames published meanwhile by other
processes never reached it, and nobody would otherwise notice until the next
message in the thread.

Concurrency: call from the event loop only. ``publish`` returns at once; local
delivery runs right after the caller's current step (so a request's ack is queued
before the pushes it causes), and both local delivery and the bus sender keep the
order of ``publish`` calls.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgpack
import socketio

from teleconsult.core.bus import Bus, Subscription
from teleconsult.core.errors import InfrastructureError
from teleconsult.core.tasks import cancel_and_wait
from teleconsult.realtime import seam
from teleconsult.realtime.connection import Connection
from teleconsult.realtime.server import Encoding

logger = logging.getLogger(__name__)

SLOW_CONSUMER = "slow_consumer"
# A pushed event's data in the client's encoding (e.g. an envelope as JSON).
Adapter = Callable[[str, Mapping[str, Any], Encoding], Any]
# Called when a connection is to be closed for falling behind.
Closer = Callable[[Connection, str], Any]

_MAX_PENDING_FRAMES = 10_000  # frames waiting for the bus before the oldest are dropped


def _plain(_event: str, data: Mapping[str, Any], _encoding: Encoding) -> Any:
    return data


class _Encoded:
    """One event's engine.io packets per encoding, and their size, built on first use."""

    __slots__ = ("_adapt", "_data", "_event", "_hub", "_packets")

    def __init__(self, hub: Hub, event: str, data: Mapping[str, Any]) -> None:
        self._hub, self._event, self._data = hub, event, data
        self._adapt = hub.adapt
        self._packets: dict[Encoding, tuple[seam.Packets, int]] = {}

    def packets(self, encoding: Encoding) -> tuple[seam.Packets, int]:
        found = self._packets.get(encoding)
        if found is None:
            payload = self._adapt(self._event, self._data, encoding)
            packets = seam.event_packets(
                self._hub.server, self._hub.namespace, self._event, payload
            )
            found = (packets, seam.size(packets))
            self._packets[encoding] = found
        return found


class Hub:
    def __init__(
        self,
        server: socketio.AsyncServer,
        bus: Bus,
        *,
        namespace: str,
        channel: str,
        max_events: int,
        max_bytes: int,
        adapt: Adapter = _plain,
        resync_event: str | None = None,
    ) -> None:
        """``resync_event``: told (with ``{}``) to every connection when the bus has been
        subscribed again after losing messages; None to tell nothing."""
        self.server = server
        self._resync_event = resync_event
        self.namespace = namespace
        self.adapt = adapt
        self._bus = bus
        self._channel = channel
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._origin = secrets.token_bytes(8)
        # An address's connections: most addresses have one, kept without a dict.
        self._bound: dict[str, Connection | dict[str, Connection]] = {}
        self._closer: Closer | None = None
        self._subscription: Subscription | None = None
        self._outbound: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.slow_consumers = 0
        self.publish_failures = 0
        self.resyncs = 0
        self._closed = False

    # --- lifecycle --------------------------------------------------------------------

    def on_slow_consumer(self, closer: Closer) -> None:
        self._closer = closer

    async def start(self) -> None:
        if self._bus.shared:
            if self._resync_event is not None:
                self._bus.on_resubscribed(self._resync)
            self._subscription = await self._bus.subscribe(self._channel, self._receive)
            self._sender = asyncio.create_task(
                self._send_frames(), name=f"hub-sender{self._channel}"
            )

    async def close(self) -> None:
        self._closed = True
        if self._sender is not None:
            self._wake.set()
            await cancel_and_wait([self._sender])
        if self._subscription is not None:
            await self._subscription.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._bound.clear()

    # --- addresses --------------------------------------------------------------------

    def bind(self, address: str, conn: Connection) -> None:
        bound = self._bound.get(address)
        if bound is None or bound is conn:
            self._bound[address] = conn
        elif isinstance(bound, Connection):
            self._bound[address] = {bound.sid: bound, conn.sid: conn}
        else:
            bound[conn.sid] = conn

    def unbind(self, address: str, conn: Connection) -> bool:
        """Stop delivering ``address`` to ``conn``; True when nothing here is bound to it."""
        bound = self._bound.get(address)
        if bound is None:
            return True
        if isinstance(bound, Connection):
            if bound is not conn:
                return False
            del self._bound[address]
            return True
        if bound.get(conn.sid) is conn:
            del bound[conn.sid]
        if len(bound) == 1:
            self._bound[address] = next(iter(bound.values()))
        elif not bound:
            del self._bound[address]
            return True
        return False

    def local(self, address: str) -> list[Connection]:
        bound = self._bound.get(address)
        if bound is None:
            return []
        return [bound] if isinstance(bound, Connection) else list(bound.values())

    def addresses(self) -> list[str]:
        return list(self._bound)

    def connection_count(self) -> int:
        return sum(1 if isinstance(b, Connection) else len(b) for b in self._bound.values())

    # --- publishing -------------------------------------------------------------------

    def publish(
        self,
        addresses: Iterable[str],
        event: str,
        data: Mapping[str, Any],
        *,
        skip: str | None = None,
    ) -> None:
        """Deliver to every connection bound to these addresses, here and on other processes.

        Never blocks and never raises for the bus: frames for other processes wait
        in order for the sender task (bounded; the oldest are dropped past the bound).
        """
        targets = list(dict.fromkeys(addresses))
        # Off the caller's path (its ack goes first), in call order (call_soon is FIFO).
        asyncio.get_running_loop().call_soon(self._deliver, targets, event, data, skip)
        if self._sender is not None:
            frame = msgpack.packb(
                {"o": self._origin, "a": targets, "e": event, "d": dict(data), "s": skip},
                use_bin_type=True,
            )
            if len(self._outbound) >= _MAX_PENDING_FRAMES:
                self._outbound.popleft()
                self.publish_failures += 1
            self._outbound.append(frame)
            self._wake.set()

    async def _send_frames(self) -> None:
        failing = False
        while not self._closed:
            while not self._outbound:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
            frame = self._outbound[0]
            try:
                await self._bus.publish(self._channel, frame)
            except InfrastructureError as exc:
                if not failing:
                    logger.warning("bus publish on %s failed (%s); retrying", self._channel, exc)
                failing = True
                self.publish_failures += 1
                await asyncio.sleep(0.2)
                continue
            if failing:
                logger.info("bus publish on %s works again", self._channel)
                failing = False
            if self._outbound and self._outbound[0] is frame:
                self._outbound.popleft()

    async def _receive(self, frame: bytes) -> None:
        try:
            decoded = msgpack.unpackb(frame, raw=False)
            if decoded["o"] == self._origin:
                return  # delivered here when it was published
            addresses, event, data, skip = decoded["a"], decoded["e"], decoded["d"], decoded["s"]
        except (ValueError, KeyError, TypeError, msgpack.ExtraData):
            logger.error("dropped an undecodable bus frame on %s", self._channel)
            return
        self._deliver(addresses, event, data, skip)

    def _resync(self) -> None:
        event = self._resync_event
        if event is None:
            return
        self.resyncs += 1
        told = 0
        for bound in list(self._bound.values()):
            for conn in (bound,) if isinstance(bound, Connection) else list(bound.values()):
                if not conn.closing and seam.backlog(self.server, conn.eio) is not None:
                    self.tell(conn, event, {})
                    told += 1
        logger.info("bus is back: told %d connection(s) of %s to resume", told, self.namespace)

    # --- delivery ---------------------------------------------------------------------

    def _deliver(
        self, addresses: Iterable[str], event: str, data: Mapping[str, Any], skip: str | None
    ) -> None:
        encoded: _Encoded | None = None
        for address in addresses:
            bound = self._bound.get(address)
            if bound is None:
                continue
            for conn in (bound,) if isinstance(bound, Connection) else list(bound.values()):
                if conn.sid == skip or conn.closing:
                    continue
                if encoded is None:
                    encoded = _Encoded(self, event, data)
                self._push(conn, *encoded.packets(conn.encoding))

    def _push(self, conn: Connection, packets: seam.Packets, size: int) -> None:
        backlog = seam.backlog(self.server, conn.eio)
        if backlog is None:
            return  # gone; its disconnect handler unbinds it
        if backlog == 0:
            conn.queued_bytes = 0
        if backlog >= self._max_events * len(packets) or conn.queued_bytes + size > self._max_bytes:
            self.slow_consumers += 1
            self._cut(conn)
            return
        seam.queue(self.server, conn.eio, packets)
        conn.queued_bytes += size

    def _cut(self, conn: Connection) -> None:
        if conn.closing or self._closer is None:
            return
        logger.info("closing a slow consumer", extra={"sid": conn.sid})
        task = asyncio.ensure_future(self._closer(conn, SLOW_CONSUMER))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def tell(
        self, conn: Connection, event: str, data: Mapping[str, Any], *, first: bool = False
    ) -> None:
        """Queue one event for one connection, after what waits for it or, ``first``,
        instead of it.

        ``first`` is for a connection cut for falling behind: what it had not read
        is dropped (on its whole engine.io session, other namespaces included: it
        resumes by seq) and it learns why at once.
        """
        packets = seam.event_packets(
            self.server, self.namespace, event, self.adapt(event, data, conn.encoding)
        )
        if first:
            seam.cut_in_line(self.server, conn.eio, packets)
        else:
            seam.queue(self.server, conn.eio, packets)
