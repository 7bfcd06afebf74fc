"""The OAuth access token MoMo and Daraja hand out: fetched once at a time, kept
until 30 seconds before it expires, forgotten when the API answers 401."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import aiohttp

from teleconsult.payments.providers.base import ProviderError


class AccessToken:
    def __init__(self, label: str, *, default_expiry: float) -> None:
        self._label = label  # in errors: "momo token", "mpesa oauth"
        self._default_expiry = default_expiry  # seconds, when the answer names none
        self._token: tuple[str, float] | None = None
        self._lock = asyncio.Lock()

    def forget(self) -> None:
        self._token = None

    async def get(
        self, request: Callable[[], AbstractAsyncContextManager[aiohttp.ClientResponse]]
    ) -> str:
        """The kept token, or a new one from ``request`` (the provider's token call)."""
        async with self._lock:
            if self._token and self._token[1] > time.monotonic() + 30:
                return self._token[0]
            try:
                async with request() as resp:
                    body = await resp.json(content_type=None)
                    if resp.status != 200:
                        raise ProviderError(f"{self._label}: {resp.status} {body}")
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise ProviderError(f"{self._label}: {exc!r}") from exc
            token = str(body["access_token"])
            expires_in = float(body.get("expires_in", self._default_expiry))
            self._token = (token, time.monotonic() + expires_in)
            return token
