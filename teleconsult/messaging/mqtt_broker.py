"""The embedded MQTT broker (amqtt) for one-process installs, with the server's own access rules.

Started when ``MQTT_URL`` is not set. A device connects with its user id as
the MQTT username, a current access token as the password, and a client id
that starts with its user id; it may publish only to its own ``req`` topic
(its Last Will too, not retained: amqtt sends a will without the topic
check) and subscribe to (and receive from) only its own ``ack`` and ``inbox``. The
server's bridge connects as ``bridge_username`` with a secret made at start-up
that never leaves the process. :class:`BrokerAccess` holds those rules as
plain code; the two amqtt plugins below only call it.

amqtt speaks MQTT 3.1.1 without shared subscriptions: one server process per
embedded broker (several processes need an external broker, docs/mqtt.md).
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from amqtt.broker import Broker
from amqtt.errors import BrokerError
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

from teleconsult.core.errors import ClientError, ConfigError
from teleconsult.core.identity import Principal
from teleconsult.messaging import mqtt_wire

logger = logging.getLogger(__name__)

Authenticator = Callable[[str], Awaitable[Principal]]
BRIDGE_USERNAME = "teleconsult-bridge"


@dataclass(frozen=True)
class BrokerAccess:
    """Who may connect to the embedded broker, and which topics each may use."""

    authenticate: Authenticator
    bridge_username: str = BRIDGE_USERNAME
    bridge_password: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)

    async def may_connect(
        self,
        username: str | None,
        password: str | None,
        client_id: str,
        *,
        will_topic: str | None = None,
        will_retain: bool = False,
    ) -> bool:
        """``will_topic``: the Last Will's topic when the CONNECT has one."""
        if not username or not password:
            return False
        if username == self.bridge_username:
            return will_topic is None and hmac.compare_digest(
                password.encode(), self.bridge_password.encode()
            )
        user_id = _user_id(username)
        # The client id is bound to the user, so nobody can take over (and read
        # the queued inbox of) another user's persistent session.
        if user_id is None or not client_id.startswith(username):
            return False
        # amqtt publishes a will without asking the topic plugin: a will on
        # someone else's ``req`` would be a request made as them.
        if will_topic is not None and (
            will_retain or not self.may(username, "publish", will_topic)
        ):
            return False
        try:
            principal = await self.authenticate(password)
        except ClientError:
            return False
        return principal.user_id == user_id

    def may(self, username: str | None, action: str, topic: str) -> bool:
        """``action``: publish, subscribe or receive (amqtt's names)."""
        if not username or not topic:
            return False
        if username == self.bridge_username:
            if action == "publish":
                return any(mqtt_wire.user_of(topic, kind) for kind in ("ack", "inbox"))
            return topic == mqtt_wire.request_filter() or bool(mqtt_wire.user_of(topic, "req"))
        user_id = _user_id(username)
        if user_id is None:
            return False
        if action == "publish":
            return topic == mqtt_wire.request_topic(user_id)
        return topic in (mqtt_wire.ack_topic(user_id), mqtt_wire.inbox_topic(user_id))


def _user_id(username: str) -> UUID | None:
    try:
        user_id = UUID(username)
    except ValueError:
        return None
    return user_id if str(user_id) == username else None


class AccessAuthPlugin(BaseAuthPlugin):
    @dataclass
    class Config:
        access: Any = None

    async def authenticate(self, *, session: Any) -> bool:
        access: BrokerAccess = self.config.access
        allowed = await access.may_connect(
            session.username,
            session.password,
            session.client_id or "",
            will_topic=session.will_topic if session.will_flag else None,
            will_retain=bool(session.will_retain),
        )
        if not allowed:
            logger.info("MQTT connection refused", extra={"mqtt_client_id": session.client_id})
        return allowed


class AccessTopicPlugin(BaseTopicPlugin):
    @dataclass
    class Config:
        access: Any = None

    async def topic_filtering(
        self, *, session: Any = None, topic: str | None = None, action: Any = None
    ) -> bool:
        access: BrokerAccess = self.config.access
        username = session.username if session is not None else None
        return access.may(username, str(action or ""), topic or "")


class EmbeddedBroker:
    """amqtt on ``host:port`` with :class:`BrokerAccess` enforced; ``start`` then ``close``."""

    def __init__(self, host: str, port: int, access: BrokerAccess) -> None:
        self.host, self.port, self.access = host, port, access
        self._broker: Broker | None = None

    async def start(self) -> None:
        # amqtt logs every connection and its state machine every transition at INFO.
        for noisy in ("amqtt", "transitions"):
            if logging.getLogger(noisy).level == logging.NOTSET:
                logging.getLogger(noisy).setLevel(logging.WARNING)
        plugin = f"{__name__}."
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                plugin + AccessAuthPlugin.__name__: {"access": self.access},
                plugin + AccessTopicPlugin.__name__: {"access": self.access},
            },
        }
        broker = Broker(config)
        try:
            await broker.start()
        except BrokerError as exc:
            raise ConfigError(
                "MQTT_EMBEDDED_PORT",
                f"the embedded MQTT broker cannot listen on {self.host}:{self.port} ({exc}); "
                "choose another port, set MQTT_URL to an external broker, or set it to off",
            ) from None
        self._broker = broker
        logger.info("embedded MQTT broker listening on %s:%s", self.host, self.port)

    async def close(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
