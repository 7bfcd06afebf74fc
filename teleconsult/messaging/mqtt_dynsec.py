"""MQTT accounts the server provisions on Mosquitto, through its dynamic-security plugin.

With ``MQTT_PROVISIONING=dynsec`` the server's bridge account (``MQTT_URL``'s
user, which the operator made a dynamic-security admin, docs/mqtt.md) also
manages devices' MQTT accounts by publishing JSON commands to
``$CONTROL/dynamic-security/v1``:

* one MQTT account per registered device: username the device id, a random
  password made by the server and handed to the device's owner once
  (``POST /api/v1/devices/{device_id}/mqtt``; asking again sets a new one);
* one group per user, ``tc-u-<user id>``, holding the user's devices, with one
  role, ``tc-u-<user id>``, that may publish to the user's ``req`` and
  subscribe to and receive from their ``ack`` and ``inbox`` and the bridges'
  announcement ``tc/srv/up``, nothing else;
* the bridge's own role, ``teleconsult-bridge``: read every ``req`` (shared
  subscription too), write every ``ack`` and ``inbox``, and ``tc/srv/up``;
* default access: nothing is published, received or subscribed without a role
  allowing it.

A revocation of all of a user's sessions (disabling, a password change) disables
every MQTT account of theirs: Mosquitto disconnects them at once and refuses
their password until the owner asks for credentials again, signed in. A
revoked (deleted) device's account is disabled the same way, for good: a
revoked device gets no new credentials. Commands
go one at a time over the plugin's own connection; each answer is matched by
``correlationData``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import aiomqtt

from teleconsult.core.backoff import Backoff
from teleconsult.core.errors import InfrastructureError
from teleconsult.core.revocation import Revocation
from teleconsult.messaging import mqtt_wire

logger = logging.getLogger(__name__)

CONTROL = "$CONTROL/dynamic-security/v1"
RESPONSE = CONTROL + "/response"
BRIDGE_ROLE = "teleconsult-bridge"
COMMAND_WITHIN = 10.0


@dataclass(frozen=True)
class MqttCredentials:
    """What a device connects with: its MQTT username and password."""

    username: str
    password: str = field(repr=False)


def user_group(user_id: UUID) -> str:
    return f"tc-u-{user_id}"


def user_acls(user_id: UUID) -> list[dict[str, Any]]:
    """The role of one user's devices: their own three topics and ``tc/srv/up``, nothing else."""
    req, ack, inbox = (
        mqtt_wire.request_topic(user_id),
        mqtt_wire.ack_topic(user_id),
        mqtt_wire.inbox_topic(user_id),
    )
    return [
        {"acltype": "publishClientSend", "topic": req, "allow": True},
        {"acltype": "subscribeLiteral", "topic": ack, "allow": True},
        {"acltype": "subscribeLiteral", "topic": inbox, "allow": True},
        {"acltype": "publishClientReceive", "topic": ack, "allow": True},
        {"acltype": "publishClientReceive", "topic": inbox, "allow": True},
        # The bridges' announcements (docs/mqtt.md, "Restarts: nothing waits out its timeout").
        {"acltype": "subscribeLiteral", "topic": mqtt_wire.SERVER_UP_TOPIC, "allow": True},
        {"acltype": "publishClientReceive", "topic": mqtt_wire.SERVER_UP_TOPIC, "allow": True},
    ]


def bridge_acls(shared_group: str) -> list[dict[str, Any]]:
    acls = [
        {"acltype": "subscribePattern", "topic": mqtt_wire.request_filter(), "allow": True},
        {"acltype": "publishClientReceive", "topic": mqtt_wire.request_filter(), "allow": True},
        {"acltype": "publishClientSend", "topic": "tc/u/+/ack", "allow": True},
        {"acltype": "publishClientSend", "topic": "tc/u/+/inbox", "allow": True},
        {"acltype": "publishClientSend", "topic": mqtt_wire.SERVER_UP_TOPIC, "allow": True},
    ]
    if shared_group:
        shared = mqtt_wire.request_filter(shared_group)
        acls.append({"acltype": "subscribePattern", "topic": shared, "allow": True})
    return acls


class DynsecError(InfrastructureError):
    """The plugin refused a command, or did not answer."""


class Dynsec:
    """Commands to Mosquitto's dynamic-security plugin over one connection; ``start``, ``close``."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None,
        password: str | None,
        tls: bool = False,
    ) -> None:
        self._host, self._port, self._tls = host, port, tls
        self._username, self._password = username, password
        self._client: aiomqtt.Client | None = None
        self._runner: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._lock = asyncio.Lock()
        self._waiting: dict[str, asyncio.Future[list[dict[str, Any]]]] = {}

    async def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name="mqtt-dynsec")
        try:
            async with asyncio.timeout(COMMAND_WITHIN):
                await self._ready.wait()
        except TimeoutError:
            raise DynsecError("the dynamic-security plugin is not reachable") from None

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    async def _run(self) -> None:
        backoff = Backoff(first=0.2, most=15.0)
        while True:
            try:
                async with aiomqtt.Client(
                    self._host,
                    self._port,
                    username=self._username,
                    password=self._password,
                    identifier=f"tc-dynsec-{secrets.token_hex(6)}",
                    tls_context=ssl.create_default_context() if self._tls else None,
                ) as client:
                    await client.subscribe(RESPONSE, qos=1)
                    self._client = client
                    self._ready.set()
                    backoff.reset()
                    async for message in client.messages:
                        self._take(message.payload)
            except aiomqtt.MqttError as exc:
                logger.warning("MQTT provisioning lost the broker (%s); reconnecting", exc)
            finally:
                self._client = None
                self._ready.clear()
                for waiter in self._waiting.values():
                    if not waiter.done():
                        waiter.set_exception(DynsecError("the broker connection ended"))
            await asyncio.sleep(backoff.delay())

    def _take(self, payload: Any) -> None:
        try:
            answer = json.loads(payload)
            responses = answer["responses"]
            key = responses[0].get("correlationData") if responses else None
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            logger.warning("an unreadable answer from the dynamic-security plugin")
            return
        waiter = self._waiting.get(str(key))
        if waiter is not None and not waiter.done():
            waiter.set_result(responses)

    async def run(self, *commands: dict[str, Any]) -> list[dict[str, Any]]:
        """Send ``commands`` together; each one's response (``error`` set when refused)."""
        key = secrets.token_hex(8)
        sent = [dict(c, correlationData=key) for c in commands]
        async with self._lock:
            try:
                async with asyncio.timeout(COMMAND_WITHIN):
                    await self._ready.wait()
                    client = self._client
                    assert client is not None
                    waiter: asyncio.Future[list[dict[str, Any]]] = (
                        asyncio.get_running_loop().create_future()
                    )
                    self._waiting[key] = waiter
                    await client.publish(CONTROL, json.dumps({"commands": sent}), qos=1)
                    responses = await waiter
                    return responses
            except (TimeoutError, aiomqtt.MqttError) as exc:
                raise DynsecError(f"no answer from the dynamic-security plugin ({exc})") from None
            finally:
                left = self._waiting.pop(key, None)
                if left is not None and not left.done():
                    left.cancel()
                elif left is not None and not left.cancelled():
                    left.exception()  # seen: the publish failed first

    async def must(self, *commands: dict[str, Any], tolerate: Sequence[str] = ()) -> None:
        """Run ``commands``; DynsecError unless each succeeded or failed with a tolerated text."""
        for command, response in zip(commands, await self.run(*commands), strict=False):
            error = response.get("error")
            if error and not any(t in str(error) for t in tolerate):
                raise DynsecError(f"{command['command']}: {error}")


_EXISTS = ("already exists", "already in")


class MqttAccounts:
    """The devices' MQTT accounts on a Mosquitto with dynamic security (module docstring)."""

    def __init__(self, dynsec: Dynsec, *, bridge_username: str, shared_group: str) -> None:
        self._dynsec = dynsec
        self._bridge = bridge_username
        self._shared_group = shared_group

    async def prepare(self) -> None:
        """Default deny, and the bridge's role: before the bridge subscribes."""
        d = self._dynsec
        await d.must(
            {
                "command": "setDefaultACLAccess",
                "acls": [
                    {"acltype": "publishClientSend", "allow": False},
                    {"acltype": "publishClientReceive", "allow": False},
                    {"acltype": "subscribe", "allow": False},
                    {"acltype": "unsubscribe", "allow": True},
                ],
            }
        )
        await d.must({"command": "createRole", "rolename": BRIDGE_ROLE}, tolerate=_EXISTS)
        await d.must(
            *(
                {"command": "addRoleACL", "rolename": BRIDGE_ROLE, **acl}
                for acl in bridge_acls(self._shared_group)
            ),
            tolerate=_EXISTS,
        )
        if BRIDGE_ROLE in await self._roles_of(self._bridge):
            return
        # Mosquitto disconnects an account's clients when its roles change, this
        # connection among them: the answer may be lost, so look again after.
        with contextlib.suppress(DynsecError):
            await d.must(
                {"command": "addClientRole", "username": self._bridge, "rolename": BRIDGE_ROLE}
            )
        if BRIDGE_ROLE not in await self._roles_of(self._bridge):
            raise DynsecError(f"could not give {self._bridge} the role {BRIDGE_ROLE}")

    async def _roles_of(self, username: str) -> list[str]:
        (answer,) = await self._dynsec.run({"command": "getClient", "username": username})
        if answer.get("error"):
            raise DynsecError(f"getClient {username}: {answer['error']}")
        roles = (answer.get("data") or {}).get("client", {}).get("roles", [])
        return [str(r.get("rolename")) for r in roles if isinstance(r, dict)]

    async def provision(self, user_id: UUID, device_id: UUID) -> MqttCredentials:
        """A new password for the device's account (made, and enabled, if need be)."""
        d, group = self._dynsec, user_group(user_id)
        await d.must(
            {"command": "createRole", "rolename": group},
            {"command": "createGroup", "groupname": group},
            tolerate=_EXISTS,
        )
        await d.must(
            *({"command": "addRoleACL", "rolename": group, **acl} for acl in user_acls(user_id)),
            {"command": "addGroupRole", "groupname": group, "rolename": group},
            tolerate=_EXISTS,
        )
        username, password = str(device_id), secrets.token_urlsafe(24)
        await d.must(
            {"command": "createClient", "username": username, "password": password},
            tolerate=_EXISTS,
        )
        await d.must(
            {"command": "setClientPassword", "username": username, "password": password},
            {"command": "addGroupClient", "groupname": group, "username": username},
            {"command": "enableClient", "username": username},
            tolerate=_EXISTS,
        )
        return MqttCredentials(username, password)

    async def disable_device(self, device_id: UUID) -> None:
        """Kick the device's connections and refuse its password (a revoked device)."""
        await self._dynsec.must(
            {"command": "disableClient", "username": str(device_id)}, tolerate=("not found",)
        )

    async def revoke(self, revocation: Revocation) -> None:
        """A RevocationHandler: every session of the user ended, so do their MQTT accounts;
        a device revoked, so does its account."""
        if revocation.device_id is not None:
            await self.disable_device(revocation.device_id)
            logger.info("disabled the MQTT account of a revoked device")
            return
        if revocation.session_id is not None:
            return  # one login session: MQTT accounts belong to devices, not sessions
        (answer,) = await self._dynsec.run(
            {"command": "getGroup", "groupname": user_group(revocation.user_id)}
        )
        clients = (answer.get("data") or {}).get("group", {}).get("clients", [])
        names = [c["username"] for c in clients if isinstance(c, dict) and "username" in c]
        if names:
            await self._dynsec.must(
                *({"command": "disableClient", "username": n} for n in names),
                tolerate=("not found",),
            )
            logger.info(
                "disabled %s MQTT account(s) of a revoked user (%s)", len(names), revocation.reason
            )
