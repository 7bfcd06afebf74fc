"""Chat test kit: signed-in people with a device and a ChatClient, over a real server.

Everything goes through the project's own client library and real connections
(HTTP, Socket.IO, MQTT); nothing here reaches into the server's objects.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from teleconsult.client.chat import ChatClient, Delivered
from teleconsult.client.crypto import DeviceKeys
from teleconsult.client.rest import RestClient
from teleconsult.client.transport import SocketIoTransport, Transport
from tests.world import PASSWORD, Account


@dataclass
class Person:
    """One user on one device: REST for set-up, a ChatClient for live chat."""

    account: Account
    rest: RestClient
    keys: DeviceKeys
    device_id: UUID
    chat: ChatClient | None = None

    @property
    def user_id(self) -> UUID:
        return self.account.user_id

    async def close(self) -> None:
        if self.chat is not None:
            await self.chat.close()
        await self.rest.close()


async def person(base_url: str, account: Account) -> Person:
    rest = RestClient(base_url)
    await rest.login(account.email, PASSWORD)
    keys = DeviceKeys.generate()
    device_id = await rest.register_device(keys, "test phone")
    return Person(account=account, rest=rest, keys=keys, device_id=device_id)


def socketio_transport(
    base_url: str,
    who: Person,
    *,
    transports: tuple[str, ...] = ("websocket",),
    encoding: str = "msgpack",
) -> SocketIoTransport:
    async def token() -> str:
        return who.rest.access_token

    return SocketIoTransport(base_url, token, transports=transports, encoding=encoding)


async def connect(
    who: Person, transport: Transport, *, encoding: str = "msgpack", within: float = 10.0
) -> ChatClient:
    chat = ChatClient(
        transport,
        who.rest,
        keys=who.keys,
        device_id=who.device_id,
        encoding=encoding,
        call_timeout=within,
    )
    await chat.start()
    who.chat = chat
    return chat


async def receive(chat: ChatClient, count: int, *, within: float = 20.0) -> list[Delivered]:
    """The next ``count`` deliveries, or fail naming how many came."""
    got: list[Delivered] = []
    with contextlib.suppress(asyncio.TimeoutError):
        async with asyncio.timeout(within):
            while len(got) < count:
                got.append(await chat.next_message())
    assert len(got) == count, f"received {len(got)} of {count}: {[d.seq for d in got]}"
    return got


async def next_event(chat: ChatClient, name: str, *, within: float = 10.0) -> Any:
    """The next pushed event called ``name`` (others are skipped)."""
    async with asyncio.timeout(within):
        while True:
            event, data = await chat.events.get()
            if event == name:
                return data


@contextlib.asynccontextmanager
async def people(base_url: str, *accounts: Account) -> AsyncIterator[list[Person]]:
    found = [await person(base_url, a) for a in accounts]
    try:
        yield found
    finally:
        for p in found:
            await p.close()
