"""The offline hook on a real database: coalesced thread news, sent by the real worker.

Every test gets a fresh database, so the worker claims only what the test made.
Presence is the real thing (in-process, or Redis where a test says so), and
webhooks go to a small aiohttp receiver on loopback. The last tests run the
whole server: Socket.IO clients, the chat service, the in-server worker.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from teleconsult.accounts import store as accounts
from teleconsult.core.db import create_pool
from teleconsult.core.identity import Role
from teleconsult.core.settings import load_settings
from teleconsult.messaging import message_store, store
from teleconsult.messaging.offline import THREAD_NEWS, OfflineNotifier
from teleconsult.messaging.records import StoredMessage, Thread, ThreadKind
from teleconsult.notifications import store as outbox_store
from teleconsult.notifications.channels import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookChannel,
    verify_signature,
)
from teleconsult.notifications.worker import OutboxWorker
from teleconsult.realtime.presence import LocalPresence, Presence, RedisPresence
from teleconsult.scheduling.records import OutboxItem
from teleconsult.server.app import POOL, create_app
from tests.chatkit import connect, people, socketio_transport
from tests.conftest import settings_env
from tests.dbutil import REDIS_URL, create_database, drop_database
from tests.world import make_tenant, make_user

SECRET = "offline-hook-secret-0123456789"
# Recognisable bytes: the webhook must never carry them.
CIPHERTEXT = b"\x00CIPHERTEXT-MARKER\xff"

ServerFactory = Callable[..., Awaitable[TestServer]]


# --- a webhook receiver ----------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    key: str
    body: bytes
    verified: bool


@dataclass
class Receiver:
    """Records every request and whether its signature verifies; answers ``status``."""

    status: int = 200
    url: str = ""
    deliveries: list[Delivery] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        timestamp = request.headers.get(TIMESTAMP_HEADER, "")
        signature = request.headers.get(SIGNATURE_HEADER, "")
        self.deliveries.append(
            Delivery(
                key=request.headers.get(IDEMPOTENCY_HEADER, ""),
                body=body,
                verified=verify_signature(SECRET, timestamp, body, signature, now=time.time()),
            )
        )
        self.arrived.set()
        return web.Response(status=self.status)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(delivery.body) for delivery in self.deliveries]


@pytest.fixture
async def receiver(aiohttp_server: ServerFactory) -> Receiver:
    hook = Receiver()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    hook.url = str(server.make_url("/hook"))
    return hook


@pytest.fixture
async def webhook(receiver: Receiver) -> AsyncIterator[WebhookChannel]:
    async with aiohttp.ClientSession() as session:
        yield WebhookChannel(receiver.url, SECRET, session, timeout=5.0)


def worker(pool: asyncpg.Pool, channel: WebhookChannel) -> OutboxWorker:
    return OutboxWorker(pool, channel, worker_id="w1", lease=timedelta(seconds=30))


# --- a fresh database with a clinic, its people and their threads -----------------------


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    database = await create_database()
    yield database
    await drop_database(database)


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(dsn, min_size=1, max_size=10)
    yield pool
    await pool.close()


@pytest.fixture
async def presence() -> AsyncIterator[LocalPresence]:
    local = LocalPresence(ttl=60)
    yield local
    await local.close()


async def new_device(pool: asyncpg.Pool, user_id: UUID) -> UUID:
    device = await store.register_device(
        pool,
        user_id=user_id,
        x25519_public=bytes(PrivateKey.generate().public_key),
        ed25519_public=bytes(SigningKey.generate().verify_key),
        label="phone",
    )
    return device.id


@dataclass
class Ward:
    """A doctor, a nurse and a patient, each with a device, in one care-team thread."""

    pool: asyncpg.Pool
    clinic_id: UUID
    doctor: UUID
    nurse: UUID
    patient: UUID
    devices: dict[UUID, UUID]
    thread: Thread

    async def new_thread(self, *members: UUID) -> Thread:
        return await store.create_thread(
            self.pool,
            clinic_id=self.clinic_id,
            kind=ThreadKind.CARE_TEAM,
            created_by=members[0],
            members=[(member, "member") for member in members],
        )

    async def message(
        self, sender: UUID, *, thread: Thread | None = None, client_msg_id: str | None = None
    ) -> StoredMessage:
        """Store a message as the chat service does; the StoredMessage its sinks get."""
        thread_id = (thread or self.thread).id
        msg_id = client_msg_id or secrets.token_urlsafe(12)
        result = await message_store.append_message(
            self.pool,
            thread_id=thread_id,
            client_msg_id=msg_id,
            sender_user_id=sender,
            sender_device_id=self.devices[sender],
            envelope=CIPHERTEXT,
        )
        return StoredMessage(
            thread_id=thread_id,
            seq=result.seq,
            client_msg_id=msg_id,
            sender_user_id=sender,
            sender_device_id=self.devices[sender],
            envelope=CIPHERTEXT,
            created_at=result.created_at,
        )

    async def say(
        self, notifier: OfflineNotifier, sender: UUID, *, thread: Thread | None = None
    ) -> StoredMessage:
        """Store a message and run the sink as the chat service does after the commit."""
        stored = await self.message(sender, thread=thread)
        await notifier.sink(stored, await store.member_ids(self.pool, stored.thread_id))
        return stored

    async def news(self, thread: Thread | None = None) -> list[OutboxItem]:
        return await outbox_store.list_thread_news(self.pool, (thread or self.thread).id)


@pytest.fixture
async def ward(db: asyncpg.Pool) -> Ward:
    clinic = await accounts.insert_clinic(db, name="Offline hook clinic", timezone="UTC")
    doctor, nurse, patient = [
        (await make_user(db, clinic.id, role, tag="offline")).user_id
        for role in (Role.DOCTOR, Role.NURSE, Role.PATIENT)
    ]
    devices = {user: await new_device(db, user) for user in (doctor, nurse, patient)}
    thread = await store.create_thread(
        db,
        clinic_id=clinic.id,
        kind=ThreadKind.CARE_TEAM,
        created_by=doctor,
        members=[(doctor, "lead"), (nurse, "member"), (patient, "patient")],
    )
    return Ward(db, clinic.id, doctor, nurse, patient, devices, thread)


def pending(items: list[OutboxItem]) -> list[OutboxItem]:
    return [item for item in items if item.sent_at is None and item.failed_at is None]


def recipients(items: list[OutboxItem]) -> list[UUID | None]:
    return sorted((item.user_id for item in items), key=str)


# --- who is notified ---------------------------------------------------------------------


async def test_a_burst_of_fifty_messages_to_an_offline_member_makes_one_notification(
    ward: Ward, presence: LocalPresence
) -> None:
    await presence.connected(ward.nurse, "nurse-phone")
    notifier = OfflineNotifier(ward.pool, presence)

    for _ in range(50):
        await ward.say(notifier, ward.doctor)

    [news] = await ward.news()
    assert (news.kind, news.user_id, news.thread_id) == (THREAD_NEWS, ward.patient, ward.thread.id)
    assert (news.appointment_id, news.payload, news.sent_at) == (None, {}, None)


async def test_a_burst_to_an_offline_member_makes_one_webhook(
    ward: Ward, presence: LocalPresence, receiver: Receiver, webhook: WebhookChannel
) -> None:
    await presence.connected(ward.nurse, "nurse-phone")
    notifier = OfflineNotifier(ward.pool, presence)
    for _ in range(50):
        await ward.say(notifier, ward.doctor)

    assert await worker(ward.pool, webhook).run_once() == 1

    assert [body["user_id"] for body in receiver.bodies()] == [str(ward.patient)]


async def test_the_sender_is_not_notified(ward: Ward, presence: LocalPresence) -> None:
    notifier = OfflineNotifier(ward.pool, presence)

    await ward.say(notifier, ward.nurse)

    assert recipients(await ward.news()) == sorted([ward.doctor, ward.patient], key=str)


async def test_a_member_connected_to_another_process_is_not_notified(ward: Ward) -> None:
    # Two processes share presence through Redis: the nurse is connected to "the other one".
    elsewhere = RedisPresence(REDIS_URL, ttl=60)
    here = RedisPresence(REDIS_URL, ttl=60)
    connection = f"nurse-{secrets.token_hex(4)}"
    try:
        await elsewhere.connected(ward.nurse, connection)
        notifier = OfflineNotifier(ward.pool, here)

        await ward.say(notifier, ward.doctor)

        assert recipients(await ward.news()) == [ward.patient]
    finally:
        await elsewhere.disconnected(ward.nurse, connection)
        await elsewhere.close()
        await here.close()


async def test_nobody_is_notified_when_every_other_member_is_connected(
    ward: Ward, presence: LocalPresence
) -> None:
    await presence.connected(ward.nurse, "nurse-phone")
    await presence.connected(ward.patient, "patient-phone")

    await ward.say(OfflineNotifier(ward.pool, presence), ward.doctor)

    assert await ward.news() == []


async def test_each_thread_has_its_own_notification(ward: Ward, presence: LocalPresence) -> None:
    notifier = OfflineNotifier(ward.pool, presence)
    direct = await ward.new_thread(ward.doctor, ward.patient)

    await ward.say(notifier, ward.doctor)
    await ward.say(notifier, ward.doctor, thread=direct)
    await ward.say(notifier, ward.doctor, thread=direct)

    assert recipients(await ward.news(direct)) == [ward.patient]
    assert recipients(await ward.news()) == sorted([ward.nurse, ward.patient], key=str)


async def test_a_member_who_has_left_is_not_notified(ward: Ward, presence: LocalPresence) -> None:
    stored = await ward.message(ward.doctor)
    members = await store.member_ids(ward.pool, ward.thread.id)
    # The sink got the member list just before the nurse left.
    assert await store.remove_member(ward.pool, ward.thread.id, ward.nurse)

    await OfflineNotifier(ward.pool, presence).sink(stored, members)

    assert recipients(await ward.news()) == [ward.patient]


async def test_messages_sent_at_once_by_two_members_make_one_notification_for_the_third(
    ward: Ward, presence: LocalPresence
) -> None:
    notifier = OfflineNotifier(ward.pool, presence)
    await presence.connected(ward.doctor, "doctor-phone")
    await presence.connected(ward.nurse, "nurse-phone")

    await asyncio.gather(
        *(ward.say(notifier, ward.doctor if i % 2 else ward.nurse) for i in range(20))
    )

    assert recipients(await ward.news()) == [ward.patient]


async def test_when_presence_is_unreachable_every_member_but_the_sender_is_notified(
    ward: Ward,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    unreachable: Presence = RedisPresence(f"redis://127.0.0.1:{closed_port}/0", ttl=60)
    try:
        await ward.say(OfflineNotifier(ward.pool, unreachable), ward.doctor)
    finally:
        await unreachable.close()

    assert recipients(await ward.news()) == sorted([ward.nurse, ward.patient], key=str)


# --- the webhook --------------------------------------------------------------------------


async def test_the_webhook_is_signed_and_carries_ids_only(
    ward: Ward, presence: LocalPresence, receiver: Receiver, webhook: WebhookChannel
) -> None:
    await presence.connected(ward.nurse, "nurse-phone")
    await ward.say(OfflineNotifier(ward.pool, presence), ward.doctor)
    [news] = await ward.news()

    await worker(ward.pool, webhook).run_once()

    [delivery] = receiver.deliveries
    assert delivery.verified
    assert delivery.key == f"notif-{news.id}"
    assert json.loads(delivery.body) == {
        "id": f"notif-{news.id}",
        "kind": "thread_news",
        "thread_id": str(ward.thread.id),
        "user_id": str(ward.patient),
        "due_at": news.due_at.isoformat(),
    }
    assert b"CIPHERTEXT-MARKER" not in delivery.body
    assert CIPHERTEXT.hex().encode() not in delivery.body


async def test_a_message_after_the_notification_was_sent_makes_a_new_one(
    ward: Ward, presence: LocalPresence, receiver: Receiver, webhook: WebhookChannel
) -> None:
    await presence.connected(ward.nurse, "nurse-phone")
    notifier = OfflineNotifier(ward.pool, presence)
    await ward.say(notifier, ward.doctor)
    await worker(ward.pool, webhook).run_once()

    await ward.say(notifier, ward.doctor)
    await ward.say(notifier, ward.doctor)

    first, second = await ward.news()
    assert (first.sent_at is not None, second.sent_at) == (True, None)
    assert second.user_id == ward.patient
    await worker(ward.pool, webhook).run_once()
    assert [d.key for d in receiver.deliveries] == [f"notif-{first.id}", f"notif-{second.id}"]


async def test_a_retried_message_already_announced_makes_no_new_notification(
    ward: Ward, presence: LocalPresence, webhook: WebhookChannel
) -> None:
    await presence.connected(ward.nurse, "nurse-phone")
    notifier = OfflineNotifier(ward.pool, presence)
    stored = await ward.say(notifier, ward.doctor)
    await worker(ward.pool, webhook).run_once()

    # The client's retry: the store finds the message, the sink runs again.
    again = await ward.message(ward.doctor, client_msg_id=stored.client_msg_id)
    assert again.seq == stored.seq
    await notifier.sink(again, await store.member_ids(ward.pool, ward.thread.id))

    [news] = await ward.news()
    assert news.sent_at is not None


async def test_a_notification_given_up_on_does_not_block_the_next(
    ward: Ward, presence: LocalPresence, receiver: Receiver, webhook: WebhookChannel
) -> None:
    await presence.connected(ward.nurse, "nurse-phone")
    notifier = OfflineNotifier(ward.pool, presence)
    receiver.status = 400
    await ward.say(notifier, ward.doctor)
    await worker(ward.pool, webhook).run_once()

    await ward.say(notifier, ward.doctor)

    failed, fresh = await ward.news()
    assert failed.failed_at is not None
    assert (fresh.user_id, fresh.sent_at, fresh.failed_at) == (ward.patient, None, None)


async def test_the_outbox_refuses_a_row_without_a_subject(ward: Ward) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match="one_subject"):
        await ward.pool.execute(
            "INSERT INTO notification_outbox (kind, thread_id, due_at) VALUES ($1, $2, now())",
            THREAD_NEWS,
            ward.thread.id,
        )


# --- the whole server ---------------------------------------------------------------------


@pytest.fixture
async def server(
    dsn: str,
    tmp_path: Path,
    receiver: Receiver,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> TestClient[Any, Any]:
    """The app on a fresh database, its in-server worker posting to the receiver."""
    env = settings_env(
        dsn,
        tmp_path,
        NOTIFY_IN_SERVER="true",
        NOTIFY_CHANNEL="webhook",
        NOTIFY_WEBHOOK_URL=receiver.url,
        NOTIFY_WEBHOOK_SECRET=SECRET,
        NOTIFY_POLL_INTERVAL="0.05",
    )
    return await aiohttp_client(create_app(load_settings(env)))


def base_url(client: TestClient[Any, Any]) -> str:
    return str(client.make_url("")).rstrip("/")


async def test_a_chat_message_to_an_offline_patient_reaches_the_webhook_without_content(
    server: TestClient[Any, Any], receiver: Receiver
) -> None:
    tenant = await make_tenant(server.app[POOL], server)
    base = base_url(server)
    async with people(base, tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (doctor, patient):
        thread = await doctor.rest.create_thread([patient.user_id])
        chat = await connect(doctor, socketio_transport(base, doctor))
        await chat.send(thread, b"private words")

        async with asyncio.timeout(20):
            await receiver.arrived.wait()

    [delivery] = receiver.deliveries
    assert delivery.verified
    body = json.loads(delivery.body)
    assert (body["kind"], body["thread_id"], body["user_id"]) == (
        "thread_news",
        str(thread),
        str(patient.user_id),
    )
    assert b"private words" not in delivery.body


async def test_the_hook_is_off_when_chat_offline_hook_is_false(
    dsn: str,
    tmp_path: Path,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> None:
    settings = load_settings(settings_env(dsn, tmp_path, CHAT_OFFLINE_HOOK="false"))
    client = await aiohttp_client(create_app(settings))
    tenant = await make_tenant(client.app[POOL], client)
    base = base_url(client)
    async with people(base, tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (doctor, patient):
        thread = await doctor.rest.create_thread([patient.user_id])
        chat = await connect(doctor, socketio_transport(base, doctor))
        await chat.send(thread, b"hello")

    assert await outbox_store.list_thread_news(client.app[POOL], thread) == []
