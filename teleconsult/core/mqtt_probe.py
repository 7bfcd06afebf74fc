"""A readiness probe for the MQTT broker: a real CONNECT with a short timeout."""

from __future__ import annotations

import logging
import secrets
from urllib.parse import urlsplit

import aiomqtt

logger = logging.getLogger(__name__)


async def mqtt_reachable(url: str, *, connect_timeout: float = 3.0) -> bool:
    parts = urlsplit(url)
    try:
        async with aiomqtt.Client(
            hostname=parts.hostname or "127.0.0.1",
            port=parts.port or 1883,
            username=parts.username,
            password=parts.password,
            identifier=f"tc-probe-{secrets.token_hex(4)}",
            timeout=connect_timeout,
        ):
            return True
    except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
        logger.warning("MQTT broker not reachable: %s", type(exc).__name__)
        return False
