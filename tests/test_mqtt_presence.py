"""MQTT users are live users: presence, presence news and the offline hook see them.

Every behaviour runs twice: against the embedded amqtt broker of a test server
on a free port (presence in the process), and against a private Mosquitto with
the shipped ACL (presence in Redis; the machine's own Mosquitto on 1883 is not
touched). The MQTT user connects with the project's client (``MqttTransport``:
``online`` on connecting, an ``offline`` Last Will, ``offline`` before a clean
disconnect); the other side is a Socket.IO user on the same server.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID, uuid4

import aiomqtt
import asyncpg
import nacl.signing
import pytest
from aiomqtt.exceptions import MqttConnectError

from teleconsult.accounts import store as accounts_store
from teleconsult.client.chat import ChatClient
from teleconsult.client.crypto import DeviceKeys
from teleconsult.client.mqtt import MqttTransport
from teleconsult.core.identity import Principal, Role
from teleconsult.messaging import mqtt_wire
from teleconsult.messaging.mqtt_broker import BRIDGE_USERNAME, BrokerAccess
from teleconsult.notifications import store as outbox_store
from teleconsult.server.app import POOL
from tests.chatkit import Person, connect, next_event, people, socketio_transport
from tests.dbutil import REDIS_URL
from tests.test_chat_mqtt import (
    BRIDGE_PASSWORD,
    AppClient,
    MakeClient,
    free_port,
    mosquitto,
    mqtt_app,
    next_frame,
    signed,
)
from tests.world import Account, make_user

WITHIN = 20.0  # every wait is bounded by this; nothing is timed


# --- a server, its broker and three people ----------------------------------------------


@dataclass
class Site:
    """A server bridged to a broker of ``kind``; its people are not signed in yet."""

    kind: str
    server: AppClient
    port: int
    doctor: Account
    patient: Account
    other: Account
    # Mosquitto's passwords; the embedded broker takes access tokens instead.
    passwords: dict[UUID, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def password(self, who: Person) -> str:
        return self.passwords.get(who.user_id) or who.rest.access_token

    def device(self, who: Person, *, port: int | None = None) -> MqttTransport:
        """The project's MQTT client for ``who``, to the broker or to ``port`` (a relay)."""
        password = self.password(who)

        async def token() -> str:
            return password

        return MqttTransport(
            "127.0.0.1",
            port or self.port,
            user_id=who.user_id,
            token=token,
            client_id=f"{who.user_id}-{who.device_id}",
            device_id=who.device_id,
            keys=who.keys,
        )


@pytest.fixture(params=["embedded", "mosquitto"])
async def site(
    request: pytest.FixtureRequest,
    aiohttp_client: MakeClient,
    database_url: str,
    pool: asyncpg.Pool,
    tmp_path: Path,
) -> AsyncIterator[Site]:
    clinic = await accounts_store.insert_clinic(
        pool, name=f"Presence {secrets.token_hex(3)}", timezone="Africa/Nairobi"
    )
    doctor, patient, other = [
        await make_user(pool, clinic.id, role, tag="presence")
        for role in (Role.DOCTOR, Role.PATIENT, Role.PATIENT)
    ]
    if request.param == "embedded":
        port = free_port()
        server = await mqtt_app(
            aiohttp_client, database_url, tmp_path, MQTT_EMBEDDED_PORT=str(port)
        )
        yield Site("embedded", server, port, doctor, patient, other)
        return
    passwords = {a.user_id: f"mqtt-pw-{secrets.token_hex(4)}" for a in (patient, other)}
    users = {BRIDGE_USERNAME: BRIDGE_PASSWORD} | {str(u): pw for u, pw in passwords.items()}
    with mosquitto(tmp_path / "mosquitto", users) as port:
        url = f"mqtt://{BRIDGE_USERNAME}:{BRIDGE_PASSWORD}@127.0.0.1:{port}"
        # As deployed with several processes: presence in Redis.
        server = await mqtt_app(
            aiohttp_client, database_url, tmp_path, MQTT_URL=url, REDIS_URL=REDIS_URL
        )
        yield Site("mosquitto", server, port, doctor, patient, other, passwords)


class Link:
    """A TCP relay to a broker that can be cut like a dead network: no DISCONNECT, no FIN."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Link:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        assert self._server is not None
        await self._server.wait_closed()

    def cut(self) -> None:
        """Stop taking connections and reset the open ones, both ends."""
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers += [writer, up_writer]
        with contextlib.suppress(OSError):
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


async def online_in(chat: ChatClient, thread: UUID) -> set[str]:
    ack = await chat.call("presence", {"thread_id": str(thread)})
    return set(ack["online"])


async def presence_news(chat: ChatClient, about: Person) -> bool:
    """Whether the next presence news about ``about`` says online."""
    while True:
        data = await next_event(chat, "presence", within=WITHIN)
        if data["user_id"] == str(about.user_id):
            online: bool = data["online"]
            return online


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(WITHIN):
        while not await check():  # noqa: ASYNC110 - the outbox is a table
            await asyncio.sleep(0.05)


async def present(device: MqttTransport) -> None:
    async with asyncio.timeout(WITHIN):
        await device.present.wait()


# --- presence ---------------------------------------------------------------------------


async def test_an_mqtt_only_user_is_listed_by_presence(site: Site) -> None:
    async with people(site.base, site.doctor, site.patient) as (doctor, patient):
        thread = await doctor.rest.create_thread([patient.user_id])
        d = await connect(doctor, socketio_transport(site.base, doctor))
        assert str(patient.user_id) not in await online_in(d, thread)

        device = site.device(patient)
        await connect(patient, device)
        await present(device)

        assert str(patient.user_id) in await online_in(d, thread)


async def test_a_socketio_user_sees_an_mqtt_user_come_and_leave(site: Site) -> None:
    async with people(site.base, site.doctor, site.patient) as (doctor, patient):
        thread = await doctor.rest.create_thread([patient.user_id])
        d = await connect(doctor, socketio_transport(site.base, doctor))

        p = await connect(patient, site.device(patient))
        assert await presence_news(d, patient) is True

        await p.close()
        patient.chat = None
        assert await presence_news(d, patient) is False
        assert str(patient.user_id) not in await online_in(d, thread)


async def test_an_mqtt_user_whose_link_dies_goes_offline_by_its_last_will(site: Site) -> None:
    async with people(site.base, site.doctor, site.patient) as (doctor, patient):
        thread = await doctor.rest.create_thread([patient.user_id])
        d = await connect(doctor, socketio_transport(site.base, doctor))
        async with Link(site.port) as link:
            await connect(patient, site.device(patient, port=link.port))
            assert await presence_news(d, patient) is True

            link.cut()  # the broker sees the connection die and publishes the will

            assert await presence_news(d, patient) is False
            assert str(patient.user_id) not in await online_in(d, thread)


# --- the offline hook -------------------------------------------------------------------


async def news_for(site: Site, thread: UUID) -> list[UUID]:
    rows = await outbox_store.list_thread_news(site.server.app[POOL], thread)
    return [row.user_id for row in rows if row.user_id is not None]


async def test_a_message_to_a_connected_mqtt_user_makes_no_thread_news(site: Site) -> None:
    async with people(site.base, site.doctor, site.patient, site.other) as (doctor, patient, other):
        theirs = await doctor.rest.create_thread([patient.user_id])
        marker = await doctor.rest.create_thread([other.user_id])
        d = await connect(doctor, socketio_transport(site.base, doctor))
        device = site.device(patient)
        await connect(patient, device)
        await present(device)

        await d.send(theirs, b"for the patient on MQTT")
        await d.send(marker, b"for a patient who is away")

        # The hook takes messages in order: once the second is decided, so is the first.
        await until(lambda: _has_news(site, marker, other.user_id))
        assert await news_for(site, theirs) == []


async def test_a_message_to_an_mqtt_user_who_left_makes_thread_news(site: Site) -> None:
    async with people(site.base, site.doctor, site.patient) as (doctor, patient):
        thread = await doctor.rest.create_thread([patient.user_id])
        d = await connect(doctor, socketio_transport(site.base, doctor))
        p = await connect(patient, site.device(patient))
        assert await presence_news(d, patient) is True
        await p.close()
        patient.chat = None
        assert await presence_news(d, patient) is False

        await d.send(thread, b"for the patient, now away")

        await until(lambda: _has_news(site, thread, patient.user_id))


async def _has_news(site: Site, thread: UUID, user_id: UUID) -> bool:
    return user_id in await news_for(site, thread)


# --- identity ---------------------------------------------------------------------------


async def test_a_last_will_on_another_users_topic_never_reaches_the_server(site: Site) -> None:
    """Embedded: the CONNECT is refused. Mosquitto: the ACL drops the will when it is sent."""
    async with people(site.base, site.patient, site.other) as (bob, alice):
        forged = mqtt_wire.encode_request("forged", mqtt_wire.ONLINE, {"conn": "forged"}, "msgpack")
        alices = f"{alice.user_id}-forger"

        def as_alice(port: int, *, will: bool) -> aiomqtt.Client:
            return aiomqtt.Client(
                "127.0.0.1",
                port,
                username=str(alice.user_id),
                password=site.password(alice),
                identifier=alices,
                clean_session=False,
                will=aiomqtt.Will(mqtt_wire.request_topic(bob.user_id), forged, qos=1)
                if will
                else None,
            )

        async with aiomqtt.Client(
            "127.0.0.1",
            site.port,
            username=str(bob.user_id),
            password=site.password(bob),
            identifier=f"{bob.user_id}-acks",
        ) as b:
            await b.subscribe(mqtt_wire.ack_topic(bob.user_id), qos=1)
            refused = False
            async with Link(site.port) as link:
                forger = as_alice(link.port, will=True)
                try:
                    await forger.__aenter__()
                except MqttConnectError:
                    refused = True
                else:
                    link.cut()
                    with contextlib.suppress(aiomqtt.MqttError):
                        await forger.__aexit__(None, None, None)
                    # Taking over the session ends the old one (its will sent or
                    # dropped) before this CONNACK, so before Bob's request below.
                    async with as_alice(site.port, will=False):
                        pass
            await b.publish(
                mqtt_wire.request_topic(bob.user_id),
                signed(bob, "bobs", "resume", {"threads": {}}),
                qos=1,
            )
            _, frame = await next_frame(b)
            assert frame["id"] == "bobs", frame
            assert refused is (site.kind == "embedded")


async def test_an_online_notice_needs_a_connection_id(site: Site) -> None:
    async with people(site.base, site.patient) as (patient,):
        async with aiomqtt.Client(
            "127.0.0.1",
            site.port,
            username=str(patient.user_id),
            password=site.password(patient),
            identifier=f"{patient.user_id}-raw",
        ) as raw:
            await raw.subscribe(mqtt_wire.ack_topic(patient.user_id), qos=1)
            for i, data in enumerate(({}, {"conn": ""}, {"conn": "a/b"}, {"conn": "x" * 65}, [])):
                body = signed(patient, f"bad{i}", mqtt_wire.ONLINE, data)
                await raw.publish(mqtt_wire.request_topic(patient.user_id), body, qos=1)
                _, frame = await next_frame(raw)
                assert frame["id"] == f"bad{i}", frame
                assert frame["ack"]["error"]["code"] == "validation_failed", frame
            body = signed(patient, "good", mqtt_wire.ONLINE, {"conn": "c1"})
            await raw.publish(mqtt_wire.request_topic(patient.user_id), body, qos=1)
            _, frame = await next_frame(raw)
            assert frame["ack"]["ok"] is True and frame["ack"]["renew_in"] > 0, frame


# --- pure parts -------------------------------------------------------------------------


async def test_the_embedded_broker_takes_a_will_only_on_the_users_own_request_topic() -> None:
    alice, bob = UUID(int=1), UUID(int=2)

    async def as_alice(token: str) -> Principal:
        return Principal(user_id=alice, clinic_id=bob, role=Role.PATIENT, session_id=bob)

    access = BrokerAccess(as_alice)
    me, client_id = str(alice), f"{alice}-phone"
    assert await access.may_connect(me, "t", client_id)
    assert await access.may_connect(me, "t", client_id, will_topic=mqtt_wire.request_topic(alice))
    for topic in (mqtt_wire.request_topic(bob), mqtt_wire.inbox_topic(alice), "tc/u/+/req"):
        assert not await access.may_connect(me, "t", client_id, will_topic=topic), topic
    own = mqtt_wire.request_topic(alice)
    assert not await access.may_connect(me, "t", client_id, will_topic=own, will_retain=True)
    assert not await access.may_connect(
        BRIDGE_USERNAME, access.bridge_password, "b", will_topic=own
    )


def test_the_last_will_is_a_signed_offline_request() -> None:
    keys, device, user = DeviceKeys.generate(), uuid4(), uuid4()

    async def token() -> str:
        return "t"

    transport = MqttTransport(
        "127.0.0.1",
        1,
        user_id=user,
        token=token,
        client_id=f"{user}-x",
        device_id=device,
        keys=keys,
    )
    payload = transport._request(mqtt_wire.offline_will_id("c1"), mqtt_wire.OFFLINE, {"conn": "c1"})
    frame = mqtt_wire.parse_request(payload, max_bytes=1000)
    assert (frame.event, frame.data, frame.device) == (mqtt_wire.OFFLINE, {"conn": "c1"}, device)
    assert 0 < len(frame.id) <= mqtt_wire.MAX_REQUEST_ID
    assert frame.signed is not None and frame.signature is not None
    nacl.signing.VerifyKey(keys.signing_public_key).verify(
        mqtt_wire.signing_bytes(user, frame.signed), frame.signature
    )
