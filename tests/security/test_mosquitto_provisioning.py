"""Production Mosquitto with device accounts the server provisions (issue 11), for real.

The system Mosquitto runs from ``deploy/mosquitto/dynsec.conf`` (TLS swapped
for a loopback listener) with its dynamic-security plugin, the plugin's state
made by ``mosquitto_ctrl dynsec init`` with the bridge account as admin, as
the operator would. A server process bridges it with
``MQTT_PROVISIONING=dynsec``: at start it sets default-deny and its own role,
and it makes each device's account when the owner asks for credentials.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
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
from teleconsult.client.rest import ApiError
from teleconsult.core.identity import Role
from teleconsult.messaging import mqtt_wire
from teleconsult.messaging.mqtt_broker import BRIDGE_USERNAME
from tests.chatkit import Person, connect, people, receive, socketio_transport
from tests.mosquittokit import RawLink, Will, connect_packet, dynsec_mosquitto
from tests.servers import ServerProcess
from tests.test_chat_mqtt import next_frame, refused, signed
from tests.world import Account, make_user

pytestmark = pytest.mark.slow

WITHIN = 20.0
BRIDGE_PASSWORD = "bridge-password-for-dynsec-tests"
NOT_AUTHORIZED = 0x05


@dataclass
class Site:
    server: ServerProcess
    dsn: str
    port: int
    admin: Account
    doctor: Account
    alice: Account  # patients
    bob: Account

    @property
    def base(self) -> str:
        return self.server.base_url


@pytest.fixture
async def site(fresh_db: str, tmp_path: Path) -> AsyncIterator[Site]:
    pool = await asyncpg.create_pool(fresh_db, min_size=1, max_size=2)
    try:
        clinic = await accounts_store.insert_clinic(
            pool, name=f"Dynsec {secrets.token_hex(3)}", timezone="UTC"
        )
        admin, doctor, alice, bob = [
            await make_user(pool, clinic.id, role, tag="dynsec")
            for role in (Role.ADMIN, Role.DOCTOR, Role.PATIENT, Role.PATIENT)
        ]
    finally:
        await pool.close()
    with dynsec_mosquitto(tmp_path / "mosquitto", BRIDGE_USERNAME, BRIDGE_PASSWORD) as port:
        url = f"mqtt://{BRIDGE_USERNAME}:{BRIDGE_PASSWORD}@127.0.0.1:{port}"
        server = ServerProcess(fresh_db, tmp_path, MQTT_URL=url, MQTT_PROVISIONING="dynsec")
        try:
            await server.start()
            await server.ready()
            yield Site(server, fresh_db, port, admin, doctor, alice, bob)
        finally:
            await server.stop()


async def credentials(who: Person, device_id: UUID | None = None) -> tuple[str, str]:
    answer = await who.rest.call("POST", f"/api/v1/devices/{device_id or who.device_id}/mqtt")
    assert answer["client_id_prefix"] == str(who.user_id)
    return answer["username"], answer["password"]


def device(site: Site, who: Person, username: str, password: str) -> MqttTransport:
    async def token() -> str:
        return password

    return MqttTransport(
        "127.0.0.1",
        site.port,
        user_id=who.user_id,
        token=token,
        client_id=f"{who.user_id}-{who.device_id}",
        device_id=who.device_id,
        keys=who.keys,
        username=username,
    )


def raw(site: Site, who: Person, username: str, password: str, **kw: Any) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        site.port,
        username=username,
        password=password,
        identifier=f"{who.user_id}-{secrets.token_hex(4)}",
        **kw,
    )


async def _refused(site: Site, username: str, password: str) -> bool:
    try:
        async with aiomqtt.Client("127.0.0.1", site.port, username=username, password=password):
            return False
    except MqttConnectError:
        return True


# --- credentials ------------------------------------------------------------------------


async def test_only_the_owner_gets_a_devices_mqtt_credentials(site: Site) -> None:
    async with people(site.base, site.alice, site.bob) as (alice, bob):
        async with aiohttp.ClientSession() as http:
            url = f"{site.base}/api/v1/devices/{alice.device_id}/mqtt"
            async with http.post(url) as resp:
                assert resp.status == 401
            async with http.post(
                url, headers={"Authorization": f"Bearer {bob.rest.access_token}"}
            ) as resp:
                assert resp.status == 404
            mine = {"Authorization": f"Bearer {alice.rest.access_token}"}
            async with http.post(url, headers=mine) as resp:
                assert resp.status == 200
                assert resp.headers["Cache-Control"] == "no-store"
                first = await resp.json()
        assert first["username"] == str(alice.device_id)
        # Asking again sets a new password: the old one no longer connects.
        username, password = await credentials(alice)
        assert password != first["password"]
        assert await _refused(site, username, first["password"])
        assert not await _refused(site, username, password)


# --- chat ----------------------------------------------------------------------------------


async def test_a_provisioned_device_chats_and_an_unprovisioned_one_cannot_connect(
    site: Site,
) -> None:
    async with people(site.base, site.doctor, site.alice, site.bob) as (doctor, alice, bob):
        thread = await doctor.rest.create_thread([alice.user_id])
        d = await connect(doctor, socketio_transport(site.base, doctor))
        a = await connect(alice, device(site, alice, *await credentials(alice)))
        for chat in (d, a):
            chat.follow(thread)
        await d.send(thread, b"from the doctor over Socket.IO")
        await a.send(thread, b"from the patient over Mosquitto")
        said = [b"from the doctor over Socket.IO", b"from the patient over Mosquitto"]
        assert [m.plaintext for m in await receive(a, 2)] == said
        assert [m.plaintext for m in await receive(d, 1)] == said[:1]
        await d.send(thread, b"and back")
        assert [m.plaintext for m in await receive(d, 2)] == [said[1], b"and back"]

        # Bob's device has no account; nor does a user id, nor the bridge's name.
        for username in (str(bob.device_id), str(bob.user_id), BRIDGE_USERNAME):
            assert await _refused(site, username, bob.rest.access_token)


# --- another user's topics --------------------------------------------------------------


async def test_a_provisioned_device_cannot_use_another_users_topics(site: Site) -> None:
    async with people(site.base, site.doctor, site.alice, site.bob) as (doctor, alice, bob):
        thread = await doctor.rest.create_thread([alice.user_id])
        d = await connect(doctor, socketio_transport(site.base, doctor))
        await d.send(thread, b"for alice")
        a_user, a_pw = await credentials(alice)
        b_user, b_pw = await credentials(bob)
        receipt = {"thread_id": str(thread), "delivered_seq": 1, "read_seq": 1}

        async with raw(site, bob, b_user, b_pw) as b:
            for topic in (
                mqtt_wire.inbox_topic(alice.user_id),
                mqtt_wire.ack_topic(alice.user_id),
                mqtt_wire.request_topic(alice.user_id),
                "tc/u/+/inbox",
                "#",
            ):
                (granted,) = await b.subscribe(topic, qos=1)
                assert refused([granted]), topic
            # The bridges' announcement is for every device (docs/mqtt.md).
            (granted,) = await b.subscribe(mqtt_wire.SERVER_UP_TOPIC, qos=0)
            assert not refused([granted])
            # Signed by Alice's device even (say, captured): the broker drops it.
            forged = signed(alice, "forged", "receipt", receipt)
            await b.publish(mqtt_wire.request_topic(alice.user_id), forged, qos=1)

        # A will on Alice's req topic, and a retained one on her inbox; then the link dies.
        for i, will in enumerate(
            (
                Will(
                    mqtt_wire.request_topic(alice.user_id), signed(alice, "w", "receipt", receipt)
                ),
                Will(mqtt_wire.inbox_topic(alice.user_id), b"forged push", retain=True),
            )
        ):
            client_id = f"{bob.user_id}-will{i}"
            async with RawLink.open(site.port) as link:
                code = await link.connack(
                    connect_packet(
                        client_id, username=b_user, password=b_pw, will=will, clean=False
                    )
                )
                link.kill()
            # Taking the session over ends the dead one (its will sent or dropped) first.
            async with RawLink.open(site.port) as again:
                assert code == 0  # Mosquitto takes the will, and checks it when sending
                assert (
                    await again.connack(connect_packet(client_id, username=b_user, password=b_pw))
                    == 0
                )

        async with raw(site, alice, a_user, a_pw) as a:
            await a.subscribe(
                [(mqtt_wire.ack_topic(alice.user_id), 1), (mqtt_wire.inbox_topic(alice.user_id), 1)]
            )
            body = signed(alice, "barrier", "presence", {"thread_id": str(thread)})
            await a.publish(mqtt_wire.request_topic(alice.user_id), body, qos=1)
            topic, frame = await next_frame(a)
        # Nothing before her own ack: no forged ack, no retained push.
        assert (topic, frame.get("id")) == (mqtt_wire.ack_topic(alice.user_id), "barrier"), frame
        conn = await asyncpg.connect(site.dsn)
        try:
            read = await conn.fetchval(
                "SELECT read_seq FROM receipts WHERE thread_id = $1 AND user_id = $2",
                thread,
                alice.user_id,
            )
        finally:
            await conn.close()
        assert (read or 0) == 0


# --- revocation ---------------------------------------------------------------------------


async def test_disabling_a_user_kicks_their_mqtt_accounts_and_refuses_them(site: Site) -> None:
    async with people(site.base, site.admin, site.alice) as (admin, alice):
        username, password = await credentials(alice)
        async with RawLink.open(site.port) as link:
            code = await link.connack(
                connect_packet(f"{alice.user_id}-phone", username=username, password=password)
            )
            assert code == 0

            await admin.rest.call("PATCH", f"/api/v1/users/{alice.user_id}", {"status": "disabled"})

            assert await link.closed()
        assert await _refused(site, username, password)


async def test_a_revoked_device_gets_no_new_credentials(site: Site) -> None:
    async with people(site.base, site.alice) as (alice,):
        await credentials(alice)
        await alice.rest.call("DELETE", f"/api/v1/devices/{alice.device_id}")
        with pytest.raises(ApiError) as refusal:
            await credentials(alice)
        assert refusal.value.status == 404
