"""Chat between a browser (room.html's chat panel, static/js/chat/) and a user of the
Python client library (teleconsult.client), both ways, end to end encrypted.

The server never sees plaintext: canary strings sent both ways are absent from the stored
envelopes and from the server's log. The browser also falls back to long-polling when
WebSocket is blocked, keeps what it could not send marked "unsent" and sends it once the
network is back, and shows the history again after a reload.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import Page, expect

from teleconsult.client.chat import ChatClient
from teleconsult.client.crypto import DeviceKeys
from teleconsult.client.rest import RestClient
from teleconsult.client.transport import SocketIoTransport
from tests.browser.conftest import Clinic, NewPage
from tests.browser.roomkit import SERVER_ENV, book_now
from tests.world import PASSWORD

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]
__all__ = ["SERVER_ENV"]


@dataclass
class PythonUser:
    rest: RestClient
    chat: ChatClient
    thread_id: UUID
    appointment: dict[str, Any]


@pytest_asyncio.fixture(loop_scope="module")
async def doctor_in_python(clinic: Clinic) -> AsyncIterator[PythonUser]:
    """The doctor, on the Python client, in the thread of a fresh appointment."""
    appointment = await book_now(clinic, clinic["patient"], clinic["doctor"])
    rest = RestClient(clinic.base_url)
    await rest.login(clinic["doctor"].email, PASSWORD)
    keys = DeviceKeys.generate()
    device_id = await rest.register_device(keys, "doctor's script")

    async def token() -> str:
        return str(rest.access_token)

    transport = SocketIoTransport(clinic.base_url, token)
    chat = ChatClient(transport, rest, keys=keys, device_id=device_id, device_ttl=0.0)
    await chat.start()
    thread = await rest.call("POST", f"/api/v1/appointments/{appointment['id']}/thread")
    thread_id = UUID(thread["id"])
    chat.follow(thread_id)
    try:
        yield PythonUser(rest, chat, thread_id, appointment)
    finally:
        await chat.close()
        await rest.close()


HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "content-encoding",
    "te",
    "trailer",
    "proxy-connection",
}


@pytest_asyncio.fixture(loop_scope="module")
async def no_websocket_proxy(clinic: Clinic) -> AsyncIterator[str]:
    """An HTTP proxy in front of the server that refuses every WebSocket upgrade, as some
    corporate proxies and mobile gateways do. Its origin differs from the server's only by
    port, so the browser's cookies are the same."""
    upstream = aiohttp.ClientSession(
        clinic.base_url, timeout=aiohttp.ClientTimeout(total=120), auto_decompress=True
    )

    async def forward(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            raise web.HTTPForbidden(text="WebSocket is blocked here")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with upstream.request(
            request.method,
            request.rel_url,
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
        ) as resp:
            body = await resp.read()
            out = web.Response(status=resp.status, body=body)
            for name, value in resp.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    out.headers.add(name, value)
            return out

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, shutdown_timeout=1.0)  # long-polls in flight end there
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        await upstream.close()


async def open_room(new_page: NewPage, appointment_id: str, *, origin: str = "") -> Page:
    page = await new_page("patient")
    await page.goto(f"{origin}/room.html?appointment={appointment_id}")
    await expect(page.locator("#chat .chat-form")).to_be_visible()
    return page


async def browser_says(page: Page, text: str) -> None:
    await page.locator("#chat textarea").fill(text)
    await page.locator("#chat button[type=submit]").click()


async def stored_envelopes(database_url: str, thread_id: UUID) -> list[bytes]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT envelope FROM messages WHERE thread_id = $1", thread_id)
        return [bytes(r["envelope"]) for r in rows]
    finally:
        await conn.close()


def canary() -> str:
    return f"canary-{secrets.token_hex(8)}"


async def test_browser_and_python_client_talk_both_ways_and_the_server_sees_no_plaintext(
    clinic: Clinic, doctor_in_python: PythonUser, new_page: NewPage, database_url: str
) -> None:
    doctor = doctor_in_python
    page = await open_room(new_page, doctor.appointment["id"])
    from_browser, from_python = canary(), canary()

    await browser_says(page, f"Bonjour docteur — {from_browser} — ça va mieux ✓")
    got = await doctor.chat.next_message(within=20)
    assert got.error is None
    assert got.plaintext == f"Bonjour docteur — {from_browser} — ça va mieux ✓".encode()
    assert got.thread_id == doctor.thread_id

    await doctor.chat.send(doctor.thread_id, f"Bien reçu: {from_python}".encode())
    await expect(page.locator("#chat .chat-history")).to_contain_text(f"Bien reçu: {from_python}")
    assert await page.locator("#chat .chat-error").count() == 0
    assert await page.evaluate("() => window.teleconsultRoom.chat.encoding") == "msgpack"

    envelopes = await stored_envelopes(database_url, doctor.thread_id)
    assert len(envelopes) == 2
    for secret in (from_browser, from_python):
        assert all(secret.encode() not in env for env in envelopes)
        assert secret not in clinic.server.log_text()

    # A reload: the device keys come back from IndexedDB and the history from the server.
    await page.reload()
    await expect(page.locator("#chat .chat-history")).to_contain_text(from_browser)
    await expect(page.locator("#chat .chat-history")).to_contain_text(from_python)


async def test_what_is_typed_offline_stays_unsent_and_goes_when_the_network_is_back(
    clinic: Clinic, doctor_in_python: PythonUser, new_page: NewPage
) -> None:
    doctor = doctor_in_python
    page = await open_room(new_page, doctor.appointment["id"])
    await browser_says(page, "first, online")
    assert (await doctor.chat.next_message(within=20)).plaintext == b"first, online"

    await page.context.set_offline(True)
    await page.evaluate("() => window.teleconsultRoom.chat.socket.io.engine.close()")
    await browser_says(page, "typed while offline")
    unsent = page.locator("#chat .chat-unsent li")
    await expect(unsent).to_contain_text("typed while offline")
    await expect(unsent).to_contain_text("unsent")
    await page.context.set_offline(False)
    got = await doctor.chat.next_message(within=30)
    assert got.plaintext == b"typed while offline"
    await expect(unsent).to_have_count(0)
    await expect(page.locator("#chat .chat-history")).to_contain_text("typed while offline")


async def test_the_browser_falls_back_to_long_polling_when_websocket_is_blocked(
    clinic: Clinic, doctor_in_python: PythonUser, new_page: NewPage, no_websocket_proxy: str
) -> None:
    doctor = doctor_in_python
    page = await open_room(new_page, doctor.appointment["id"], origin=no_websocket_proxy)
    await browser_says(page, "over long-polling")
    got = await doctor.chat.next_message(within=30)
    assert got.plaintext == b"over long-polling"
    transport = await page.evaluate(
        "() => window.teleconsultRoom.chat.socket.io.engine.transport.name"
    )
    assert transport == "polling"
    # Binary attachments would travel base64-encoded on long-polling: JSON is cheaper there.
    assert await page.evaluate("() => window.teleconsultRoom.chat.encoding") == "json"
    await doctor.chat.send(doctor.thread_id, "réponse par polling".encode())
    await expect(page.locator("#chat .chat-history")).to_contain_text("réponse par polling")


async def test_a_device_revoked_from_my_devices_is_replaced_and_the_message_still_goes(
    clinic: Clinic, doctor_in_python: PythonUser, new_page: NewPage
) -> None:
    doctor = doctor_in_python
    page = await open_room(new_page, doctor.appointment["id"])
    await browser_says(page, "before the revocation")
    first = await doctor.chat.next_message(within=20)
    assert first.plaintext == b"before the revocation"

    # "My devices" (here through the API, as the patient): this browser's device goes.
    patient = RestClient(clinic.base_url)
    try:
        await patient.login(clinic["patient"].email, PASSWORD)
        await patient.call("DELETE", f"/api/v1/devices/{first.sender_device_id}")
    finally:
        await patient.close()

    await browser_says(page, "after the revocation")
    second = await doctor.chat.next_message(within=30)
    assert second.plaintext == b"after the revocation"
    assert second.sender_device_id != first.sender_device_id  # a new device, registered
    await expect(page.locator("#chat .chat-unsent li")).to_have_count(0)
