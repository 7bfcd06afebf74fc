"""MQTT identity does not rest on the topic alone (issue 11), against real server processes.

Each test is an attack from the outside probe, run against a server process
(``python -m teleconsult serve``) and a real broker: its embedded amqtt
broker, or the system Mosquitto started from ``deploy/mosquitto/secure.conf``
(TLS swapped for a loopback listener, the ACL and password file as shipped).

* A Last Will on another user's ``req`` topic (or a retained one on their
  ``inbox``) runs nothing as that user and leaves nothing in their inbox.
* The bridge runs only requests signed by one of the topic user's devices:
  unsigned, foreign-device, wrongly signed and stale requests are dropped
  unanswered and counted.
* A refused CONNECT naming an online device's client id neither disconnects it
  nor drops its queued pushes.
* An MQTT 5 CONNECT to the embedded broker is answered "unacceptable protocol
  version" at once, logged without a traceback.
* A logout closes the user's live MQTT connections, and the token no longer
  connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import aiomqtt
import asyncpg
import pytest
from aiomqtt.exceptions import MqttConnectError

from teleconsult.accounts import store as accounts_store
from teleconsult.client.mqtt import MqttTransport
from teleconsult.core.identity import Role
from teleconsult.messaging import mqtt_connect, mqtt_wire
from teleconsult.messaging.mqtt_broker import BRIDGE_USERNAME
from tests.chatkit import Person, connect, people, socketio_transport
from tests.mosquittokit import RawLink, Will, connect_packet, free_port, secure_mosquitto
from tests.servers import ServerProcess
from tests.test_chat_mqtt import next_frame, request, signed
from tests.world import Account, make_user

pytestmark = pytest.mark.slow

WITHIN = 20.0  # every wait is bounded by this; nothing is timed
BRIDGE_PASSWORD = "bridge-password-for-security-tests"
DISCONNECT = b"\xe0\x00"


@dataclass
class Site:
    """A server process bridged to a broker of ``kind``, and three people in two clinics."""

    kind: str
    server: ServerProcess
    dsn: str
    port: int
    attacker: Account  # a patient of clinic A
    doctor: Account  # clinic B
    victim: Account  # a patient of clinic B
    passwords: dict[UUID, str] = field(default_factory=dict)  # Mosquitto's; else tokens

    @property
    def base(self) -> str:
        return self.server.base_url

    def password(self, who: Person) -> str:
        return self.passwords.get(who.user_id) or who.rest.access_token

    def client(self, who: Person, suffix: str, **kw: Any) -> aiomqtt.Client:
        return aiomqtt.Client(
            "127.0.0.1",
            self.port,
            username=str(who.user_id),
            password=self.password(who),
            identifier=f"{who.user_id}-{suffix}",
            **kw,
        )

    def device(self, who: Person) -> MqttTransport:
        password = self.password(who)

        async def token() -> str:
            return password

        return MqttTransport(
            "127.0.0.1",
            self.port,
            user_id=who.user_id,
            token=token,
            client_id=f"{who.user_id}-{who.device_id}",
            device_id=who.device_id,
            keys=who.keys,
        )


async def _accounts(dsn: str) -> tuple[Account, Account, Account]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        clinic_a, clinic_b = [
            await accounts_store.insert_clinic(
                pool, name=f"{name} {secrets.token_hex(3)}", timezone="UTC"
            )
            for name in ("Clinic A", "Clinic B")
        ]
        attacker = await make_user(pool, clinic_a.id, Role.PATIENT, tag="attacker")
        doctor = await make_user(pool, clinic_b.id, Role.DOCTOR, tag="doctor")
        victim = await make_user(pool, clinic_b.id, Role.PATIENT, tag="victim")
    finally:
        await pool.close()
    return attacker, doctor, victim


@contextlib.asynccontextmanager
async def _site(kind: str, dsn: str, root: Path) -> AsyncIterator[Site]:
    attacker, doctor, victim = await _accounts(dsn)
    if kind == "embedded":
        port = free_port()
        server = ServerProcess(dsn, root, MQTT_EMBEDDED_PORT=str(port))
        try:
            await server.start()
            yield Site(kind, server, dsn, port, attacker, doctor, victim)
        finally:
            await server.stop()
        return
    passwords = {a.user_id: f"mqtt-{secrets.token_hex(6)}" for a in (attacker, doctor, victim)}
    users = {BRIDGE_USERNAME: BRIDGE_PASSWORD} | {str(u): pw for u, pw in passwords.items()}
    with secure_mosquitto(root / "mosquitto", users) as port:
        url = f"mqtt://{BRIDGE_USERNAME}:{BRIDGE_PASSWORD}@127.0.0.1:{port}"
        server = ServerProcess(dsn, root, MQTT_URL=url)
        try:
            await server.start()
            await server.ready()
            yield Site(kind, server, dsn, port, attacker, doctor, victim, passwords)
        finally:
            await server.stop()


@pytest.fixture(params=["embedded", "mosquitto"])
async def site(
    request: pytest.FixtureRequest, fresh_db: str, tmp_path: Path
) -> AsyncIterator[Site]:
    async with _site(request.param, fresh_db, tmp_path) as s:
        yield s


@pytest.fixture
async def embedded(fresh_db: str, tmp_path: Path) -> AsyncIterator[Site]:
    async with _site("embedded", fresh_db, tmp_path) as s:
        yield s


OpenLink = Callable[[int], Awaitable[RawLink]]


@pytest.fixture
async def links() -> AsyncIterator[OpenLink]:
    """Opens raw MQTT connections; each is reset when the test ends."""
    async with contextlib.AsyncExitStack() as stack:

        async def open_link(port: int) -> RawLink:
            return await stack.enter_async_context(RawLink.open(port))

        yield open_link


async def _read_seq(dsn: str, thread: UUID, user: UUID) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        seq = await conn.fetchval(
            "SELECT read_seq FROM receipts WHERE thread_id = $1 AND user_id = $2", thread, user
        )
    finally:
        await conn.close()
    return int(seq or 0)


async def _audit_rows_naming(dsn: str, user: UUID) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        count = await conn.fetchval(
            "SELECT (SELECT count(*) FROM audit_log WHERE actor_id = $1)"
            " + (SELECT count(*) FROM audit_intake WHERE actor_id = $1)",
            user,
        )
    finally:
        await conn.close()
    return int(count)


async def _dropped(server: ServerProcess) -> dict[str, float]:
    """teleconsult_mqtt_requests_dropped_total by reason, from the server's /metrics."""
    async with aiohttp.ClientSession() as http:
        async with http.get(server.base_url + "/metrics") as resp:
            text = await resp.text()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("teleconsult_mqtt_requests_dropped_total{"):
            labels, value = line.rsplit(" ", 1)
            found[labels.split('reason="')[1].split('"')[0]] = float(value)
    return found


async def _barrier(site: Site, victim: Person, thread: UUID) -> list[tuple[str, Any]]:
    """The victim's own signed request and its ack; returns whatever came before it.

    The bridge runs one user's requests in arrival order, so anything published
    on the victim's ``req`` before this (a will) has been run once this is acked.
    A retained message on the victim's inbox is delivered on subscribing, so
    before the ack too.
    """
    seen: list[tuple[str, Any]] = []
    async with site.client(victim, "barrier") as v:
        await v.subscribe(
            [(mqtt_wire.ack_topic(victim.user_id), 1), (mqtt_wire.inbox_topic(victim.user_id), 1)]
        )
        body = signed(victim, "barrier", "presence", {"thread_id": str(thread)})
        await v.publish(mqtt_wire.request_topic(victim.user_id), body, qos=1)
        while True:
            topic, frame = await next_frame(v)
            if topic == mqtt_wire.ack_topic(victim.user_id) and frame.get("id") == "barrier":
                assert frame["ack"]["ok"] is True, frame
                return seen
            seen.append((topic, frame))


# --- 1. the Last Will bypass -----------------------------------------------------------


async def test_a_last_will_on_another_users_topics_runs_nothing_as_them(
    site: Site, links: OpenLink
) -> None:
    async with people(site.base, site.attacker, site.doctor, site.victim) as (
        attacker,
        doctor,
        victim,
    ):
        thread = await doctor.rest.create_thread([victim.user_id])
        d = await connect(doctor, socketio_transport(site.base, doctor))
        await d.send(thread, b"for the victim")
        marker = await _read_seq(site.dsn, thread, victim.user_id)
        audited = await _audit_rows_naming(site.dsn, victim.user_id)
        t = str(thread)
        receipt = {"thread_id": t, "delivered_seq": 1, "read_seq": 1}
        forged_message = mqtt_wire.encode_event(
            "message", {"thread_id": t, "seq": 99, "envelope": b"forged"}
        )
        wills = [
            Will(mqtt_wire.request_topic(victim.user_id), request("w1", "receipt", receipt)),
            Will(
                mqtt_wire.request_topic(victim.user_id),
                request("w2", "resume", {"threads": {t: 0}}),
            ),
            # Signed, but by the attacker's own device: not one of the victim's.
            Will(
                mqtt_wire.request_topic(victim.user_id),
                signed(attacker, "w3", "receipt", receipt, user=victim.user_id),
            ),
            Will(mqtt_wire.inbox_topic(victim.user_id), forged_message, retain=True),
            Will(
                mqtt_wire.request_topic(victim.user_id),
                request("w4", "receipt", receipt),
                retain=True,
            ),
        ]
        codes = []
        for i, will in enumerate(wills):
            client_id = f"{attacker.user_id}-will{i}"
            link = await links(site.port)
            codes.append(
                await link.connack(
                    connect_packet(
                        client_id,
                        username=str(attacker.user_id),
                        password=site.password(attacker),
                        will=will,
                        clean=False,
                    )
                )
            )
            link.kill()  # a dead link: the broker sends the will, if it kept one
            # Taking the session over ends the killed one (its will sent or
            # dropped) before this CONNACK, so before the barrier below.
            again = await links(site.port)
            code = await again.connack(
                connect_packet(
                    client_id, username=str(attacker.user_id), password=site.password(attacker)
                )
            )
            assert code == 0
            await again.send(DISCONNECT)
            again.kill()

        before = await _barrier(site, victim, thread)

        assert before == []  # no forged ack, no retained forged message
        assert await _read_seq(site.dsn, thread, victim.user_id) == marker == 0
        assert await _audit_rows_naming(site.dsn, victim.user_id) == audited
        if site.kind == "embedded":
            # Refused at CONNECT (not authorized).
            assert codes == [mqtt_connect.NOT_AUTHORIZED] * len(wills)
        else:
            # Mosquitto checks a will against the ACL when it sends it, and drops it.
            assert codes == [0] * len(wills)


# --- 2. the bridge proves who sent each request ----------------------------------------


async def test_the_bridge_drops_requests_no_device_of_the_topics_user_signed(
    embedded: Site,
) -> None:
    site = embedded
    async with people(site.base, site.attacker, site.doctor, site.victim) as (
        attacker,
        doctor,
        victim,
    ):
        thread = await doctor.rest.create_thread([victim.user_id])
        d = await connect(doctor, socketio_transport(site.base, doctor))
        await d.send(thread, b"for the victim")
        receipt = {"thread_id": str(thread), "delivered_seq": 1, "read_seq": 1}
        an_hour_ago = int(time.time() * 1000) - 3_600_000
        good = signed(victim, "ok", "receipt", receipt)
        forged = [
            request("unsigned", "receipt", receipt),
            # The attacker's own device, signing for the victim's topic.
            signed(attacker, "foreign", "receipt", receipt, user=victim.user_id),
            # The victim's device id, the attacker's key.
            _with_device(
                signed(attacker, "badsig", "receipt", receipt, user=victim.user_id),
                attacker,
                victim,
            ),
            # A request the victim really signed, an hour ago (a replay).
            signed(victim, "stale", "receipt", receipt, ts=an_hour_ago),
            # Signed for another user's topic and replayed on the victim's.
            signed(victim, "topic", "receipt", receipt, user=attacker.user_id),
        ]
        # The broker's ACL is not what is tested here: the victim's own
        # connection publishes what an attacker who got past it would.
        async with site.client(victim, "raw") as v:
            await v.subscribe(mqtt_wire.ack_topic(victim.user_id), qos=1)
            for body in forged:
                await v.publish(mqtt_wire.request_topic(victim.user_id), body, qos=1)
            assert await _read_seq(site.dsn, thread, victim.user_id) == 0
            await v.publish(mqtt_wire.request_topic(victim.user_id), good, qos=1)
            _, frame = await next_frame(v)
        assert frame["id"] == "ok" and frame["ack"]["ok"] is True, frame
        assert await _dropped(site.server) == {
            "unsigned": 1.0,
            "foreign_device": 1.0,
            "bad_signature": 2.0,
            "stale": 1.0,
        }
        assert "Traceback" not in site.server.log_text()


def _with_device(payload: bytes, signer: Person, claimed: Person) -> bytes:
    """``payload`` re-framed to name ``claimed``'s device, still signed by ``signer``."""
    outer = mqtt_wire.decode(payload)
    inner = mqtt_wire.decode(outer["frame"])
    inner["device"] = str(claimed.device_id)
    frame = mqtt_wire.request_frame(
        inner["id"],
        inner["event"],
        inner["data"],
        "msgpack",
        device=claimed.device_id,
        ts=inner["ts"],
    )
    del signer
    return mqtt_wire.signed_request(frame, outer["sig"], "msgpack")


async def test_a_retained_request_never_reaches_another_user(embedded: Site) -> None:
    """amqtt sent every retained message to each connecting client, ACL or not."""
    site = embedded
    async with people(site.base, site.attacker, site.victim) as (attacker, victim):
        async with site.client(victim, "raw") as v:
            body = signed(victim, "retained", "presence", {"thread_id": str(victim.user_id)})
            await v.publish(mqtt_wire.request_topic(victim.user_id), body, qos=1, retain=True)
        async with site.client(attacker, "raw") as a:
            await a.subscribe(mqtt_wire.ack_topic(attacker.user_id), qos=1)
            body = signed(attacker, "mine", "presence", {"thread_id": str(victim.user_id)})
            await a.publish(mqtt_wire.request_topic(attacker.user_id), body, qos=1)
            topic, frame = await next_frame(a)
        assert topic == mqtt_wire.ack_topic(attacker.user_id), (topic, frame)
        assert frame.get("id") == "mine", frame


# --- 3. client-id take-over before authentication --------------------------------------


async def test_a_refused_connect_with_a_devices_client_id_leaves_it_connected(
    embedded: Site,
    links: OpenLink,
) -> None:
    site = embedded
    async with people(site.base, site.doctor, site.victim) as (doctor, victim):
        thread = await doctor.rest.create_thread([victim.user_id])
        client_id = f"{victim.user_id}-phone"
        async with site.client(victim, "phone", clean_session=False) as phone:
            await phone.subscribe(mqtt_wire.ack_topic(victim.user_id), qos=1)
            for clean in (True, False):
                link = await links(site.port)
                code = await link.connack(
                    connect_packet(
                        client_id,
                        username=str(victim.user_id),
                        password="not-a-token",
                        clean=clean,
                        will=Will(mqtt_wire.request_topic(victim.user_id), b"x"),
                    )
                )
                assert code == mqtt_connect.NOT_AUTHORIZED
                assert await link.closed()
            # Still the same connection: a request and its ack go through it.
            body = signed(victim, "still-here", "presence", {"thread_id": str(thread)})
            await phone.publish(mqtt_wire.request_topic(victim.user_id), body, qos=1)
            _, frame = await next_frame(phone)
            assert frame["id"] == "still-here" and frame["ack"]["ok"] is True, frame


async def test_a_refused_connect_with_a_devices_client_id_keeps_its_queued_pushes(
    embedded: Site,
    links: OpenLink,
) -> None:
    site = embedded
    async with people(site.base, site.doctor, site.victim) as (doctor, victim):
        thread = await doctor.rest.create_thread([victim.user_id])
        d = await connect(doctor, socketio_transport(site.base, doctor))
        async with site.client(victim, "phone", clean_session=False) as phone:
            await phone.subscribe(mqtt_wire.inbox_topic(victim.user_id), qos=1)
        first = await d.send(thread, b"queued while the phone is away")

        link = await links(site.port)
        code = await link.connack(
            connect_packet(f"{victim.user_id}-phone", clean=True)  # no credentials at all
        )
        assert code == mqtt_connect.NOT_AUTHORIZED

        async with site.client(victim, "phone", clean_session=False) as phone:
            second = await d.send(thread, b"sent after it came back")
            _, frame = await next_frame(phone)
            # Queued pushes go out right after CONNACK: the first one is still there.
            assert frame["data"]["seq"] == first.seq != second.seq, frame


# --- 4. MQTT 5 ---------------------------------------------------------------------------


async def test_an_mqtt5_connect_gets_unacceptable_protocol_version(
    embedded: Site, links: OpenLink
) -> None:
    site = embedded
    link = await links(site.port)
    code = await link.connack(connect_packet("anyone", username="u", password="p", level=5))
    assert code == mqtt_connect.UNACCEPTABLE_PROTOCOL_VERSION
    assert await link.closed()

    with pytest.raises(MqttConnectError):
        async with asyncio.timeout(WITHIN):
            async with aiomqtt.Client(
                "127.0.0.1",
                site.port,
                username="u",
                password="p",
                protocol=aiomqtt.ProtocolVersion.V5,
            ):
                pass
    pub = shutil.which("mosquitto_pub")
    if pub is not None:
        proc = await asyncio.create_subprocess_exec(
            pub,
            "-h",
            "127.0.0.1",
            "-p",
            str(site.port),
            "-V",
            "mqttv5",
            "-t",
            "x",
            "-m",
            "y",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(WITHIN):
            out, _ = await proc.communicate()
        assert proc.returncode != 0
        assert b"Unsupported Protocol Version" in out, out
    log = site.server.log_text()
    assert "protocol level 5" in log
    assert "Traceback" not in log and '"ERROR"' not in log


def test_the_amqtt_seam_is_what_the_embedded_broker_overrides() -> None:
    """mqtt_broker._GatedBroker overrides Broker.stream_connected and calls
    Broker._client_connected; a new amqtt must keep both (pyproject pins <0.13)."""
    from amqtt.adapters import ReaderAdapter, StreamReaderAdapter
    from amqtt.broker import Broker

    major, minor = (int(x) for x in version("amqtt").split(".")[:2])
    assert (major, minor) == (0, 12)
    assert list(inspect.signature(Broker.stream_connected).parameters) == [
        "self",
        "reader",
        "writer",
        "listener_name",
    ]
    assert list(inspect.signature(Broker.retain_message).parameters) == [
        "self",
        "source_session",
        "topic_name",
        "data",
        "qos",
    ]
    assert list(inspect.signature(Broker._client_connected).parameters) == [
        "self",
        "listener_name",
        "reader",
        "writer",
    ]
    assert {"read", "feed_eof"} <= set(ReaderAdapter.__abstractmethods__)
    assert inspect.iscoroutinefunction(StreamReaderAdapter.read)


# --- 6. revocation -----------------------------------------------------------------------


async def test_a_logout_closes_the_users_mqtt_connections(embedded: Site, links: OpenLink) -> None:
    site = embedded
    async with people(site.base, site.victim) as (victim,):
        token = victim.rest.access_token
        link = await links(site.port)
        code = await link.connack(
            connect_packet(f"{victim.user_id}-phone", username=str(victim.user_id), password=token)
        )
        assert code == 0

        await victim.rest.call("POST", "/api/v1/auth/logout")

        assert await link.closed()
        again = await links(site.port)
        code = await again.connack(
            connect_packet(f"{victim.user_id}-phone", username=str(victim.user_id), password=token)
        )
        assert code == mqtt_connect.NOT_AUTHORIZED
