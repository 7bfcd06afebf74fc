"""Chat over MQTT: the bridge, the embedded broker's rules, Mosquitto's ACL, handled once.

Real brokers only: the embedded amqtt broker of a test app on a free port, and
private Mosquitto processes started here with their own config, password file
and port (the machine's own Mosquitto on 1883 is not touched).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Literal
from uuid import UUID, uuid4

import aiomqtt
import msgpack
import nacl.signing
import pytest
from aiohttp.test_utils import TestClient
from aiomqtt.exceptions import MqttConnectError

from teleconsult.client.crypto import seal
from teleconsult.client.mqtt import MqttTransport
from teleconsult.client.transport import Refused
from teleconsult.core.errors import ConfigError
from teleconsult.core.identity import Role
from teleconsult.core.settings import load_settings
from teleconsult.messaging import mqtt_wire
from teleconsult.messaging.envelope import to_msgpack
from teleconsult.messaging.mqtt_bridge import refused
from teleconsult.messaging.mqtt_broker import BRIDGE_USERNAME, BrokerAccess
from teleconsult.server.app import MQTT_BRIDGE, POOL, SETTINGS, create_app
from tests.chatkit import Person, connect, people, receive, socketio_transport
from tests.conftest import settings_env
from tests.world import Tenant, make_tenant

AppClient = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[AppClient]]
REPO = Path(__file__).resolve().parent.parent
ACL_FILE = REPO / "deploy" / "mosquitto" / "acl"
BRIDGE_PASSWORD = "bridge-password-for-tests"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _url(client: AppClient) -> str:
    return str(client.make_url("")).rstrip("/")


async def mqtt_app(
    aiohttp_client: MakeClient, database_url: str, data_dir: Path, **env: str
) -> AppClient:
    """A test server whose MQTT bridge is subscribed."""
    client = await aiohttp_client(
        create_app(load_settings(settings_env(database_url, data_dir, **env)))
    )
    async with asyncio.timeout(20):
        await client.app[MQTT_BRIDGE].ready.wait()
    return client


@pytest.fixture
async def embedded(aiohttp_client: MakeClient, database_url: str, tmp_path: Path) -> AppClient:
    """A server with its embedded broker on a free port (``client.app`` settings tell it)."""
    port = free_port()
    return await mqtt_app(aiohttp_client, database_url, tmp_path, MQTT_EMBEDDED_PORT=str(port))


def broker_port(client: AppClient) -> int:
    embedded_port: int | None = client.app[SETTINGS].mqtt.embedded_port
    assert embedded_port is not None
    return embedded_port


def mqtt_transport(who: Person, port: int, *, token: str | None = None) -> MqttTransport:
    async def current_token() -> str:
        return token if token is not None else who.rest.access_token

    return MqttTransport(
        "127.0.0.1",
        port,
        user_id=who.user_id,
        token=current_token,
        client_id=f"{who.user_id}-{who.device_id}",
        device_id=who.device_id,
        keys=who.keys,
    )


def raw_client(
    port: int, user: UUID | str, password: str, *, suffix: str = "raw"
) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1", port, username=str(user), password=password, identifier=f"{user}-{suffix}"
    )


async def next_frame(client: aiomqtt.Client) -> tuple[str, Any]:
    async with asyncio.timeout(10):
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            return str(message.topic), mqtt_wire.decode(message.payload)
    raise AssertionError("the connection ended")


def request(request_id: str, event: str, data: Any) -> bytes:
    """An unsigned request: the bridge answers it only when it cannot be read."""
    return mqtt_wire.encode_request(request_id, event, data, "msgpack")


def signed(
    who: Person,
    request_id: str,
    event: str,
    data: Any,
    *,
    encoding: Literal["msgpack", "json"] = "msgpack",
    ts: int | None = None,
    user: UUID | None = None,
) -> bytes:
    """A request signed by ``who``'s device, for ``user``'s topic (default: their own)."""
    frame = mqtt_wire.request_frame(
        request_id,
        event,
        data,
        encoding,
        device=who.device_id,
        ts=int(time.time() * 1000) if ts is None else ts,
    )
    seed = who.keys.private_bytes()[32:]
    message = mqtt_wire.signing_bytes(user or who.user_id, frame)
    signature = nacl.signing.SigningKey(seed).sign(message).signature
    return mqtt_wire.signed_request(frame, signature, encoding)


async def history(reader: Person, thread: UUID) -> list[Any]:
    page = await reader.rest.call("GET", f"/api/v1/threads/{thread}/messages")
    items: list[Any] = page["items"]
    return items


# --- pure parts --------------------------------------------------------------------------


def test_settings_choose_the_broker(tmp_path: Path) -> None:
    def mqtt(**env: str) -> Any:
        return load_settings({"TELECONSULT_DATA_DIR": str(tmp_path), **env}).mqtt

    assert (mqtt().embedded_port, mqtt().shared_group, mqtt().enabled) == (
        1883,
        "teleconsult",
        True,
    )
    assert mqtt(MQTT_EMBEDDED_PORT="off").enabled is False
    assert mqtt(MQTT_EMBEDDED_PORT="0").embedded_port is None
    assert mqtt(MQTT_EMBEDDED_PORT="off", MQTT_URL="mqtt://broker:1883").enabled is True
    assert mqtt(MQTT_SHARED_GROUP="off").shared_group == ""
    with pytest.raises(ConfigError, match="MQTT_SHARED_GROUP"):
        mqtt(MQTT_SHARED_GROUP="a/b")
    with pytest.raises(ConfigError, match="MQTT_EMBEDDED_PORT"):
        mqtt(MQTT_EMBEDDED_PORT="70000")
    assert (mqtt().signed_requests, mqtt().signature_window, mqtt().provisioning) == (
        True,
        300,
        "off",
    )
    assert mqtt(MQTT_REQUEST_SIGNATURES="off").signed_requests is False
    assert mqtt(MQTT_URL="mqtt://b:1883", MQTT_PROVISIONING="dynsec").provisioning == "dynsec"
    with pytest.raises(ConfigError, match="MQTT_PROVISIONING"):
        mqtt(MQTT_PROVISIONING="dynsec")  # nothing to provision without MQTT_URL
    with pytest.raises(ConfigError, match="MQTT_SIGNATURE_WINDOW"):
        mqtt(MQTT_SIGNATURE_WINDOW="1")


def test_topics_name_users_in_canonical_form() -> None:
    user = uuid4()
    assert mqtt_wire.user_of(mqtt_wire.request_topic(user), "req") == user
    assert mqtt_wire.user_of(mqtt_wire.request_topic(user), "ack") is None
    assert mqtt_wire.user_of(f"tc/u/{str(user).upper()}/req", "req") is None
    assert mqtt_wire.user_of(f"tc/u/{user}/req/x", "req") is None
    assert mqtt_wire.request_filter("g") == "$share/g/tc/u/+/req"


def test_a_connect_is_read_before_the_broker_sees_it() -> None:
    from teleconsult.messaging import mqtt_connect as mc
    from tests.mosquittokit import Will, connect_packet

    def body(packet: bytes) -> bytes:
        length = mc.remaining_length(packet[1:5])
        assert length is not None
        return packet[len(packet) - length :]

    plain = mc.parse_connect(body(connect_packet("c1", username="u", password="p")))
    assert (plain.client_id, plain.username, plain.password, plain.clean_session) == (
        "c1",
        "u",
        "p",
        True,
    )
    will = Will("tc/u/x/req", b"bye", retain=True)
    found = mc.parse_connect(body(connect_packet("c2", will=will, clean=False)))
    assert (found.will_topic, found.will_retain, found.clean_session) == ("tc/u/x/req", True, False)
    with pytest.raises(mc.UnsupportedProtocol) as unsupported:
        mc.parse_connect(body(connect_packet("c3", level=5)))
    assert unsupported.value.level == 5
    for broken in (b"", b"\x00\x04MQTT\x04\x01\x00\x3c\x00\x00", b"\x00\x04MQTT\x04\x02"):
        with pytest.raises(mc.ConnectError):
            mc.parse_connect(broken)
    assert mc.remaining_length(b"\x80") is None  # more length bytes to come
    with pytest.raises(mc.ConnectError):
        mc.remaining_length(b"\xff\xff\xff\x7f")  # 256 MB
    assert mc.connack(mc.UNACCEPTABLE_PROTOCOL_VERSION) == b"\x20\x02\x00\x01"


def test_signed_requests_parse_in_both_encodings() -> None:
    user, device = uuid4(), uuid4()
    for encoding in ("msgpack", "json"):
        frame = mqtt_wire.request_frame(
            "r1", "resume", {"threads": {}}, encoding, device=device, ts=7
        )
        payload = mqtt_wire.signed_request(frame, b"s" * 64, encoding)
        parsed = mqtt_wire.parse_request(payload, max_bytes=10_000)
        assert (parsed.id, parsed.device, parsed.ts, parsed.encoding) == ("r1", device, 7, encoding)
        assert (parsed.signed, parsed.signature) == (frame, b"s" * 64)
        assert mqtt_wire.signing_bytes(user, frame).startswith(
            b"teleconsult mqtt request v1\n" + str(user).encode() + b"\n"
        )
    short = mqtt_wire.signed_request(b"{}", b"s" * 63, "msgpack")
    with pytest.raises(mqtt_wire.RequestRefused):
        mqtt_wire.parse_request(short, max_bytes=10_000)
    no_ts = msgpack.packb({"id": "r", "event": "resume", "data": {}, "device": str(device)})
    with pytest.raises(mqtt_wire.RequestRefused) as refused_frame:
        mqtt_wire.parse_request(
            mqtt_wire.signed_request(no_ts, b"s" * 64, "msgpack"), max_bytes=999
        )
    assert refused_frame.value.request_id == "r"
    unsigned = mqtt_wire.parse_request(request("u", "resume", {}), max_bytes=999)
    assert unsigned.signed is None and unsigned.device is None


async def test_broker_access_rules() -> None:
    async def no_tokens(token: str) -> Any:
        raise AssertionError("not called")

    access = BrokerAccess(no_tokens)
    alice, bob = uuid4(), uuid4()
    me = str(alice)
    assert access.may(me, "publish", mqtt_wire.request_topic(alice))
    assert not access.may(me, "publish", mqtt_wire.request_topic(bob))
    assert not access.may(me, "publish", mqtt_wire.inbox_topic(alice))
    assert access.may(me, "subscribe", mqtt_wire.inbox_topic(alice))
    assert access.may(me, "receive", mqtt_wire.ack_topic(alice))
    assert not access.may(me, "subscribe", mqtt_wire.request_topic(alice))
    assert not access.may(me, "receive", mqtt_wire.inbox_topic(bob))
    assert not access.may(None, "subscribe", mqtt_wire.inbox_topic(alice))
    assert access.may(BRIDGE_USERNAME, "subscribe", mqtt_wire.request_filter())
    assert access.may(BRIDGE_USERNAME, "publish", mqtt_wire.inbox_topic(bob))
    assert not access.may(BRIDGE_USERNAME, "publish", mqtt_wire.request_topic(bob))
    # The bridges' announcement: only the bridge writes it, every user may read it.
    assert access.may(BRIDGE_USERNAME, "publish", mqtt_wire.SERVER_UP_TOPIC)
    assert access.may(me, "subscribe", mqtt_wire.SERVER_UP_TOPIC)
    assert access.may(me, "receive", mqtt_wire.SERVER_UP_TOPIC)
    assert not access.may(me, "publish", mqtt_wire.SERVER_UP_TOPIC)
    assert not await access.may_connect(me, "token", f"{bob}-phone")
    assert not await access.may_connect(BRIDGE_USERNAME, "guess", "x")
    assert await access.may_connect(BRIDGE_USERNAME, access.bridge_password, "x")


# --- three transports in one thread ------------------------------------------------------


async def test_websocket_polling_and_mqtt_users_talk_both_ways(embedded: AppClient) -> None:
    base = _url(embedded)
    tenant = await make_tenant(embedded.app[POOL], embedded)
    accounts = tenant[Role.DOCTOR], tenant[Role.NURSE], tenant[Role.PATIENT]
    async with people(base, *accounts) as (doctor, nurse, patient):
        thread = await doctor.rest.create_thread([nurse.user_id, patient.user_id], kind="care_team")
        d = await connect(doctor, socketio_transport(base, doctor))
        n = await connect(
            nurse,
            socketio_transport(base, nurse, transports=("polling",), encoding="json"),
            encoding="json",
        )
        p = await connect(patient, mqtt_transport(patient, broker_port(embedded)))
        for chat in (d, n, p):
            chat.follow(thread)
        await d.send(thread, b"from the doctor over a WebSocket")
        await p.send(thread, b"from the patient over MQTT")
        await n.send(thread, b"from the nurse over long-polling")
        # The last sender's own message reaches it with the next one.
        await d.send(thread, b"bye from the doctor")
        said = [
            b"from the doctor over a WebSocket",
            b"from the patient over MQTT",
            b"from the nurse over long-polling",
            b"bye from the doctor",
        ]
        for chat, count in ((d, 3), (n, 4), (p, 4)):
            got = await receive(chat, count)
            assert [m.plaintext for m in got] == said[:count]
            assert [m.seq for m in got] == list(range(1, count + 1))


# --- bad input ---------------------------------------------------------------------------


async def test_bad_mqtt_requests_get_error_acks_and_store_nothing(embedded: AppClient) -> None:
    base = _url(embedded)
    port = broker_port(embedded)
    tenant = await make_tenant(embedded.app[POOL], embedded)
    other = tenant.other_patient
    assert other is not None
    async with people(base, tenant[Role.DOCTOR], tenant[Role.PATIENT], other) as (
        doctor,
        patient,
        stranger,
    ):
        ours = await doctor.rest.create_thread([patient.user_id])
        theirs = await doctor.rest.create_thread([stranger.user_id])
        devices = await patient.rest.thread_devices(ours)
        envelope = seal(
            plaintext=b"not for that thread",
            thread_id=theirs,
            sender=patient.keys,
            sender_device_id=patient.device_id,
            recipients={d.id: d.x25519_public for d in devices},
        )
        max_frame = embedded.app[SETTINGS].chat.max_frame_bytes
        cases: list[tuple[bytes, str | None, str]] = [
            (b"\xc1\x00", None, "validation_failed"),
            (b"{not json", None, "malformed_json"),
            (msgpack.packb([1, 2]), None, "validation_failed"),
            (
                msgpack.packb({"id": "x" * 65, "event": "resume", "data": {}}),
                None,
                "validation_failed",
            ),
            (
                signed(patient, "r1", "send", {"thread_id": 12, "envelope": "x"}),
                "r1",
                "validation_failed",
            ),
            (signed(patient, "r2", "dance", {}), "r2", "validation_failed"),
            (
                signed(
                    patient,
                    "r3",
                    "send",
                    {"thread_id": str(theirs), "envelope": to_msgpack(envelope)},
                ),
                "r3",
                "not_found",
            ),
            (b"\x80" * (max_frame + 1), None, "payload_too_large"),
        ]
        async with raw_client(port, patient.user_id, patient.rest.access_token) as raw:
            await raw.subscribe(mqtt_wire.ack_topic(patient.user_id), qos=1)
            for payload, request_id, code in cases:
                await raw.publish(mqtt_wire.request_topic(patient.user_id), payload, qos=1)
                _, frame = await next_frame(raw)
                assert frame["id"] == request_id, frame
                assert frame["ack"]["ok"] is False and frame["ack"]["error"]["code"] == code, frame
            # The bridge is still there and answers a good request.
            await raw.publish(
                mqtt_wire.request_topic(patient.user_id),
                signed(patient, "r4", "resume", {"threads": {str(ours): 0}}),
                qos=1,
            )
            _, frame = await next_frame(raw)
            assert frame["id"] == "r4" and frame["ack"]["ok"] is True
        assert await history(doctor, ours) == []
        assert await history(doctor, theirs) == []


async def test_mqtt_requests_are_limited_per_user(
    aiohttp_client: MakeClient, database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    server = await mqtt_app(
        aiohttp_client,
        database_url,
        tmp_path,
        MQTT_EMBEDDED_PORT=str(port),
        CHAT_EVENT_BURST="2",
        CHAT_EVENTS_PER_SECOND="0.1",
    )
    tenant = await make_tenant(server.app[POOL], server)
    async with people(_url(server), tenant[Role.PATIENT]) as (patient,):
        async with raw_client(port, patient.user_id, patient.rest.access_token) as raw:
            await raw.subscribe(mqtt_wire.ack_topic(patient.user_id), qos=1)
            for i in range(3):
                body = signed(patient, f"q{i}", "resume", {"threads": {}})
                await raw.publish(mqtt_wire.request_topic(patient.user_id), body, qos=1)
            acks: dict[str, Any] = {}
            while len(acks) < 3:
                _, frame = await next_frame(raw)
                acks[frame["id"]] = frame["ack"]
    assert acks["q0"]["ok"] and acks["q1"]["ok"]
    assert acks["q2"]["error"]["code"] == "rate_limited"
    assert acks["q2"]["error"]["retry_after"] >= 1


async def test_envelope_of_another_users_device_is_refused(embedded: AppClient) -> None:
    """The broker lets A publish on A's topic; the server still checks the envelope's sender."""
    base = _url(embedded)
    tenant = await make_tenant(embedded.app[POOL], embedded)
    other = tenant.other_patient
    assert other is not None
    async with people(base, tenant[Role.DOCTOR], tenant[Role.PATIENT], other) as (
        doctor,
        patient,
        impostor_device_owner,
    ):
        thread = await doctor.rest.create_thread([patient.user_id])
        devices = await patient.rest.thread_devices(thread)
        forged = seal(
            plaintext=b"signed by someone else's device",
            thread_id=thread,
            sender=impostor_device_owner.keys,
            sender_device_id=impostor_device_owner.device_id,
            recipients={d.id: d.x25519_public for d in devices},
        )
        data = {"thread_id": str(thread), "envelope": to_msgpack(forged)}
        async with raw_client(
            broker_port(embedded), patient.user_id, patient.rest.access_token
        ) as raw:
            await raw.subscribe(mqtt_wire.ack_topic(patient.user_id), qos=1)
            await raw.publish(
                mqtt_wire.request_topic(patient.user_id), signed(patient, "f1", "send", data), qos=1
            )
            _, frame = await next_frame(raw)
        assert frame["ack"]["error"]["code"] == "device_not_usable", frame
        assert await history(doctor, thread) == []


# --- the embedded broker's rules ---------------------------------------------------------


async def test_embedded_broker_checks_tokens_and_topics(embedded: AppClient) -> None:
    base = _url(embedded)
    port = broker_port(embedded)
    tenant = await make_tenant(embedded.app[POOL], embedded)
    other = tenant.other_patient
    assert other is not None
    async with people(base, tenant[Role.PATIENT], other) as (alice, bob):
        token_a, token_b = alice.rest.access_token, bob.rest.access_token
        bad_logins = [
            (alice.user_id, "not-a-token", f"{alice.user_id}-x"),
            (alice.user_id, token_b, f"{alice.user_id}-x"),  # someone else's token
            (bob.user_id, token_a, f"{bob.user_id}-x"),
            (alice.user_id, token_a, f"{bob.user_id}-x"),  # a client id that is not hers
            (BRIDGE_USERNAME, "guess", "tc-bridge-x"),
        ]
        for user, password, client_id in bad_logins:
            with pytest.raises(MqttConnectError):
                async with aiomqtt.Client(
                    "127.0.0.1", port, username=str(user), password=password, identifier=client_id
                ):
                    pass
        with pytest.raises(Refused):
            await mqtt_transport(alice, port, token="not-a-token").start(_ignore, _nothing)

        async with (
            raw_client(port, alice.user_id, token_a) as a,
            raw_client(port, bob.user_id, token_b) as b,
        ):
            for topic in (
                mqtt_wire.inbox_topic(bob.user_id),
                mqtt_wire.ack_topic(bob.user_id),
                mqtt_wire.request_topic(bob.user_id),
                "tc/u/+/inbox",
                "#",
            ):
                (code,) = await a.subscribe(topic, qos=1)
                assert refused([code]), topic
            await b.subscribe(mqtt_wire.ack_topic(bob.user_id), qos=1)
            # Published as Bob by Alice: the broker drops it, the bridge never sees it,
            # so Bob's own request is the first one answered on his topic.
            await a.publish(
                mqtt_wire.request_topic(bob.user_id),
                request("forged", "resume", {"threads": {}}),
                qos=1,
            )
            await b.publish(
                mqtt_wire.request_topic(bob.user_id),
                signed(bob, "bobs", "resume", {"threads": {}}),
                qos=1,
            )
            _, frame = await next_frame(b)
            assert frame["id"] == "bobs" and frame["ack"]["ok"] is True


async def _ignore(event: str, data: Any) -> None:
    del event, data


async def _nothing() -> None:
    return None


# --- Mosquitto with the shipped ACL ------------------------------------------------------


@contextlib.contextmanager
def mosquitto(workdir: Path, users: dict[str, str]) -> Iterator[int]:
    """A private Mosquitto with deploy/mosquitto/acl and a password file of ``users``."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    passwd = shutil.which("mosquitto_passwd")
    if not Path(exe).exists() or passwd is None:
        pytest.skip("mosquitto is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    password_file = workdir / "passwords"
    password_file.touch(mode=0o600)
    for user, password in users.items():
        subprocess.run([passwd, "-b", str(password_file), user, password], check=True)
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous false\n"
        f"password_file {password_file}\n"
        f"acl_file {ACL_FILE}\n"
        "persistence false\n"
        "log_dest stderr\n" + ("user root\n" if os.geteuid() == 0 else "")
        # As root it would switch to the mosquitto user, who cannot read tmp_path.
    )
    with (workdir / "mosquitto.log").open("wb") as log:
        proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for_port(port, proc, workdir / "mosquitto.log")
            yield port
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            raise AssertionError(f"mosquitto exited: {log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("mosquitto did not start listening")


async def test_mosquitto_acl_keeps_users_to_their_own_topics(tmp_path: Path) -> None:
    alice, bob = uuid4(), uuid4()
    users = {BRIDGE_USERNAME: BRIDGE_PASSWORD, str(alice): "alice-pw", str(bob): "bob-pw"}
    with mosquitto(tmp_path / "mosquitto", users) as port:
        async with (
            aiomqtt.Client(
                "127.0.0.1",
                port,
                username=BRIDGE_USERNAME,
                password=BRIDGE_PASSWORD,
                protocol=aiomqtt.ProtocolVersion.V5,
            ) as bridge,
            raw_client(port, alice, "alice-pw") as a,
            raw_client(port, bob, "bob-pw") as b,
        ):
            (granted,) = await bridge.subscribe(mqtt_wire.request_filter("teleconsult"), qos=1)
            assert not refused([granted])
            await a.subscribe(mqtt_wire.inbox_topic(bob), qos=1)
            await a.subscribe(mqtt_wire.inbox_topic(alice), qos=1)
            await b.subscribe(mqtt_wire.inbox_topic(bob), qos=1)
            # The bridge may write to any inbox; each user reads only their own.
            await bridge.publish(mqtt_wire.inbox_topic(bob), b"for bob", qos=1)
            await bridge.publish(mqtt_wire.inbox_topic(alice), b"for alice", qos=1)
            assert (await _raw_next(a)) == (mqtt_wire.inbox_topic(alice), b"for alice")
            assert (await _raw_next(b)) == (mqtt_wire.inbox_topic(bob), b"for bob")
            # Only the bridge announces itself; everyone reads it.
            await b.subscribe(mqtt_wire.SERVER_UP_TOPIC, qos=1)
            await a.publish(mqtt_wire.SERVER_UP_TOPIC, b"forged up", qos=1)
            await bridge.publish(mqtt_wire.SERVER_UP_TOPIC, b"up", qos=1)
            assert (await _raw_next(b)) == (mqtt_wire.SERVER_UP_TOPIC, b"up")
            # Alice may not publish as Bob: the bridge gets her own request first.
            await a.publish(mqtt_wire.request_topic(bob), b"forged", qos=1)
            await a.publish(mqtt_wire.request_topic(alice), b"hers", qos=1)
            assert (await _raw_next(bridge)) == (mqtt_wire.request_topic(alice), b"hers")
        with pytest.raises(MqttConnectError):
            async with raw_client(port, alice, "wrong"):
                pass
        await _taken_over_session_gives_nothing_away(port, alice, bob)


async def _taken_over_session_gives_nothing_away(port: int, alice: UUID, bob: UUID) -> None:
    """Bob connecting under Alice's persistent client id gets none of her queued inbox."""

    def device(user: UUID, password: str) -> aiomqtt.Client:
        return aiomqtt.Client(
            "127.0.0.1",
            port,
            username=str(user),
            password=password,
            identifier="one-client-id",
            clean_session=False,
        )

    async with device(alice, "alice-pw") as a:
        await a.subscribe(mqtt_wire.inbox_topic(alice), qos=1)
    async with aiomqtt.Client(
        "127.0.0.1", port, username=BRIDGE_USERNAME, password=BRIDGE_PASSWORD
    ) as bridge:
        await bridge.publish(mqtt_wire.inbox_topic(alice), b"queued for alice", qos=1)
        async with device(bob, "bob-pw") as b:
            # Queued messages go out right after CONNACK, before this one.
            await b.subscribe(mqtt_wire.inbox_topic(bob), qos=1)
            await bridge.publish(mqtt_wire.inbox_topic(bob), b"for bob", qos=1)
            assert (await _raw_next(b)) == (mqtt_wire.inbox_topic(bob), b"for bob")


async def _raw_next(client: aiomqtt.Client) -> tuple[str, bytes]:
    async with asyncio.timeout(10):
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            return str(message.topic), message.payload
    raise AssertionError("the connection ended")


# --- several server processes on one broker ----------------------------------------------


async def test_each_request_is_handled_once_by_two_bridges(
    aiohttp_client: MakeClient,
    database_url: str,
    tmp_path: Path,
    client: AppClient,
    tenant: Tenant,
) -> None:
    async with people(_url(client), tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (
        doctor,
        patient,
    ):
        thread = await doctor.rest.create_thread([patient.user_id])
        users = {BRIDGE_USERNAME: BRIDGE_PASSWORD, str(patient.user_id): "patient-mqtt-pw"}
        with mosquitto(tmp_path / "mosquitto", users) as port:
            url = f"mqtt://{BRIDGE_USERNAME}:{BRIDGE_PASSWORD}@127.0.0.1:{port}"
            servers = [
                await mqtt_app(aiohttp_client, database_url, tmp_path / f"s{i}", MQTT_URL=url)
                for i in range(2)
            ]
            bridges = [s.app[MQTT_BRIDGE] for s in servers]
            count = 12
            async with raw_client(port, patient.user_id, "patient-mqtt-pw") as raw:
                await raw.subscribe(mqtt_wire.ack_topic(patient.user_id), qos=1)
                for i in range(count):
                    body = {"threads": {str(thread): 0}}
                    await raw.publish(
                        mqtt_wire.request_topic(patient.user_id),
                        signed(patient, f"r{i}", "resume", body),
                        qos=1,
                    )
                answered: list[str] = []
                while len(set(answered)) < count:
                    _, frame = await next_frame(raw)
                    assert frame["ack"]["ok"] is True, frame
                    answered.append(frame["id"])
            assert sorted(answered) == sorted(f"r{i}" for i in range(count))
            assert sum(b.handled for b in bridges) == count
            assert all(b.handled > 0 for b in bridges)  # the shared subscription spreads them

            # And a message sent over MQTT through either server is stored once.
            transport = mqtt_transport(patient, port, token="patient-mqtt-pw")
            chat = await connect(patient, transport)
            chat.follow(thread)
            sent = await chat.send(thread, b"once")
            assert (sent.seq, sent.duplicate) == (1, False)
            got = await receive(chat, 1)
            assert got[0].plaintext == b"once"
            await chat.close()
            patient.chat = None
        assert [m["seq"] for m in await history(doctor, thread)] == [1]


# --- bytes on the wire -------------------------------------------------------------------


class CountingProxy:
    """A TCP relay to ``127.0.0.1:target`` that counts the bytes each way."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.up = 0  # client to broker
        self.down = 0
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._counted = asyncio.Condition()

    async def __aenter__(self) -> CountingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def at_least(self, up: int, down: int) -> None:
        """Wait (10 s at most) until this many bytes went each way."""
        async with asyncio.timeout(10), self._counted:
            await self._counted.wait_for(lambda: self.up >= up and self.down >= down)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target)
        try:
            await asyncio.gather(
                self._pump(reader, upstream_writer, up=True),
                self._pump(upstream_reader, writer, up=False),
            )
        finally:
            for w in (writer, upstream_writer):
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool
    ) -> None:
        while data := await reader.read(65536):
            async with self._counted:
                if up:
                    self.up += len(data)
                else:
                    self.down += len(data)
                self._counted.notify_all()
            writer.write(data)
            await writer.drain()
        writer.close()


def publish_size(topic: str, payload: int) -> int:
    """An MQTT 3.1.1 QoS 1 PUBLISH: header, remaining length, topic, packet id, payload."""
    remaining = 2 + len(topic) + 2 + payload
    length_bytes = 1 if remaining < 128 else 2 if remaining < 16_384 else 3
    return 1 + length_bytes + remaining


PUBACK = 4


async def test_bytes_of_one_message_over_mqtt(embedded: AppClient) -> None:
    """A 100-byte text to a two-device thread; printed with ``pytest -s`` for docs/protocol.md."""
    base = _url(embedded)
    port = broker_port(embedded)
    tenant = await make_tenant(embedded.app[POOL], embedded)
    async with people(base, tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (doctor, patient):
        thread = await doctor.rest.create_thread([patient.user_id])
        devices = await patient.rest.thread_devices(thread)
        envelope = seal(
            plaintext=b"x" * 100,
            thread_id=thread,
            sender=patient.keys,
            sender_device_id=patient.device_id,
            recipients={d.id: d.x25519_public for d in devices},
            sent_at_ms=int(time.time() * 1000),
        )
        frame = signed(
            patient, "a" * 12, "send", {"thread_id": str(thread), "envelope": to_msgpack(envelope)}
        )
        async with (
            CountingProxy(port) as sender_link,
            CountingProxy(port) as reader_link,
            raw_client(sender_link.port, patient.user_id, patient.rest.access_token) as sender,
            raw_client(reader_link.port, doctor.user_id, doctor.rest.access_token) as reader,
        ):
            await sender.subscribe(
                [
                    (mqtt_wire.ack_topic(patient.user_id), 1),
                    (mqtt_wire.inbox_topic(patient.user_id), 1),
                ]
            )
            await reader.subscribe(mqtt_wire.inbox_topic(doctor.user_id), qos=1)
            s_up, s_down, r_up, r_down = (
                sender_link.up,
                sender_link.down,
                reader_link.up,
                reader_link.down,
            )
            await sender.publish(mqtt_wire.request_topic(patient.user_id), frame, qos=1)
            seen: dict[str, int] = {}
            while len(seen) < 2:
                topic, payload = await _raw_next(sender)
                seen[topic] = len(payload)
            _, pushed = await _raw_next(reader)
            ack_bytes = seen[mqtt_wire.ack_topic(patient.user_id)]
            inbox_bytes = seen[mqtt_wire.inbox_topic(patient.user_id)]
            assert inbox_bytes == len(pushed)
            req_topic = mqtt_wire.request_topic(patient.user_id)
            sender_up = publish_size(req_topic, len(frame)) + 2 * PUBACK
            sender_down = (
                PUBACK
                + publish_size(mqtt_wire.ack_topic(patient.user_id), ack_bytes)
                + publish_size(mqtt_wire.inbox_topic(patient.user_id), inbox_bytes)
            )
            reader_down = publish_size(mqtt_wire.inbox_topic(doctor.user_id), inbox_bytes)
            await sender_link.at_least(s_up + sender_up, s_down + sender_down)
            await reader_link.at_least(r_up + PUBACK, r_down + reader_down)
            assert (sender_link.up - s_up, sender_link.down - s_down) == (sender_up, sender_down)
            assert (reader_link.up - r_up, reader_link.down - r_down) == (PUBACK, reader_down)
            print(
                f"\nMQTT bytes for one message: envelope {len(to_msgpack(envelope))}, "
                f"request payload {len(frame)}, ack payload {ack_bytes}, inbox payload "
                f"{inbox_bytes}; sender up {sender_up} down {sender_down}; "
                f"each other device down {reader_down} up {PUBACK}"
            )
