"""Refused events on Socket.IO (``/chat``, ``/signal``) and MQTT are audited like REST's.

A server process with its embedded MQTT broker; two clinics. Mallory, a patient of
clinic B, probes clinic A's objects: a chat thread of its doctor and patient, and a
consultation room. Bob, a patient of clinic A, probes the thread of another patient
of his own clinic. Each refusal is answered ``not_found`` exactly like a missing
object, and written as one ``access.refused`` row belonging to no clinic, naming the
transport; malformed events and missing objects write none, and a burst is capped
per actor and action (``AUDIT_REFUSALS_PER_MINUTE``) across transports.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import aiomqtt
import asyncpg
import pytest

from teleconsult.core.identity import Role
from teleconsult.messaging import mqtt_wire
from tests.chatkit import Person, people
from tests.mosquittokit import free_port
from tests.rawsio import raw, refused
from tests.security.test_mqtt_identity import _accounts as clinics_of_mqtt_tests
from tests.security.test_refusals_audited import _refused_rows
from tests.servers import ServerProcess
from tests.signalkit import open_room, raw_signal
from tests.test_chat_mqtt import next_frame, signed
from tests.world import Account, Tenant, make_user

pytestmark = pytest.mark.slow

PER_MINUTE = 5
MISSING = "00000000-0000-4000-8000-000000000000"


@dataclass
class Site:
    server: ServerProcess
    dsn: str
    mqtt_port: int
    doctor: Account  # clinic A
    alice: Account  # clinic A, in a thread and a room with the doctor
    bob: Account  # clinic A, in neither
    mallory: Account  # clinic B
    room_id: str
    base: str = ""


@pytest.fixture
async def site(fresh_db: str, tmp_path: Path) -> AsyncIterator[Site]:
    # The identity tests' two clinics: a patient of one, a doctor and patient of the other.
    mallory, doctor, alice = await clinics_of_mqtt_tests(fresh_db)
    pool = await asyncpg.create_pool(fresh_db, min_size=1, max_size=2)
    try:
        bob = await make_user(pool, doctor.clinic_id, Role.PATIENT, tag="bob")
        room_id = await open_room(
            pool, Tenant(doctor.clinic_id, {Role.DOCTOR: doctor, Role.PATIENT: alice})
        )
    finally:
        await pool.close()
    port = free_port()
    server = ServerProcess(
        fresh_db,
        tmp_path,
        MQTT_EMBEDDED_PORT=str(port),
        AUDIT_REFUSALS_PER_MINUTE=str(PER_MINUTE),
        # The burst below is about the audit's cap, not the per-connection event limit.
        CHAT_EVENTS_PER_SECOND="1000",
        CHAT_EVENT_BURST="1000",
    )
    try:
        await server.start()
        await server.ready()
        yield Site(
            server, fresh_db, port, doctor, alice, bob, mallory, room_id, base=server.base_url
        )
    finally:
        await server.stop()


async def _ips(dsn: str, actor: UUID) -> list[str | None]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT ip FROM audit_log WHERE action = 'access.refused' AND actor_id = $1 "
            "ORDER BY seq",
            actor,
        )
    finally:
        await conn.close()
    return [row["ip"] for row in rows]


def _detail(site: Site, action: str, operation: str, transport: str) -> dict[str, Any]:
    """A refused row's detail for Mallory's probe (see api/refusals.py)."""
    return {
        "policy_action": action,
        "operation": operation,
        "status": 404,
        "code": "not_found",
        "actor_clinic_id": str(site.mallory.clinic_id),
        "transport": transport,
    }


class _Mqtt:
    """One MQTT connection of ``who`` to the embedded broker: signed requests, their acks."""

    def __init__(self, client: aiomqtt.Client, who: Person) -> None:
        self.client, self.who = client, who

    async def call(self, event: str, data: Any) -> dict[str, Any]:
        request_id = secrets.token_hex(6)
        topic = mqtt_wire.request_topic(self.who.user_id)
        await self.client.publish(topic, signed(self.who, request_id, event, data), qos=1)
        _, frame = await next_frame(self.client)
        assert frame["id"] == request_id, frame
        ack: dict[str, Any] = frame["ack"]
        return ack

    async def send_raw(self, payload: bytes) -> dict[str, Any]:
        await self.client.publish(mqtt_wire.request_topic(self.who.user_id), payload, qos=1)
        _, frame = await next_frame(self.client)
        ack: dict[str, Any] = frame["ack"]
        return ack


@contextlib.asynccontextmanager
async def mqtt(site: Site, who: Person) -> AsyncIterator[_Mqtt]:
    client = aiomqtt.Client(
        "127.0.0.1",
        site.mqtt_port,
        username=str(who.user_id),
        password=who.rest.access_token,
        identifier=f"{who.user_id}-{secrets.token_hex(4)}",
    )
    async with client:
        await client.subscribe(mqtt_wire.ack_topic(who.user_id), qos=1)
        yield _Mqtt(client, who)


async def _thread(site: Site) -> str:
    """Clinic A's thread of the doctor and Alice."""
    async with people(site.base, site.doctor) as (doctor,):
        return str(await doctor.rest.create_thread([site.alice.user_id]))


# --- Socket.IO /chat ------------------------------------------------------------------------


async def test_a_chat_probe_of_another_clinics_thread_is_one_refused_row(site: Site) -> None:
    thread = await _thread(site)
    async with (
        people(site.base, site.mallory) as (mallory,),
        raw(site.base, mallory.rest.access_token) as chat,
    ):
        # Malformed events and a missing thread: answered as before, not audited.
        refused(
            await chat.call("typing", {"thread_id": "not-a-uuid", "typing": True}),
            "validation_failed",
            400,
        )
        refused(await chat.call("typing", {"thread_id": thread}), "validation_failed", 400)
        refused(await chat.call("typing", "not an object"), "validation_failed", 400)
        refused(await chat.call("presence", {"thread_id": MISSING}), "not_found", 404)
        # Clinic A's thread: the same answer as a missing one, and one row.
        refused(await chat.call("presence", {"thread_id": thread}), "not_found", 404)
    (row,) = await _refused_rows(site.dsn, str(site.mallory.user_id))
    assert row["clinic_id"] is None  # not clinic A's (nor B's) to see: see api/refusals.py
    assert (row["actor_role"], row["outcome"]) == ("patient", "denied")
    assert (row["object_type"], row["object_id"]) == ("thread", thread)
    assert row["detail"] == _detail(site, "thread.read", "chat.presence", "socketio")
    assert await _ips(site.dsn, site.mallory.user_id) == ["127.0.0.1"]


async def test_a_non_member_of_the_same_clinic_is_refused_on_every_thread_event(
    site: Site,
) -> None:
    thread = await _thread(site)
    async with people(site.base, site.bob) as (bob,), raw(site.base, bob.rest.access_token) as chat:
        refused(await chat.call("typing", {"thread_id": thread, "typing": True}), "not_found", 404)
        refused(await chat.call("receipt", {"thread_id": thread, "read_seq": 1}), "not_found", 404)
        ack = await chat.call("resume", {"threads": {thread: 0, MISSING: 0}})
        assert ack["ok"] is True
        refused(ack["threads"][thread], "not_found", 404)
        refused(ack["threads"][MISSING], "not_found", 404)
    rows = await _refused_rows(site.dsn, str(site.bob.user_id))
    assert [(r["detail"]["operation"], r["object_id"]) for r in rows] == [
        ("chat.typing", thread),
        ("chat.receipt", thread),
        ("chat.resume", thread),
    ]
    assert {r["detail"]["transport"] for r in rows} == {"socketio"}


# --- Socket.IO /signal ----------------------------------------------------------------------


async def test_joining_another_clinics_room_is_one_refused_row(site: Site) -> None:
    async with (
        people(site.base, site.mallory) as (mallory,),
        raw_signal(site.base, mallory.rest.access_token) as signal,
    ):
        refused(await signal.call("join", {"room_id": 12}), "validation_failed", 400)
        refused(await signal.call("join", {"room_id": "no-such-room-000000000"}), "not_found", 404)
        refused(await signal.call("join", {"room_id": site.room_id}), "not_found", 404)
    (row,) = await _refused_rows(site.dsn, str(site.mallory.user_id))
    assert row["clinic_id"] is None
    assert (row["object_type"], row["object_id"]) == ("room", site.room_id)
    assert row["detail"] == _detail(site, "room.join", "signal.join", "socketio")


async def test_a_patient_using_the_doctors_controls_is_refused_but_waiting_is_not(
    site: Site,
) -> None:
    async with (
        people(site.base, site.alice) as (alice,),
        raw_signal(site.base, alice.rest.access_token) as signal,
    ):
        joined = await signal.call("join", {"room_id": site.room_id})
        assert joined["ok"] is True, joined
        # Not admitted yet: a state of her own consultation, not a probe.
        offer = {"to": "somebody-else", "kind": "offer", "sdp": "v=0"}
        refused(await signal.call("signal", offer), "not_admitted", 403)
        # Admitting someone is the doctor's: a refused attempt.
        refused(await signal.call("admit", {"peer_id": "somebody-else"}), "forbidden", 403)
    (row,) = await _refused_rows(site.dsn, str(site.alice.user_id))
    assert (row["object_type"], row["object_id"]) == ("room", site.room_id)
    assert (row["detail"]["operation"], row["detail"]["status"]) == ("signal.admit", 403)
    assert row["detail"]["transport"] == "socketio"


# --- MQTT -----------------------------------------------------------------------------------


async def test_an_mqtt_probe_of_another_clinics_thread_is_one_refused_row(site: Site) -> None:
    thread = await _thread(site)
    async with people(site.base, site.mallory) as (mallory,), mqtt(site, mallory) as link:
        assert (await link.send_raw(b"{not json"))["error"]["code"] == "malformed_json"
        bad = await link.call("typing", {"thread_id": 7, "typing": True})
        assert bad["error"]["code"] == "validation_failed"
        assert (await link.call("presence", {"thread_id": MISSING}))["error"]["code"] == "not_found"
        ack = await link.call("receipt", {"thread_id": thread, "read_seq": 1})
        assert (ack["ok"], ack["error"]["code"], ack["error"]["status"]) == (
            False,
            "not_found",
            404,
        )
    (row,) = await _refused_rows(site.dsn, str(site.mallory.user_id))
    assert row["clinic_id"] is None
    assert (row["object_type"], row["object_id"]) == ("thread", thread)
    assert row["detail"] == _detail(site, "thread.read", "chat.receipt", "mqtt")
    # The bridge does not see the device's address (the broker does).
    assert await _ips(site.dsn, site.mallory.user_id) == [None]


# --- a burst ----------------------------------------------------------------------------------


async def test_a_burst_of_refused_events_is_capped_per_actor_and_action(site: Site) -> None:
    thread = await _thread(site)
    burst = 4 * PER_MINUTE
    started = time.monotonic()
    async with people(site.base, site.mallory) as (mallory,):
        async with raw(site.base, mallory.rest.access_token) as chat:
            for _ in range(burst):
                refused(await chat.call("presence", {"thread_id": thread}), "not_found", 404)
        async with mqtt(site, mallory) as link:
            for _ in range(burst):
                ack = await link.call("presence", {"thread_id": thread})
                assert ack["error"]["code"] == "not_found", ack
    minutes = math.ceil((time.monotonic() - started) / 60) + 1
    rows = await _refused_rows(site.dsn, str(site.mallory.user_id))
    marked = [row for row in rows if row["detail"].get("suppressed")]
    # One budget for the action whichever transport the events came by.
    assert PER_MINUTE <= len(rows) - len(marked) <= PER_MINUTE * minutes, len(rows)
    assert 1 <= len(marked) <= minutes, marked
    assert {r["detail"]["policy_action"] for r in rows} == {"thread.read"}
    assert len(rows) < 2 * burst
