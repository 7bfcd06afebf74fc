"""``teleconsult impair``: a userspace TCP proxy that makes a link weak.

Listens on a loopback port and forwards every connection to a target, shaping
each direction of each connection on its own, as a phone's own radio link:

* **delay with jitter**: each segment is held ``delay ± jitter`` (uniform);
  TCP delivers in order, so a segment never overtakes the one before it (a
  short delay behind a long one waits for it, as reordering does under TCP);
* **rate**: a token bucket of ``burst`` bytes filling at ``rate`` bits a
  second paces the bytes onto the link;
* **loss as stalls**: TCP cannot lose bytes, so a "lost" segment (chance
  ``loss``) arrives one retransmission timeout (``rto``) late and holds
  everything behind it, which is what loss does to a TCP stream;
* **cuts**: every connection is aborted at once, every ``cut_every`` seconds
  or on demand (:meth:`Impairer.cut`; SIGUSR1 to the command).

Bytes pass unchanged and in order; the proxy's own accounting (:class:`Flow`)
shows what it did, so tests check the shaping decisions rather than time.
Operator tooling: the server never imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ipaddress
import logging
import random
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any

logger = logging.getLogger(__name__)

SEGMENT = 1448  # bytes of payload in a full-sized segment (1500 MTU, TCP timestamps)
BUFFER = 64 * 1024  # bytes a direction holds before it stops reading (a socket buffer)
READ = 64 * 1024


@dataclass(frozen=True)
class Link:
    """One direction of a connection: what happens to its bytes on the way."""

    delay: float = 0.0  # seconds, one way
    jitter: float = 0.0  # seconds either side of ``delay``
    rate: float | None = None  # bits a second; None for no limit
    loss: float = 0.0  # chance a segment is lost (and stalls the stream for ``rto``)
    rto: float = 1.0  # seconds a lost segment holds the stream (TCP's minimum RTO is 1 s)
    burst: int = 2 * SEGMENT  # bytes the token bucket lets through at once

    def __post_init__(self) -> None:
        if self.delay < 0 or self.jitter < 0 or self.rto < 0:
            raise ValueError("delay, jitter and rto must not be negative")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be positive (or None for no limit)")
        if not 0 <= self.loss < 1:
            raise ValueError("loss must be at least 0 and below 1")
        if self.burst < SEGMENT:
            raise ValueError(f"burst must be at least one segment ({SEGMENT} bytes)")

    def describe(self) -> str:
        parts = [f"{self.delay * 1e3:g} ms ±{self.jitter * 1e3:g}"]
        if self.rate is not None:
            parts.append(f"{self.rate / 1e3:g} kbit/s")
        if self.loss:
            parts.append(f"{self.loss:.1%} loss (stalls of {self.rto:g} s)")
        return ", ".join(parts)


@dataclass(frozen=True)
class Impairment:
    """Both directions: ``up`` from the client to the target, ``down`` back."""

    up: Link = field(default_factory=Link)
    down: Link = field(default_factory=Link)
    cut_every: float | None = None  # seconds between cuts of every connection

    def describe(self) -> str:
        text = f"up: {self.up.describe()}; down: {self.down.describe()}"
        if self.cut_every:
            text += f"; every connection cut every {self.cut_every:g} s"
        return text


def _both(link: Link) -> Impairment:
    return Impairment(up=link, down=link)


# Per direction, per connection (each connection is one phone's link).
PRESETS: dict[str, Impairment] = {
    # As measured in issue 16: 400 ms ±100, 2 % loss, 100 kbit/s.
    "2g": _both(Link(delay=0.4, jitter=0.1, rate=100_000, loss=0.02)),
    "edge": _both(Link(delay=0.2, jitter=0.05, rate=200_000, loss=0.01)),
    "3g": Impairment(
        up=Link(delay=0.1, jitter=0.03, rate=400_000, loss=0.005),
        down=Link(delay=0.1, jitter=0.03, rate=1_000_000, loss=0.005),
    ),
}


class TokenBucket:
    """``burst`` bytes of tokens filling at ``rate`` bits a second; ``reserve`` says
    when ``n`` bytes may leave (in loop time, possibly in the future)."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._per_second = rate / 8
        self._burst = float(burst)
        self._tokens = float(burst)
        self._at = now  # the time ``_tokens`` is counted at

    def reserve(self, n: int, now: float) -> float:
        at = max(now, self._at)
        tokens = min(self._burst, self._tokens + (at - self._at) * self._per_second)
        if tokens >= n:
            tokens -= n
        else:
            at += (n - tokens) / self._per_second
            tokens = 0.0
        self._at, self._tokens = at, tokens
        return at


@dataclass
class Flow:
    """What one direction did, summed over its connections."""

    bytes: int = 0
    segments: int = 0
    stalls: int = 0  # segments "lost", each held for ``rto``
    stall_seconds: float = 0.0
    rate_wait_seconds: float = 0.0  # summed over segments: read until the bucket let it go
    min_hold: float | None = None  # shortest time a segment was held (read until written)
    max_hold: float = 0.0
    paced_span: float = 0.0  # longest span a connection's bucket scheduled, first to last
    max_buffered: int = 0

    def take(self, hold: float) -> None:
        self.min_hold = hold if self.min_hold is None else min(self.min_hold, hold)
        self.max_hold = max(self.max_hold, hold)

    def snapshot(self) -> dict[str, Any]:
        return {
            "bytes": self.bytes,
            "segments": self.segments,
            "stalls": self.stalls,
            "stall_s": round(self.stall_seconds, 3),
            "rate_wait_s": round(self.rate_wait_seconds, 3),
            "min_hold_ms": None if self.min_hold is None else round(self.min_hold * 1e3, 1),
            "max_hold_ms": round(self.max_hold * 1e3, 1),
            "paced_span_s": round(self.paced_span, 3),
            "max_buffered": self.max_buffered,
        }


@dataclass
class Counters:
    connections: int = 0  # accepted
    open: int = 0
    refused: int = 0  # the target did not accept
    cuts: int = 0
    cut_connections: int = 0
    up: Flow = field(default_factory=Flow)
    down: Flow = field(default_factory=Flow)

    def snapshot(self) -> dict[str, Any]:
        return {
            "connections": self.connections,
            "open": self.open,
            "refused": self.refused,
            "cuts": self.cuts,
            "cut_connections": self.cut_connections,
            "up": self.up.snapshot(),
            "down": self.down.snapshot(),
        }


_EOF = b""


class _Direction:
    """Reads one side, schedules each segment's release, writes the other side."""

    def __init__(
        self,
        link: Link,
        flow: Flow,
        rng: random.Random,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._link, self._flow, self._rng = link, flow, rng
        self._reader, self._writer = reader, writer
        self._bucket = (
            None if link.rate is None else TokenBucket(link.rate, link.burst, loop.time())
        )
        self._queue: collections.deque[tuple[float, float, bytes]] = collections.deque()
        self._queued = 0
        self._more = asyncio.Event()  # something was queued
        self._room = asyncio.Event()  # the queue went below BUFFER
        self._last_release = 0.0
        self._first_leave: float | None = None

    async def run(self) -> None:
        """Until EOF passed through; raises on a reset (the caller ends the connection)."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._read())
            group.create_task(self._write())

    def _schedule(self, data: bytes, now: float) -> None:
        link, flow = self._link, self._flow
        leave = now if self._bucket is None else self._bucket.reserve(len(data), now)
        if self._bucket is not None:
            if self._first_leave is None:
                self._first_leave = leave
            flow.paced_span = max(flow.paced_span, leave - self._first_leave)
        delay = max(0.0, link.delay + self._rng.uniform(-link.jitter, link.jitter))
        stall = link.rto if data and self._rng.random() < link.loss else 0.0
        release = max(leave + delay + stall, self._last_release)
        self._last_release = release
        if data:
            flow.bytes += len(data)
            flow.segments += 1
            flow.rate_wait_seconds += leave - now
            if stall:
                flow.stalls += 1
                flow.stall_seconds += stall
        self._queue.append((release, now, data))
        self._queued += len(data)
        flow.max_buffered = max(flow.max_buffered, self._queued)
        self._more.set()

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self._queued >= BUFFER:
                self._room.clear()
                await self._room.wait()
            chunk = await self._reader.read(READ)
            now = loop.time()
            if not chunk:
                self._schedule(_EOF, now)
                return
            for start in range(0, len(chunk), SEGMENT):
                self._schedule(chunk[start : start + SEGMENT], now)

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._more.clear()
                await self._more.wait()
            release = self._queue[0][0]
            wait = release - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            now = loop.time()
            out: list[bytes] = []
            eof = False
            while self._queue and self._queue[0][0] <= now:
                at, read_at, data = self._queue.popleft()
                self._queued -= len(data)
                if not data:
                    eof = True
                    break
                self._flow.take(now - read_at)
                out.append(data)
            self._room.set()
            if out:
                self._writer.write(b"".join(out))
                await self._writer.drain()
            if eof:
                if self._writer.can_write_eof():
                    self._writer.write_eof()
                return


class _Connection:
    def __init__(
        self, client: asyncio.StreamWriter, target: asyncio.StreamWriter, task: asyncio.Task[Any]
    ) -> None:
        self.client, self.target, self.task = client, target, task

    def abort(self) -> None:
        for writer in (self.client, self.target):
            writer.transport.abort()

    def cut(self) -> None:
        """Both sides at once, and whatever this connection still holds is dropped."""
        self.abort()
        self.task.cancel()


class Impairer:
    """The proxy: ``async with Impairer(target_port, impairment) as proxy`` listens on
    ``proxy.port`` (loopback) until the block ends. ``counters`` is its accounting."""

    def __init__(
        self,
        target_port: int,
        impairment: Impairment,
        *,
        target_host: str = "127.0.0.1",
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        seed: int | None = None,
    ) -> None:
        self.impairment = impairment
        self.counters = Counters()
        self.port = listen_port
        self._target = (target_host, target_port)
        self._listen = (listen_host, listen_port)
        self._rng = random.Random(seed)  # noqa: S311 - network weather, not secrets
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cutter: asyncio.Task[None] | None = None
        self._accepted: set[asyncio.StreamWriter] = set()  # client sides, from accept on
        self._closing = False

    async def __aenter__(self) -> Impairer:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def start(self) -> None:
        host, port = self._listen
        self._server = await asyncio.start_server(self._accept, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.impairment.cut_every:
            self._cutter = asyncio.create_task(self._cut_every(self.impairment.cut_every))

    async def close(self) -> None:
        if self._cutter is not None:
            self._cutter.cancel()
            await asyncio.gather(self._cutter, return_exceptions=True)
        self._closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.cut()
        for writer in list(self._accepted):
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=10)
        if self._server is not None:
            # Python 3.11 waits here until every accepted connection is gone; none
            # should be left, and a close must not hang if one is.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    def cut(self) -> int:
        """Abort every open connection, both sides; how many there were."""
        cut = list(self._connections)
        for conn in cut:
            conn.cut()
        self.counters.cuts += 1
        self.counters.cut_connections += len(cut)
        return len(cut)

    async def _cut_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            self.cut()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Never cancelled from outside: asyncio's stream server logs a cancelled handler
        # as an error. A cut or ``close`` cancels the pump instead.
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._accepted.add(writer)
        counters = self.counters
        counters.connections += 1
        try:
            if self._closing:
                writer.transport.abort()
                return
            try:
                target_reader, target_writer = await asyncio.open_connection(*self._target)
            except OSError:
                counters.refused += 1
                writer.transport.abort()
                return
            if self._closing:
                writer.transport.abort()
                target_writer.transport.abort()
                return
            up = _Direction(self.impairment.up, counters.up, self._rng, reader, target_writer)
            down = _Direction(self.impairment.down, counters.down, self._rng, target_reader, writer)
            pump = asyncio.create_task(_pump(up, down))
            conn = _Connection(writer, target_writer, pump)
            self._connections.add(conn)
            counters.open += 1
            try:
                await asyncio.wait({pump})
            finally:
                counters.open -= 1
                self._connections.discard(conn)
                conn.cut()
            if not pump.cancelled() and pump.exception() is not None:
                logger.error("a proxied connection failed", exc_info=pump.exception())
        finally:
            self._accepted.discard(writer)
            self._tasks.discard(task)


async def _pump(up: _Direction, down: _Direction) -> None:
    """Both directions until both passed their EOF; a reset or a cut ends both."""
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(up.run())
            group.create_task(down.run())
    except* (OSError, asyncio.IncompleteReadError):
        pass


# --- the command line ---------------------------------------------------------------------


def _address(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} must be HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def add_parser(sub: Any) -> None:
    """Add ``impair`` to the ``teleconsult`` command's subcommands."""
    parser = sub.add_parser(
        "impair",
        help="a TCP proxy that makes a link weak (delay, jitter, rate, loss, cuts)",
        description="Forward connections from a loopback port to a target, shaping each "
        "direction of each connection like a weak mobile link. Counters go to stderr once "
        "a second. SIGUSR1 cuts every connection at once.",
    )
    parser.add_argument("--listen", required=True, help="loopback HOST:PORT to listen on")
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), help="a link to start from (default: no shaping)"
    )
    parser.add_argument("--delay-ms", type=float, help="one-way delay of each direction")
    parser.add_argument("--jitter-ms", type=float, help="delay varies by up to this, either way")
    parser.add_argument("--rate-kbit", type=float, help="bits a second of each direction, in 1000s")
    parser.add_argument("--loss", type=float, help="share of segments lost (0.02 is 2 %%)")
    parser.add_argument("--rto-ms", type=float, help="how long a lost segment stalls the stream")
    parser.add_argument("--cut-every", type=float, help="abort every connection every N seconds")
    parser.add_argument("--duration", type=float, help="stop after N seconds (default: Ctrl-C)")
    parser.add_argument("--seed", type=int, help="seed the network weather, for repeatable runs")
    parser.add_argument("--quiet", action="store_true", help="no counters on stderr")


def impairment_from(args: argparse.Namespace) -> Impairment:
    """The preset, with the options given on the command line applied to both directions."""
    base = PRESETS[args.preset] if args.preset else Impairment()
    changes: dict[str, Any] = {}
    if args.delay_ms is not None:
        changes["delay"] = args.delay_ms / 1e3
    if args.jitter_ms is not None:
        changes["jitter"] = args.jitter_ms / 1e3
    if args.rate_kbit is not None:
        changes["rate"] = args.rate_kbit * 1e3 if args.rate_kbit > 0 else None
    if args.loss is not None:
        changes["loss"] = args.loss
    if args.rto_ms is not None:
        changes["rto"] = args.rto_ms / 1e3
    if args.cut_every is not None and args.cut_every <= 0:
        raise ValueError("--cut-every must be positive")
    return Impairment(
        up=replace(base.up, **changes),
        down=replace(base.down, **changes),
        cut_every=args.cut_every if args.cut_every is not None else base.cut_every,
    )


def progress_line(elapsed: float, counters: Counters, last: tuple[int, int]) -> str:
    up, down = counters.up, counters.down
    return (
        f"{elapsed:6.0f} s  open {counters.open}  connections {counters.connections}  "
        f"cuts {counters.cuts}  up {up.bytes / 1e3:.1f} kB (+{(up.bytes - last[0]) / 1e3:.1f}) "
        f"stalls {up.stalls}  down {down.bytes / 1e3:.1f} kB "
        f"(+{(down.bytes - last[1]) / 1e3:.1f}) stalls {down.stalls}"
    )


async def _serve(args: argparse.Namespace, impairment: Impairment) -> Counters:
    listen_host, listen_port = _address(args.listen, "--listen")
    target_host, target_port = _address(args.target, "--target")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    proxy = Impairer(
        target_port,
        impairment,
        target_host=target_host,
        listen_host=listen_host,
        listen_port=listen_port,
        seed=args.seed,
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, proxy.cut)
    async with proxy:
        print(
            f"teleconsult impair: {listen_host}:{proxy.port} -> {target_host}:{target_port}; "
            f"{impairment.describe()}",
            file=sys.stderr,
            flush=True,
        )
        began = time.monotonic()
        last = (0, 0)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            elapsed = time.monotonic() - began
            if not args.quiet:
                print(progress_line(elapsed, proxy.counters, last), file=sys.stderr, flush=True)
            last = (proxy.counters.up.bytes, proxy.counters.down.bytes)
            if args.duration is not None and elapsed >= args.duration:
                break
    return proxy.counters


def main(args: argparse.Namespace) -> int:
    """Run the proxy until Ctrl-C or ``--duration``; 2 when it cannot start."""
    try:
        impairment = impairment_from(args)
        listen_host, _ = _address(args.listen, "--listen")
        _address(args.target, "--target")
        if not _loopback(listen_host):
            raise ValueError("--listen must be a loopback address (this is a test tool)")
        counters = asyncio.run(_serve(args, impairment))
    except (ValueError, OSError) as exc:
        print(f"teleconsult impair: {exc}", file=sys.stderr)
        return 2
    print(f"teleconsult impair: stopped; {counters.snapshot()}", file=sys.stderr)
    return 0
