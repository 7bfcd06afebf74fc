"""REST transport for TURN: ``GET /api/v1/turn/credentials`` for any signed-in user."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, Field

from teleconsult.api.registry import Api, ApiRequest
from teleconsult.core.policy import Action
from teleconsult.turn.service import TurnService

TURN = web.AppKey("turn", TurnService)
api = Api()


class IceServer(BaseModel):
    """A WebRTC ``RTCIceServer``."""

    urls: list[str]
    username: str
    credential: str


class TurnCredentialsOut(BaseModel):
    username: str = Field(description="`<expiry>:<opaque user reference>`")
    password: str = Field(description="base64(HMAC-SHA1(secret, username))")
    ttl: int = Field(description="seconds the credentials were minted for")
    expires_at: int = Field(description="Unix time after which the TURN server refuses them")
    refresh_at: int = Field(description="Unix time to fetch fresh ones (before expires_at)")
    uris: list[str] = Field(description="TURN URIs (RFC 7065): UDP, TCP and TLS")
    ice_servers: list[IceServer] = Field(description="`iceServers` for RTCPeerConnection")


@api.op(
    "GET",
    "/api/v1/turn/credentials",
    operation_id="getTurnCredentials",
    summary="Short-lived TURN credentials and the ICE servers to use them with",
    tag="turn",
    action=Action.TURN_CREDENTIALS,
    response=TurnCredentialsOut,
    errors=(429,),
)
async def turn_credentials(req: ApiRequest) -> web.Response:
    """Minted per request, valid for `ttl` seconds. Rate-limited per user (429 with
    Retry-After): reuse the answer until `refresh_at`. Never cached (`no-store`)."""
    service = req.request.app[TURN]
    credentials = await service.issue(req.principal.user_id)
    answer = TurnCredentialsOut.model_validate(
        credentials.to_json(refresh_at=service.refresh_at(credentials))
    )
    return web.Response(
        body=answer.model_dump_json(),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )
