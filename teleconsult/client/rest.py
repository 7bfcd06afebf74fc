"""The few REST calls a chat client needs: sign-in, devices, threads, history."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import aiohttp

from teleconsult.client.crypto import DeviceKeys
from teleconsult.messaging.envelope import decode_b64url


class ApiError(Exception):
    """The server refused a REST call; ``code`` is the problem's stable code."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code


@dataclass(frozen=True)
class PeerDevice:
    id: UUID
    user_id: UUID
    x25519_public: bytes
    ed25519_public: bytes


class RestClient:
    """``base_url`` like ``http://127.0.0.1:8080``; one aiohttp session, closed by ``close``."""

    def __init__(self, base_url: str, *, session: aiohttp.ClientSession | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session or aiohttp.ClientSession()
        self._own_session = session is None
        self.access_token = ""
        self.refresh_token = ""
        self.user_id: UUID | None = None

    async def close(self) -> None:
        if self._own_session:
            await self._session.close()

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self.access_token}"} if self.access_token else {}
        async with self._session.request(
            method, self.base_url + path, json=body, headers=headers
        ) as resp:
            if resp.status == 204:
                return None
            payload = await resp.json(content_type=None)
            if resp.status >= 400:
                raise ApiError(resp.status, payload.get("code", "?"), payload.get("detail", ""))
            return payload

    async def login(self, email: str, password: str) -> None:
        tokens = await self.call(
            "POST", "/api/v1/auth/login", {"email": email, "password": password}
        )
        self._take(tokens)

    async def refresh(self) -> str:
        tokens = await self.call(
            "POST", "/api/v1/auth/refresh", {"refresh_token": self.refresh_token}
        )
        self._take(tokens)
        return self.access_token

    def _take(self, tokens: dict[str, Any]) -> None:
        self.access_token = tokens["access_token"]
        self.refresh_token = tokens["refresh_token"]
        self.user_id = UUID(tokens["user"]["id"])

    async def register_device(self, keys: DeviceKeys, label: str | None = None) -> UUID:
        body: dict[str, Any] = dict(keys.public_bundle().to_json())
        if label:
            body["label"] = label
        return UUID((await self.call("POST", "/api/v1/devices", body))["id"])

    async def thread_devices(self, thread_id: UUID) -> list[PeerDevice]:
        items = (await self.call("GET", f"/api/v1/threads/{thread_id}/devices"))["items"]
        return [
            PeerDevice(
                id=UUID(d["id"]),
                user_id=UUID(d["user_id"]),
                x25519_public=decode_b64url(d["x25519_public"], field="x25519_public"),
                ed25519_public=decode_b64url(d["ed25519_public"], field="ed25519_public"),
            )
            for d in items
        ]

    async def create_thread(self, member_ids: list[UUID], *, kind: str = "direct") -> UUID:
        body = {"kind": kind, "member_ids": [str(m) for m in member_ids]}
        return UUID((await self.call("POST", "/api/v1/threads", body))["id"])

    async def threads(self) -> list[UUID]:
        return [UUID(t["id"]) for t in (await self.call("GET", "/api/v1/threads"))["items"]]
