"""The impairment proxy (``teleconsult impair``): weak links without root or netem.

Real sockets on loopback: a target server, the proxy in front of it, a client.
Bytes must come through unchanged and in order whatever the weather; the
shaping is checked in the proxy's own accounting (each segment's hold, the
token bucket's schedule, the stalls it decided), never in wall time. Cuts
must close both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from teleconsult.loadtest.impair import (
    PRESETS,
    SEGMENT,
    Impairer,
    Impairment,
    Link,
    TokenBucket,
)
from tests.servers import free_port


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def round_trip(port: int, payload: bytes) -> bytes:
    """Send ``payload`` in uneven writes while reading the echo back; what came back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    rng = random.Random(7)

    async def send() -> None:
        at = 0
        while at < len(payload):
            step = rng.randint(1, 9000)
            writer.write(payload[at : at + step])
            await writer.drain()
            at += step
        writer.write_eof()

    async with asyncio.timeout(60):
        sending = asyncio.create_task(send())
        got = await reader.read(-1)  # until the echo's EOF
        await sending
    writer.close()
    return got


async def test_bytes_pass_unchanged_and_in_order_through_delay_jitter_and_stalls() -> None:
    payload = random.Random(1).randbytes(300_000)
    weather = Link(delay=0.02, jitter=0.02, loss=0.2, rto=0.05)
    async with echo_server() as target:
        async with Impairer(target, Impairment(up=weather, down=weather), seed=3) as proxy:
            got = await round_trip(proxy.port, payload)
            counters = proxy.counters
    assert got == payload
    assert counters.up.bytes == counters.down.bytes == len(payload)
    assert counters.up.segments >= len(payload) // SEGMENT
    # The proxy did stall some segments, and the bytes still came through in order.
    assert counters.up.stalls > 0 and counters.down.stalls > 0
    assert counters.up.stall_seconds == pytest.approx(counters.up.stalls * 0.05)


async def test_every_segment_is_held_at_least_the_delay_less_the_jitter() -> None:
    link = Link(delay=0.2, jitter=0.05)
    async with echo_server() as target:
        async with Impairer(target, Impairment(up=link, down=link), seed=5) as proxy:
            for _ in range(3):
                assert await round_trip(proxy.port, b"ping" * 100) == b"ping" * 100
            up, down = proxy.counters.up, proxy.counters.down
    assert up.min_hold is not None and down.min_hold is not None
    assert up.min_hold >= 0.15 and down.min_hold >= 0.15
    assert up.stalls == down.stalls == 0


async def test_the_rate_limit_paces_bytes_by_the_token_bucket() -> None:
    rate = 400_000  # bits a second: 100 kB take 2 s, less one burst
    link = Link(rate=rate)
    size = 100_000
    async with echo_server() as target:
        async with Impairer(target, Impairment(up=link), seed=1) as proxy:
            payload = os.urandom(size)
            assert await round_trip(proxy.port, payload) == payload
            up, down = proxy.counters.up, proxy.counters.down
    # The first burst goes at once; the rest at the rate (less float rounding).
    assert up.paced_span >= (size - link.burst) * 8 / rate - 1e-6
    assert up.rate_wait_seconds > 0
    # A segment is written no sooner than the bucket let it go: the last one waited
    # for nearly the whole span.
    assert up.max_hold >= up.paced_span - SEGMENT * 8 / rate
    assert down.paced_span == 0 and down.rate_wait_seconds == 0  # unlimited way back


def test_the_token_bucket_lets_a_burst_through_then_paces() -> None:
    bucket = TokenBucket(rate=8_000, burst=2000, now=0.0)  # 1000 bytes a second
    assert bucket.reserve(1000, 0.0) == 0.0
    assert bucket.reserve(1000, 0.0) == 0.0
    assert bucket.reserve(1000, 0.0) == pytest.approx(1.0)
    assert bucket.reserve(500, 0.0) == pytest.approx(1.5)
    # After a quiet spell the bucket is full again, no fuller than its burst.
    assert bucket.reserve(2000, 100.0) == 100.0
    assert bucket.reserve(1, 100.0) == pytest.approx(100.001)


async def _closed(reader: asyncio.StreamReader) -> bool:
    async with asyncio.timeout(10):
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass
    return True


@contextlib.asynccontextmanager
async def recording_server() -> AsyncIterator[tuple[int, asyncio.Queue[asyncio.StreamReader]]]:
    """A target that keeps each connection's reader for the test, and writes nothing."""
    accepted: asyncio.Queue[asyncio.StreamReader] = asyncio.Queue()
    writers: list[asyncio.StreamWriter] = []

    async def keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        accepted.put_nowait(reader)

    server = await asyncio.start_server(keep, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], accepted
    finally:
        for writer in writers:
            writer.transport.abort()
        server.close()
        await server.wait_closed()


async def test_a_cut_closes_both_sides_of_every_connection() -> None:
    async with recording_server() as (target, accepted):
        async with Impairer(target, Impairment(), seed=1) as proxy:
            client_reader, client_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            client_writer.write(b"hello")
            await client_writer.drain()
            server_reader = await asyncio.wait_for(accepted.get(), 10)
            assert await asyncio.wait_for(server_reader.readexactly(5), 10) == b"hello"
            assert proxy.cut() == 1
            assert await _closed(client_reader)
            assert await _closed(server_reader)
            client_writer.close()
            assert proxy.counters.cuts == 1 and proxy.counters.cut_connections == 1


async def test_cut_every_cuts_connections_by_itself() -> None:
    async with recording_server() as (target, accepted):
        async with Impairer(target, Impairment(cut_every=0.2), seed=1) as proxy:
            client_reader, client_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            server_reader = await asyncio.wait_for(accepted.get(), 10)
            assert await _closed(client_reader)
            assert await _closed(server_reader)
            client_writer.close()
            assert proxy.counters.cuts >= 1 and proxy.counters.cut_connections >= 1


async def test_closing_the_proxy_ends_every_connection_and_returns() -> None:
    async with recording_server() as (target, accepted):
        proxy = Impairer(target, Impairment(up=Link(delay=5.0)), seed=1)
        await proxy.start()
        client_reader, client_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        client_writer.write(b"held for five seconds")
        server_reader = await asyncio.wait_for(accepted.get(), 10)
        async with asyncio.timeout(30):
            await proxy.close()
        assert await _closed(client_reader)
        assert await _closed(server_reader)
        client_writer.close()
        assert proxy.counters.open == 0


async def test_a_target_that_refuses_closes_the_client_and_is_counted() -> None:
    async with Impairer(free_port(), Impairment(), seed=1) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await _closed(reader)
        writer.close()
        assert proxy.counters.refused == 1


def test_the_2g_preset_is_the_issues_link() -> None:
    link = PRESETS["2g"].up
    assert (link.delay, link.jitter, link.rate, link.loss) == (0.4, 0.1, 100_000, 0.02)
    assert PRESETS["2g"].down == link


@pytest.mark.slow
async def test_the_command_forwards_prints_counters_each_second_and_cuts_on_sigusr1(
    tmp_path: Path,
) -> None:
    listen = free_port()
    async with echo_server() as target:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "teleconsult",
            "impair",
            "--listen",
            f"127.0.0.1:{listen}",
            "--target",
            f"127.0.0.1:{target}",
            "--preset",
            "2g",
            "--rate-kbit",
            "2000",
            "--loss",
            "0",
            "--duration",
            "30",
            stderr=asyncio.subprocess.PIPE,
            cwd=tmp_path,
        )
        try:
            assert proc.stderr is not None
            first = await asyncio.wait_for(proc.stderr.readline(), 30)
            assert b"2000 kbit/s" in first
            assert await round_trip(listen, b"through the weak link") == b"through the weak link"
            reader, writer = await asyncio.open_connection("127.0.0.1", listen)
            line = b""
            async with asyncio.timeout(30):
                while b"open 1" not in line:
                    line = await proc.stderr.readline()
                proc.send_signal(signal.SIGUSR1)
                assert await _closed(reader)
                while b"cuts 1" not in line:
                    line = await proc.stderr.readline()
            writer.close()
            proc.send_signal(signal.SIGINT)
            rest = await asyncio.wait_for(proc.stderr.read(), 30)
            assert b"stopped" in rest
            assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def test_the_command_refuses_to_listen_beyond_loopback() -> None:
    from teleconsult.cli import main

    code = main(["impair", "--listen", "0.0.0.0:9999", "--target", "127.0.0.1:1"])
    assert code == 2
