"""Deleting a device ends its MQTT access at once, on Mosquitto and on the embedded broker.

Before, ``DELETE /api/v1/devices/{id}`` only marked the device revoked: its
Mosquitto account stayed enabled and connected, and the bridge kept running its
signed requests for up to 30 s (the device cache). Now the deletion is announced
as a device revocation: Mosquitto's dynamic-security account is disabled (the
connection is kicked, the password refused), the embedded broker closes the
connection that device spoke on, and the bridge forgets the device at once. The
user's other devices stay connected.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from typing import Any
from uuid import uuid4

import aiohttp
import aiomqtt
import pytest

from teleconsult.client.crypto import DeviceKeys
from teleconsult.core.revocation import Revocation
from teleconsult.messaging import mqtt_wire
from tests.chatkit import Person, people
from tests.mosquittokit import RawLink, connect_packet, subscribe_packet
from tests.security.test_mosquitto_provisioning import (  # noqa: F401 (site is a fixture)
    Site,
    _refused,
    credentials,
    site,
)
from tests.security.test_mqtt_identity import Site as EmbeddedSite
from tests.security.test_mqtt_identity import embedded  # noqa: F401 (the fixture)
from tests.test_chat_mqtt import next_frame, signed

pytestmark = pytest.mark.slow

PINGREQ, PINGRESP = b"\xc0\x00", b"\xd0"
DROPPED = 'teleconsult_mqtt_requests_dropped_total{reason="revoked_device"}'


async def _second_device(who: Person, label: str) -> Person:
    """Another registered device of ``who`` (same user and REST session)."""
    keys = DeviceKeys.generate()
    device_id = await who.rest.register_device(keys, label)
    return dataclasses.replace(who, keys=keys, device_id=device_id, chat=None)


async def _alive(link: RawLink) -> bool:
    """Whether the broker still answers on ``link`` (a PINGREQ gets its PINGRESP)."""
    await link.send(PINGREQ)
    answer = await link.packet()
    return answer is not None and answer[:1] == PINGRESP


def _publish(topic: str, payload: bytes) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic.encode() + payload
    length = bytearray()
    n = len(body)
    while True:
        byte, n = n % 128, n // 128
        length.append(byte | (0x80 if n else 0))
        if not n:
            break
    return b"\x30" + bytes(length) + body


async def _ack(link: RawLink) -> dict[str, Any]:
    """The next ack published to ``link`` (subscribed at QoS 0: no packet id)."""
    while True:
        packet = await link.packet()
        assert packet is not None, "the broker closed the connection"
        if packet[0] >> 4 != 3:
            continue
        size = int.from_bytes(packet[1:3], "big")
        frame: dict[str, Any] = mqtt_wire.decode(packet[3 + size :])
        return frame


# --- Mosquitto with dynamic security --------------------------------------------------------


async def test_deleting_a_device_kicks_and_refuses_its_mosquitto_account(
    site: Site,  # noqa: F811 (the imported fixture)
) -> None:
    async with people(site.base, site.alice) as (alice,):
        tablet = await _second_device(alice, "tablet")
        phone_login = await credentials(alice)
        tablet_login = await credentials(tablet)
        async with RawLink.open(site.port) as phone, RawLink.open(site.port) as kept:
            for link, (username, password), name in (
                (phone, phone_login, "phone"),
                (kept, tablet_login, "tablet"),
            ):
                packet = connect_packet(
                    f"{alice.user_id}-{name}", username=username, password=password
                )
                assert await link.connack(packet) == 0

            await alice.rest.call("DELETE", f"/api/v1/devices/{alice.device_id}")

            assert await phone.closed()
            assert await _alive(kept)
        assert await _refused(site, *phone_login)
        assert not await _refused(site, *tablet_login)


# --- the embedded broker --------------------------------------------------------------------


async def _acks_until(client: aiomqtt.Client, request_id: str) -> list[dict[str, Any]]:
    """Every ack ``client`` gets up to and including the one of ``request_id``."""
    seen: list[dict[str, Any]] = []
    while not seen or seen[-1].get("id") != request_id:
        _, frame = await next_frame(client)
        seen.append(frame)
    return seen


async def _dropped_as_revoked(base: str) -> bool:
    """Whether the bridge counts one request dropped for its revoked device (bounded wait)."""
    async with aiohttp.ClientSession() as http, asyncio.timeout(20):
        while True:
            async with http.get(f"{base}/metrics") as resp:
                if f"{DROPPED} 1.0" in (await resp.text()).splitlines():
                    return True
            await asyncio.sleep(0.1)


async def test_deleting_a_device_closes_its_embedded_broker_connection(
    embedded: EmbeddedSite,  # noqa: F811 (the imported fixture)
) -> None:
    live = embedded
    async with people(live.base, live.doctor, live.victim) as (doctor, patient):
        thread = str(await doctor.rest.create_thread([patient.user_id]))
        tablet = await _second_device(patient, "tablet")
        token, user = patient.rest.access_token, patient.user_id
        ask = {"thread_id": thread}
        req = mqtt_wire.request_topic(user)

        def client(suffix: str) -> aiomqtt.Client:
            return aiomqtt.Client(
                "127.0.0.1",
                live.port,
                username=str(user),
                password=token,
                identifier=f"{user}-{suffix}",
            )

        async with RawLink.open(live.port) as phone, client("tablet") as kept:
            login = connect_packet(f"{user}-phone", username=str(user), password=token)
            assert await phone.connack(login) == 0
            await phone.send(subscribe_packet(1, mqtt_wire.ack_topic(user), qos=0))
            await kept.subscribe(mqtt_wire.ack_topic(user), qos=1)
            # The phone's first request tells the broker which device it speaks for.
            await phone.send(_publish(req, signed(patient, "p1", "presence", ask)))
            first = await _ack(phone)
            assert (first["id"], first["ack"]["ok"]) == ("p1", True), first

            await patient.rest.call("DELETE", f"/api/v1/devices/{patient.device_id}")

            assert await phone.closed()
            # The tablet stays connected, and its requests run.
            await kept.publish(req, signed(tablet, "t1", "presence", ask), qos=1)
            assert (await _acks_until(kept, "t1"))[-1]["ack"]["ok"] is True

            # The login session still lets the phone connect (the embedded broker knows
            # sessions, not devices), but the bridge drops what it signs, at once.
            async with client("phone-again") as again:
                await again.publish(req, signed(patient, "p2", "presence", ask), qos=1)
            assert await _dropped_as_revoked(live.base)
            await kept.publish(req, signed(tablet, "t2", "presence", ask), qos=1)
            assert "p2" not in [frame.get("id") for frame in await _acks_until(kept, "t2")]


async def test_a_connection_that_never_named_the_deleted_device_stays_open(
    embedded: EmbeddedSite,  # noqa: F811 (the imported fixture)
) -> None:
    live = embedded
    async with people(live.base, live.victim) as (patient,):
        user, token = patient.user_id, patient.rest.access_token
        async with RawLink.open(live.port) as silent:
            login = connect_packet(
                f"{user}-{secrets.token_hex(3)}", username=str(user), password=token
            )
            assert await silent.connack(login) == 0
            await patient.rest.call("DELETE", f"/api/v1/devices/{patient.device_id}")
            assert await _alive(silent)


def test_a_device_revocation_crosses_the_bus_and_ends_no_login_session() -> None:
    """Other processes learn of a deleted device from the bus: the device id must survive
    the wire, or they would take it for a revocation of every session of the user."""
    user, device, session = uuid4(), uuid4(), uuid4()
    sent = Revocation(user, "device_not_usable", device_id=device)
    received = Revocation.decode(sent.encode())
    assert received == sent
    assert not received.covers(user, session) and not received.covers(user, None)
    # A revocation from a process that knows no device ids still reads as before.
    assert Revocation.decode(b'{"u":"%s","s":null,"k":null,"r":"x"}' % str(user).encode()).covers(
        user, session
    )
