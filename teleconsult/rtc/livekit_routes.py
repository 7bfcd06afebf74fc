"""HTTP transport of LiveKit's webhooks: ``POST /api/v1/webhooks/livekit`` (docs/rtc.md).

No user signs in here: the request proves itself with LiveKit's signature over
the raw body (``livekit_webhooks.LiveKitIntake.verify``), so the route is
public in the registry and reads the body itself, unparsed, to hash it.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, Field

from teleconsult.api.registry import Api, ApiRequest
from teleconsult.core.errors import NotFound, PayloadTooLarge
from teleconsult.rtc.livekit import LiveKitSfu
from teleconsult.rtc.livekit_webhooks import MAX_BODY_BYTES, LiveKitIntake

LIVEKIT_INTAKE = web.AppKey("livekit_intake", LiveKitIntake)
# The LiveKit Sfu when LIVEKIT_URL is set (the composition root hands it on as the Sfu).
LIVEKIT_SFU = web.AppKey("livekit_sfu", LiveKitSfu)
api = Api()


class WebhookTaken(BaseModel):
    event_id: str = Field(description="LiveKit's event id, now remembered for 24 hours")
    event: str
    joined: list[str] = Field(description="Identities this event brought into the room")
    left: list[str] = Field(description="Identities this event took out of the room")
    recordings_finished: list[str] = Field(description="Egress ids that reached a final state")


@api.op(
    "POST",
    "/api/v1/webhooks/livekit",
    operation_id="receiveLiveKitWebhook",
    summary="LiveKit's signed webhook (participants, recordings)",
    tag="rtc",
    action=None,
    response=WebhookTaken,
    errors=(400, 401, 404, 409, 413),
)
async def receive_livekit_webhook(req: ApiRequest) -> WebhookTaken:
    """Verified with LiveKit's API secret: the ``Authorization`` JWT must carry the
    sha256 of this exact body. A bad signature is 401 ``bad_signature``; an event
    taken in before, or older than ``LIVEKIT_WEBHOOK_MAX_AGE``, is 409 and changes
    nothing; a signed event whose names are too long to keep is 400. 404 when the server
    does not use LiveKit."""
    intake = req.request.app.get(LIVEKIT_INTAKE)
    if intake is None:
        raise NotFound("this server does not use LiveKit")
    length = req.request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"a webhook is at most {MAX_BODY_BYTES} bytes")
    body = await req.request.content.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"a webhook is at most {MAX_BODY_BYTES} bytes")
    taken = await intake.receive(body, req.request.headers.get("Authorization"))
    return WebhookTaken(
        event_id=taken.event_id,
        event=taken.event,
        joined=sorted(taken.change.joined),
        left=sorted(taken.change.left),
        recordings_finished=[e.egress_id for e in taken.change.finished],
    )
