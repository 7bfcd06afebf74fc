"""The chat client: send with retry, resume, and exactly-once, in-order delivery.

What an app gets from :class:`ChatClient`:

* ``send`` seals a message once and sends that same envelope (same client
  message id) until the server acknowledges it, across dropped links and
  server restarts; the server stores it once whatever the number of tries.
* ``next_message`` returns decrypted messages of the followed threads, each
  exactly once and in sequence order per thread: live pushes are taken when
  they are the next seq, anything else is fetched with ``resume`` (after a
  reconnect, or on a gap), and a seq already delivered is dropped.
* The last seq per thread is ``positions()``: persist it, and pass it back as
  ``follow(thread, after=...)`` after an app restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import aiohttp

from teleconsult.client.crypto import DeviceKeys, new_client_msg_id, open_envelope, seal
from teleconsult.client.rest import ApiError, PeerDevice, RestClient
from teleconsult.client.transport import Transport, TransportClosed
from teleconsult.core.backoff import Backoff
from teleconsult.messaging.envelope import (
    Envelope,
    EnvelopeError,
    EnvelopeErrorCode,
    from_json,
    from_msgpack,
    to_json,
    to_msgpack,
)

logger = logging.getLogger(__name__)

# Error codes worth sending again (the server or the link was the problem).
RETRYABLE = frozenset({"internal_error", "unavailable", "rate_limited"})


class ChatError(Exception):
    """The server refused a request for good; ``code`` is its stable error code."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('detail')}")
        self.code = str(error.get("code"))
        self.error = error


@dataclass(frozen=True)
class Sent:
    thread_id: UUID
    seq: int
    client_msg_id: str
    duplicate: bool
    attempts: int


@dataclass(frozen=True)
class Delivered:
    thread_id: UUID
    seq: int
    client_msg_id: str
    sender_user_id: UUID
    sender_device_id: UUID
    plaintext: bytes | None
    error: str | None = None  # an envelope code when it could not be opened


class ChatClient:
    def __init__(
        self,
        transport: Transport,
        rest: RestClient,
        *,
        keys: DeviceKeys,
        device_id: UUID,
        encoding: str = "msgpack",
        call_timeout: float = 10.0,
        device_ttl: float = 30.0,
    ) -> None:
        self._transport = transport
        self._rest = rest
        self._keys = keys
        self._device_id = device_id
        self._encoding = encoding
        self._timeout = call_timeout
        self._last: dict[UUID, int] = {}
        self._held: dict[UUID, dict[int, dict[str, Any]]] = {}
        self._signers: dict[UUID, bytes] = {}
        # Whom to seal for, per thread: a device added since is missed for at
        # most this long (and a removed one is refused by the server: refetch).
        self._device_ttl = device_ttl
        self._device_cache: dict[UUID, tuple[float, list[PeerDevice]]] = {}
        self._locks: dict[UUID, asyncio.Lock] = {}
        self._inbox: asyncio.Queue[Delivered] = asyncio.Queue()
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=10_000)
        self._tasks: set[asyncio.Task[None]] = set()
        # Pushed messages wait here so the transport's reader never waits on us.
        self._incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._started = False

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        self._started = True
        self._spawn(self._process())
        await self._transport.start(self._on_event, self._on_connected)

    async def close(self) -> None:
        await self._transport.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def follow(self, thread_id: UUID, *, after: int = 0) -> None:
        """Deliver this thread's messages after ``after`` (kept across reconnects).

        Followed while connected, the thread is caught up at once."""
        if thread_id in self._last:
            return
        self._last[thread_id] = after
        if self._started:
            self._spawn(self._catch_up([thread_id]))

    def positions(self) -> dict[UUID, int]:
        return dict(self._last)

    async def _on_connected(self) -> None:
        # Catch up on every followed thread in the background: the transport's
        # connect callback must not wait on calls that need the connection.
        self._spawn(self._catch_up(list(self._last)))

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("a chat client task failed", exc_info=task.exception())

    # --- sending ----------------------------------------------------------------------

    async def _devices(self, thread_id: UUID, *, fresh: bool = False) -> list[PeerDevice]:
        """The thread's current devices, cached for ``device_ttl`` seconds; a weak
        link or a restarting server is waited out."""
        loop = asyncio.get_running_loop()
        cached = self._device_cache.get(thread_id)
        if cached is not None and not fresh and loop.time() - cached[0] < self._device_ttl:
            return cached[1]
        backoff = Backoff()
        while True:
            try:
                devices = await self._rest.thread_devices(thread_id)
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(backoff.delay())
                continue
            except ApiError as exc:
                if exc.status < 500 and exc.status != 429:
                    raise
                await asyncio.sleep(backoff.delay())
                continue
            self._remember(devices)
            self._device_cache[thread_id] = (loop.time(), devices)
            return devices

    async def seal(
        self, thread_id: UUID, plaintext: bytes, *, client_msg_id: str | None = None
    ) -> Envelope:
        devices = await self._devices(thread_id)
        return seal(
            plaintext=plaintext,
            thread_id=thread_id,
            sender=self._keys,
            sender_device_id=self._device_id,
            recipients={d.id: d.x25519_public for d in devices},
            client_msg_id=client_msg_id or new_client_msg_id(),
        )

    async def send(
        self,
        thread_id: UUID,
        plaintext: bytes,
        *,
        client_msg_id: str | None = None,
        deadline: float | None = None,
    ) -> Sent:
        """Seal once and send until acknowledged; ChatError for a permanent refusal.

        If the thread's devices changed since they were cached (a device was
        revoked, a member left: ``not_a_recipient``), nothing was stored: the
        message is sealed again for the current devices, under the same id.
        """
        env = await self.seal(thread_id, plaintext, client_msg_id=client_msg_id)
        try:
            return await self.send_envelope(env, deadline=deadline)
        except ChatError as exc:
            if exc.code != "not_a_recipient":
                raise
        await self._devices(thread_id, fresh=True)
        env = await self.seal(thread_id, plaintext, client_msg_id=env.client_msg_id)
        return await self.send_envelope(env, deadline=deadline)

    async def send_envelope(self, env: Envelope, *, deadline: float | None = None) -> Sent:
        payload = to_msgpack(env) if self._encoding == "msgpack" else to_json(env)
        data = {"thread_id": str(env.thread_id), "envelope": payload}
        ack, attempts = await self._call_until_answered("send", data, deadline=deadline)
        # The server does not echo a message to the connection that sent it (bytes
        # matter on 2G); it joins this device's ordered stream here instead.
        if env.thread_id in self._last and self._rest.user_id is not None:
            own = {
                "thread_id": str(env.thread_id),
                "seq": ack["seq"],
                "client_msg_id": env.client_msg_id,
                "sender_user_id": str(self._rest.user_id),
                "sender_device_id": str(self._device_id),
                "envelope": to_msgpack(env),
            }
            self._incoming.put_nowait(own)
        return Sent(env.thread_id, ack["seq"], env.client_msg_id, ack["duplicate"], attempts)

    async def _call_until_answered(
        self, event: str, data: Any, *, deadline: float | None
    ) -> tuple[dict[str, Any], int]:
        loop = asyncio.get_running_loop()
        backoff = Backoff()
        attempts = 0
        while True:
            if deadline is not None and loop.time() > deadline:
                raise TimeoutError(f"{event} was not acknowledged in time")
            attempts += 1
            try:
                await asyncio.wait_for(self._transport.connected.wait(), self._timeout)
                ack = await self._transport.call(event, data, within=self._timeout)
            except (TransportClosed, TimeoutError):
                await asyncio.sleep(backoff.delay())
                continue
            if ack.get("ok"):
                return ack, attempts
            error = ack.get("error") or {}
            if error.get("code") in RETRYABLE:
                await asyncio.sleep(max(backoff.delay(), float(error.get("retry_after", 0))))
                continue
            raise ChatError(error)

    async def call(self, event: str, data: Any) -> dict[str, Any]:
        """One request with retries on the link; the ok ack, or ChatError."""
        ack, _ = await self._call_until_answered(event, data, deadline=None)
        return ack

    async def mark(
        self, thread_id: UUID, *, delivered: int | None = None, read: int | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"thread_id": str(thread_id)}
        if delivered is not None:
            body["delivered_seq"] = delivered
        if read is not None:
            body["read_seq"] = read
        return await self.call("receipt", body)

    # --- receiving --------------------------------------------------------------------

    async def next_message(self, within: float | None = None) -> Delivered:
        return await asyncio.wait_for(self._inbox.get(), within)

    async def _on_event(self, event: str, data: Any) -> None:
        if event == "message" and isinstance(data, dict):
            self._incoming.put_nowait(data)
            return
        if event == "sync":
            # The server may have missed pushes for us (its bus was down): resume.
            self._spawn(self._catch_up(list(self._last)))
        with contextlib.suppress(asyncio.QueueFull):
            self.events.put_nowait((event, data))

    async def _process(self) -> None:
        while True:
            data = await self._incoming.get()
            try:
                await self._take_live(data)
            except Exception:
                logger.exception("a pushed message could not be handled")

    async def _take_live(self, data: dict[str, Any]) -> None:
        try:
            thread_id, seq = UUID(data["thread_id"]), int(data["seq"])
        except (KeyError, ValueError, TypeError):
            logger.warning("dropped a malformed pushed message")
            return
        if thread_id not in self._last:
            return  # not followed
        last = self._last[thread_id]
        if seq <= last:
            return
        self._held.setdefault(thread_id, {})[seq] = data
        if seq == last + 1:
            await self._drain_held(thread_id)
        else:
            self._spawn(self._catch_up([thread_id]))

    async def _drain_held(self, thread_id: UUID) -> None:
        async with self._lock(thread_id):
            held = self._held.get(thread_id, {})
            while self._last[thread_id] + 1 in held:
                await self._deliver(held.pop(self._last[thread_id] + 1))
            for seq in [s for s in held if s <= self._last[thread_id]]:
                del held[seq]

    def _lock(self, thread_id: UUID) -> asyncio.Lock:
        return self._locks.setdefault(thread_id, asyncio.Lock())

    async def _catch_up(self, thread_ids: Iterable[UUID]) -> None:
        """Fetch what is missing after each thread's last delivered seq, until complete."""
        pending = list(thread_ids)
        while pending:
            async with contextlib.AsyncExitStack() as stack:
                for thread_id in sorted(pending):
                    await stack.enter_async_context(self._lock(thread_id))
                request = {"threads": {str(t): self._last[t] for t in pending}, "limit": 200}
                try:
                    ack = await self.call("resume", request)
                except ChatError:
                    logger.warning("resume was refused", exc_info=True)
                    return
                still: list[UUID] = []
                for thread_id in pending:
                    result = ack["threads"].get(str(thread_id), {})
                    if not result.get("ok"):
                        logger.warning("resume of %s refused: %s", thread_id, result.get("error"))
                        continue
                    for message in result["messages"]:
                        if message["seq"] == self._last[thread_id] + 1:
                            await self._deliver(message)
                    if not result["complete"]:
                        still.append(thread_id)
            for thread_id in pending:
                await self._drain_held(thread_id)
            pending = still

    async def _deliver(self, data: dict[str, Any]) -> None:
        thread_id, seq = UUID(data["thread_id"]), int(data["seq"])
        raw = data["envelope"]
        plaintext: bytes | None = None
        error: str | None = None
        try:
            env = from_msgpack(raw) if isinstance(raw, bytes) else from_json(raw)
            signer = await self._signer(thread_id, env.sender_device_id)
            plaintext = open_envelope(
                env, me=self._keys, my_device_id=self._device_id, sender_signing_key=signer
            )
        except EnvelopeError as exc:
            error = str(exc.code)
        await self._inbox.put(
            Delivered(
                thread_id=thread_id,
                seq=seq,
                client_msg_id=str(data["client_msg_id"]),
                sender_user_id=UUID(data["sender_user_id"]),
                sender_device_id=UUID(data["sender_device_id"]),
                plaintext=plaintext,
                error=error,
            )
        )
        # Only now: a failure above leaves the seq to be fetched again.
        self._last[thread_id] = seq

    async def _signer(self, thread_id: UUID, device_id: UUID) -> bytes:
        if device_id not in self._signers:
            await self._devices(thread_id, fresh=True)
        key = self._signers.get(device_id)
        if key is None:
            # A revoked device's key is no longer listed; the message cannot be verified.
            raise EnvelopeError(EnvelopeErrorCode.BAD_SIGNATURE, "unknown sender device")
        return key

    def _remember(self, devices: Iterable[PeerDevice]) -> None:
        for device in devices:
            self._signers[device.id] = device.ed25519_public
