"""Hostile clients on /chat: forged and malformed frames, bad tokens, floods, non-readers.

Every refusal is checked where it matters: the ack carries the stable error
code, and the messages table holds nothing that should not be there. The
clients are real: python-socketio's client for frames a library would send,
and Socket.IO spoken by hand over a bare WebSocket for frames no library
would send and for a client that stops reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import replace
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import msgpack
import pytest
from aiohttp.test_utils import TestClient

from teleconsult.client.crypto import DeviceKeys, new_client_msg_id, seal
from teleconsult.core.identity import Role
from teleconsult.messaging.envelope import Envelope, to_json, to_msgpack
from teleconsult.server.app import POOL, SETTINGS
from tests.chatkit import Person, connect, next_event, people, receive, socketio_transport
from tests.conftest import StartServer
from tests.rawsio import NS, HandSpoken, raw, refused
from tests.world import Tenant, make_tenant


def _base(client: TestClient[Any, Any]) -> str:
    return str(client.make_url("")).rstrip("/")


# --- building envelopes -----------------------------------------------------------------


async def sealed(
    who: Person,
    thread: UUID,
    text: bytes = b"hello",
    *,
    signer: DeviceKeys | None = None,
    device_id: UUID | None = None,
    also_for: dict[UUID, bytes] | None = None,
    client_msg_id: str | None = None,
    max_bytes: int = 64 * 1024,
) -> Envelope:
    """An envelope for ``thread`` sealed for its devices (and ``also_for``)."""
    devices = {d.id: d.x25519_public for d in await who.rest.thread_devices(thread)}
    sender = signer or who.keys
    device = device_id or who.device_id
    if device != who.device_id or sender is not who.keys:
        devices.pop(device, None)  # seal() adds the sender's device with its own key
    return seal(
        plaintext=text,
        thread_id=thread,
        sender=sender,
        sender_device_id=device,
        recipients={**devices, **(also_for or {})},
        client_msg_id=client_msg_id or new_client_msg_id(),
        max_bytes=max_bytes,
    )


def send_data(env: Envelope, encoding: str, thread: UUID | None = None) -> dict[str, Any]:
    payload: Any = to_msgpack(env) if encoding == "msgpack" else to_json(env)
    return {"thread_id": str(thread or env.thread_id), "envelope": payload}


async def stored(pool: asyncpg.Pool, thread: UUID) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM messages WHERE thread_id = $1", thread)
    return count


# --- refused envelopes ------------------------------------------------------------------


async def _tampered(doctor: Person, patient: Person, thread: UUID) -> Envelope:
    env = await sealed(doctor, thread)
    flipped = bytes([env.ciphertext[0] ^ 1]) + env.ciphertext[1:]
    return replace(env, ciphertext=flipped)


async def _signed_by_a_stranger(doctor: Person, patient: Person, thread: UUID) -> Envelope:
    # Claims the doctor's device but is signed by keys the server never registered.
    return await sealed(doctor, thread, signer=DeviceKeys.generate())


async def _from_a_revoked_device(doctor: Person, patient: Person, thread: UUID) -> Envelope:
    old_keys = DeviceKeys.generate()
    old_device = await doctor.rest.register_device(old_keys, "old phone")
    env = await sealed(doctor, thread, signer=old_keys, device_id=old_device)
    await doctor.rest.call("DELETE", f"/api/v1/devices/{old_device}")
    return env


async def _from_another_users_device(doctor: Person, patient: Person, thread: UUID) -> Envelope:
    # The doctor names the patient's device as the sender (and signs as best they can).
    return await sealed(doctor, thread, device_id=patient.device_id)


async def _sealed_for_an_unknown_device(doctor: Person, patient: Person, thread: UUID) -> Envelope:
    return await sealed(
        doctor, thread, also_for={uuid4(): DeviceKeys.generate().encryption_public_key}
    )


async def _sealed_for_a_revoked_device(doctor: Person, patient: Person, thread: UUID) -> Envelope:
    # The patient's lost phone: registered, then revoked. It must not get new messages.
    lost = DeviceKeys.generate()
    lost_id = await patient.rest.register_device(lost, "lost phone")
    await patient.rest.call("DELETE", f"/api/v1/devices/{lost_id}")
    return await sealed(doctor, thread, also_for={lost_id: lost.encryption_public_key})


async def _oversized(doctor: Person, patient: Person, thread: UUID) -> Envelope:
    return await sealed(doctor, thread, b"x" * 70_000, max_bytes=1 << 20)


ENVELOPE_REFUSALS = {
    "tampered_body": (_tampered, "bad_signature", 400),
    "signed_by_unregistered_key": (_signed_by_a_stranger, "bad_signature", 400),
    "revoked_device": (_from_a_revoked_device, "device_not_usable", 403),
    "another_users_device": (_from_another_users_device, "device_not_usable", 403),
    "keys_for_an_unknown_device": (_sealed_for_an_unknown_device, "not_a_recipient", 400),
    "keys_for_a_revoked_device": (_sealed_for_a_revoked_device, "not_a_recipient", 400),
    "over_the_envelope_limit": (_oversized, "payload_too_large", 413),
}


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
@pytest.mark.parametrize("case", sorted(ENVELOPE_REFUSALS))
async def test_a_refused_envelope_is_acked_with_its_code_and_not_stored(
    client: TestClient[Any, Any], tenant: Tenant, app_pool: asyncpg.Pool, case: str, encoding: str
) -> None:
    build, code, status = ENVELOPE_REFUSALS[case]
    base = _base(client)
    async with (
        asyncio.timeout(30),
        people(base, tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (doctor, patient),
    ):
        thread = await doctor.rest.create_thread([patient.user_id])
        env = await build(doctor, patient, thread)
        async with raw(base, doctor.rest.access_token, encoding=encoding) as sock:
            refused(await sock.call("send", send_data(env, encoding)), code, status)
            assert await stored(app_pool, thread) == 0
            # The connection is still good for an honest message.
            ack = await sock.call("send", send_data(await sealed(doctor, thread), encoding))
            assert ack["ok"] and ack["seq"] == 1 and ack["duplicate"] is False, ack
        assert await stored(app_pool, thread) == 1


async def test_threads_the_sender_is_not_in_are_not_found_and_not_written(
    client: TestClient[Any, Any], tenant: Tenant, other_tenant: Tenant, app_pool: asyncpg.Pool
) -> None:
    base = _base(client)
    assert tenant.other_patient is not None
    async with (
        asyncio.timeout(30),
        people(
            base,
            tenant[Role.DOCTOR],
            tenant[Role.PATIENT],
            tenant.other_patient,
            other_tenant[Role.DOCTOR],
            other_tenant[Role.PATIENT],
        ) as (doctor, patient, neighbour, their_doctor, their_patient),
    ):
        own = await doctor.rest.create_thread([patient.user_id])
        same_clinic = await doctor.rest.create_thread([neighbour.user_id])
        other_clinic = await their_doctor.rest.create_thread([their_patient.user_id])
        async with raw(base, patient.rest.access_token) as sock:
            for thread in (same_clinic, other_clinic):
                # Sealed as well as an outsider can: for the patient's own device only.
                env = seal(
                    plaintext=b"let me in",
                    thread_id=thread,
                    sender=patient.keys,
                    sender_device_id=patient.device_id,
                    recipients={},
                )
                refused(await sock.call("send", send_data(env, "json")), "not_found", 404)
                for event, data in [
                    ("resume", {"threads": {str(thread): 0}}),
                    ("receipt", {"thread_id": str(thread), "read_seq": 1}),
                    ("typing", {"thread_id": str(thread), "typing": True}),
                    ("presence", {"thread_id": str(thread)}),
                ]:
                    ack = await sock.call(event, data)
                    if event == "resume":  # per thread, so one bad thread spoils no others
                        assert ack["ok"], ack
                        ack = ack["threads"][str(thread)]
                    refused(ack, "not_found", 404)
                assert await stored(app_pool, thread) == 0
            # An envelope of the patient's own thread, posted to a thread it is not in.
            env = await sealed(patient, own)
            refused(
                await sock.call("send", send_data(env, "json", thread=other_clinic)),
                "not_found",
                404,
            )
            # And one of another thread, posted to its own: the envelope must name it.
            foreign = replace(env, thread_id=same_clinic)
            refused(
                await sock.call("send", send_data(foreign, "msgpack", thread=own)),
                "invalid_envelope",
                400,
            )
            assert await stored(app_pool, own) == 0
            assert await stored(app_pool, other_clinic) == 0


def _malformed_payloads(thread: UUID, good: Envelope) -> list[tuple[str, Any, str, str | None]]:
    """(event, payload, expected code, a field the error must name)."""
    t = str(thread)
    good_json = to_json(good)
    wrong_shapes: list[tuple[dict[str, Any], str]] = [
        ({"v": 1}, "body.envelope.client_msg_id"),
        ({**good_json, "keys": {}}, "body.envelope.keys"),
        ({**good_json, "keys": [["device", "key"]]}, "body.envelope.keys[0]"),
        ({**good_json, "nonce": "AAAA"}, "body.envelope.nonce"),
        ({**good_json, "signature": f"{good_json['signature']}=="}, "body.envelope.signature"),
        ({**good_json, "thread_id": 7}, "body.envelope.thread_id"),
        ({**good_json, "v": "1"}, "body.envelope.v"),
        ({**good_json, "extra": True}, "body.envelope.extra"),
        ({k: v for k, v in good_json.items() if k != "signature"}, "body.envelope.signature"),
    ]
    garbage = [
        b"",
        b"\xc1",  # never used in msgpack
        b"\x93\x01\x02",  # an array of the wrong length
        msgpack.packb({"v": 1}),  # a map, not an array
        msgpack.packb([1, *([None] * 8)]),
        to_msgpack(good) + b"\x00",  # trailing bytes
        b"\xdd\xff\xff\xff\xff",  # claims four billion items
    ]
    cases: list[tuple[str, Any, str, str | None]] = [
        ("send", None, "validation_failed", "data"),
        ("send", "a string", "validation_failed", "data"),
        ("send", 42, "validation_failed", "data"),
        ("send", [t, good_json], "validation_failed", "data"),
        ("send", {"envelope": good_json}, "validation_failed", "data.thread_id"),
        (
            "send",
            {"thread_id": 12345, "envelope": good_json},
            "validation_failed",
            "data.thread_id",
        ),
        (
            "send",
            {"thread_id": "not-a-uuid", "envelope": good_json},
            "validation_failed",
            "data.thread_id",
        ),
        ("send", {"thread_id": t, "envelope": 5}, "validation_failed", None),
        (
            "send",
            {"thread_id": t, "envelope": good_json, "to": "all"},
            "validation_failed",
            "data.to",
        ),
        ("typing", {"thread_id": t, "typing": "yes"}, "validation_failed", "data.typing"),
        ("typing", {"thread_id": t, "typing": 1}, "validation_failed", "data.typing"),
        ("receipt", {"thread_id": t, "read_seq": -1}, "validation_failed", "data.read_seq"),
        ("receipt", {"thread_id": t, "read_seq": "1"}, "validation_failed", "data.read_seq"),
        ("receipt", {"thread_id": t, "read_seq": 2**63}, "validation_failed", "data.read_seq"),
        ("resume", {"threads": {"not-a-uuid": 0}}, "validation_failed", None),
        ("resume", {"threads": {t: 0}, "limit": 10_000}, "validation_failed", "data.limit"),
        (
            "resume",
            {"threads": {str(uuid4()): 0 for _ in range(101)}},
            "validation_failed",
            "data.threads",
        ),
        ("presence", {}, "validation_failed", "data.thread_id"),
        ("shout", {"thread_id": t}, "validation_failed", None),
        ("connect", {"token": "x"}, "validation_failed", None),
        ("disconnect", {}, "validation_failed", None),
    ]
    cases += [
        ("send", {"thread_id": t, "envelope": g}, "invalid_envelope", "body.envelope")
        for g in garbage
    ]
    cases += [
        ("send", {"thread_id": t, "envelope": e}, "invalid_envelope", f) for e, f in wrong_shapes
    ]
    cases.append(
        ("send", {"thread_id": t, "envelope": {**good_json, "v": 2}}, "unsupported_version", None)
    )
    return cases


async def test_malformed_payloads_are_refused_with_their_fields_and_store_nothing(
    client: TestClient[Any, Any], tenant: Tenant, app_pool: asyncpg.Pool
) -> None:
    base = _base(client)
    async with (
        asyncio.timeout(60),
        people(base, tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (doctor, patient),
    ):
        thread = await doctor.rest.create_thread([patient.user_id])
        good = await sealed(doctor, thread)
        async with raw(base, doctor.rest.access_token) as sock:
            for event, data, code, field in _malformed_payloads(thread, good):
                ack = await sock.call(event, data)
                error = refused(ack, code, 400)
                if field is not None:
                    named = [f["field"] for f in error.get("fields", [])]
                    assert any(n.startswith(field) for n in named), (event, data, error)
            assert await stored(app_pool, thread) == 0
            # Still served, and the good envelope was never taken: it goes now as seq 1.
            ack = await sock.call("send", send_data(good, "msgpack"))
            assert ack["ok"] and ack["seq"] == 1 and not ack["duplicate"], ack


async def test_frames_no_library_would_send_are_refused_or_closed_and_the_server_goes_on(
    client: TestClient[Any, Any], tenant: Tenant, app_pool: asyncpg.Pool
) -> None:
    base = _base(client)
    async with (
        asyncio.timeout(30),
        people(base, tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (doctor, patient),
    ):
        thread = await doctor.rest.create_thread([patient.user_id])
        auth = {"token": doctor.rest.access_token, "encoding": "json"}
        async with HandSpoken.open(base, auth) as hand:
            # Arguments the JSON parser accepts but no client would build.
            for text in ['{"thread_id": 1e400}', '{"thread_id": NaN}', "[[[]]]", '"\\ud800"']:
                refused(await hand.call("presence", text), "validation_failed", 400)
            # Two payloads: only the first counts, and it must still be valid.
            ack = await hand.call("presence", json.dumps({"thread_id": str(thread)}) + ",{}")
            assert ack["ok"], ack
        # JSON nested deeper than the parser will go: the frame is dropped, or the
        # connection; either way nothing is stored and the server answers the next client.
        async with HandSpoken.open(base, auth) as hand:
            await hand.ws.send_str(f'42{NS},999["send",' + "[" * 100_000 + "]" * 100_000 + "]")
            with contextlib.suppress(ConnectionResetError):
                ack = await hand.call("presence", json.dumps({"thread_id": str(thread)}))
                assert ack["ok"], ack
        async with raw(base, doctor.rest.access_token) as sock:
            ack = await sock.call("send", send_data(await sealed(doctor, thread), "json"))
            assert ack["ok"] and ack["seq"] == 1, ack
        assert await stored(app_pool, thread) == 1


def _resident_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def test_a_packet_announcing_endless_attachments_cannot_hold_server_memory(
    client: TestClient[Any, Any], tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    # Each refused frame is logged with its traceback, which holds the frame: kept by
    # pytest's log capture, they would be the test's memory rather than the server's.
    caplog.set_level(logging.CRITICAL, logger="engineio.server")
    base = _base(client)
    patient = tenant[Role.PATIENT]
    chunk = bytes(250 * 1024)  # each under the frame limit
    frames = 256  # 64 MB in all
    async with (
        asyncio.timeout(60),
        HandSpoken.open(base, {"token": patient.access_token}) as hand,
    ):
        before = _resident_mb()
        # A binary event announcing a million attachments, then the "attachments".
        header = f'451000000-{NS},["send",{{"_placeholder":true,"num":0}}]'
        await hand.ws.send_str(header)
        for _ in range(frames):
            await hand.ws.send_bytes(chunk)
        # Had the server kept collecting, this event would be one more attachment.
        async with asyncio.timeout(10):
            ack = await hand.call("presence", json.dumps({"thread_id": str(uuid4())}))
        refused(ack, "not_found", 404)
        grown = _resident_mb() - before
    # The server process (this one) did not keep what it was sent.
    assert grown < frames * len(chunk) / 2**20 / 2, f"{grown:.0f} MB more resident"


async def test_events_named_connect_or_disconnect_leave_the_connection_as_it_is(
    client: TestClient[Any, Any], tenant: Tenant
) -> None:
    base = _base(client)
    async with (
        asyncio.timeout(30),
        people(base, tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (doctor, patient),
    ):
        thread = await doctor.rest.create_thread([patient.user_id])
        watcher = await connect(doctor, socketio_transport(base, doctor))
        async with raw(base, patient.rest.access_token) as sock:
            assert (await next_event(watcher, "presence"))["online"] is True
            # As if the server had called its own handlers: a second session on this
            # connection (every push twice, one never cleaned up), or none at all.
            token = {"token": patient.rest.access_token, "encoding": "json"}
            for event, args in [("connect", ({}, token)), ("disconnect", ("client",))]:
                ack = await sock.sio.call(event, args, namespace=NS, timeout=10)
                refused(ack, "validation_failed", 400)
            await watcher.send(thread, b"first")
            await watcher.send(thread, b"second")
            seqs = [(await sock.next_event("message"))["seq"] for _ in range(2)]
            assert seqs == [1, 2]
            ack = await sock.call("presence", {"thread_id": str(thread)})
            assert str(patient.user_id) in ack["online"], ack
        # Its one real goodbye is the first presence news since it came online.
        assert await next_event(watcher, "presence") == {
            "user_id": str(patient.user_id),
            "online": False,
        }


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_a_frame_over_the_size_limit_closes_that_connection_only(
    start_server: StartServer, transport: str
) -> None:
    # Frequent pings: a long-polling client's goodbye waits for the next one.
    client = await start_server(CHAT_PING_INTERVAL="1", CHAT_PING_TIMEOUT="2")
    tenant = await make_tenant(client.app[POOL], client)
    app_pool = client.app[POOL]
    base = _base(client)
    limit = client.app[SETTINGS].chat.max_frame_bytes
    async with (
        asyncio.timeout(60),
        people(base, tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (doctor, patient),
    ):
        thread = await doctor.rest.create_thread([patient.user_id])
        bystander = await connect(patient, socketio_transport(base, patient))
        bystander.follow(thread)
        async with raw(base, doctor.rest.access_token, transport=transport) as sock:
            env = await sealed(doctor, thread)
            big = {**send_data(env, "json"), "padding": "x" * (limit + 1024)}
            await sock.sio.emit("send", big, namespace=NS)
            await asyncio.wait_for(sock.gone.wait(), 30)
        assert await stored(app_pool, thread) == 0
        # The server is fine: a new connection of the same user sends, the bystander reads.
        async with raw(base, doctor.rest.access_token, transport=transport) as sock:
            ack = await sock.call("send", send_data(env, "msgpack"))
            assert ack["ok"] and ack["seq"] == 1, ack
        (got,) = await receive(bystander, 1)
        assert got.plaintext == b"hello"


async def test_the_same_envelope_again_is_acked_with_its_seq_and_stored_once(
    client: TestClient[Any, Any], tenant: Tenant, app_pool: asyncpg.Pool
) -> None:
    base = _base(client)
    async with (
        asyncio.timeout(30),
        people(base, tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (doctor, patient),
    ):
        thread = await doctor.rest.create_thread([patient.user_id])
        reader = await connect(patient, socketio_transport(base, patient))
        reader.follow(thread)
        env = await sealed(doctor, thread, b"take two tablets")
        async with raw(base, doctor.rest.access_token) as first:
            ack = await first.call("send", send_data(env, "msgpack"))
            assert ack["ok"] and (ack["seq"], ack["duplicate"]) == (1, False), ack
            again = await first.call("send", send_data(env, "json"))
            assert again == {**ack, "duplicate": True}
        # A replay on another connection (a retry after a reconnect) is the same.
        async with raw(base, doctor.rest.access_token) as second:
            again = await second.call("send", send_data(env, "msgpack"))
            assert again == {**ack, "duplicate": True}
            after = await second.call(
                "send", send_data(await sealed(doctor, thread, b"next"), "json")
            )
            assert after["ok"] and after["seq"] == 2, after
        assert await stored(app_pool, thread) == 2
        # The reader gets each message once, in order, though one was published three times.
        got = await receive(reader, 2)
        assert [(m.seq, m.plaintext) for m in got] == [(1, b"take two tablets"), (2, b"next")]


async def test_a_client_msg_id_reused_for_another_envelope_is_a_conflict(
    client: TestClient[Any, Any], tenant: Tenant, app_pool: asyncpg.Pool
) -> None:
    base = _base(client)
    async with (
        asyncio.timeout(30),
        people(base, tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (doctor, patient),
    ):
        thread = await doctor.rest.create_thread([patient.user_id])
        msg_id = new_client_msg_id()
        first = await sealed(doctor, thread, b"the real message", client_msg_id=msg_id)
        # Same id, same text, sealed again: other bytes, so not a retry of the first.
        second = await sealed(doctor, thread, b"the real message", client_msg_id=msg_id)
        async with raw(base, doctor.rest.access_token, encoding="msgpack") as sock:
            assert (await sock.call("send", send_data(first, "msgpack")))["seq"] == 1
            for encoding in ("msgpack", "json"):
                refused(
                    await sock.call("send", send_data(second, encoding)),
                    "client_msg_id_reused",
                    409,
                )
        rows = await app_pool.fetch(
            "SELECT seq, envelope FROM messages WHERE thread_id = $1", thread
        )
        assert [(r["seq"], bytes(r["envelope"])) for r in rows] == [(1, to_msgpack(first))]
