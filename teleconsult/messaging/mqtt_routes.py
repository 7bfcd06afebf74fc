"""REST transport for MQTT accounts: a device's owner asks for its MQTT credentials.

Mounted only with ``MQTT_PROVISIONING=dynsec`` (the composition root adds
these operations then), where the server makes each device's account on
Mosquitto (``mqtt_dynsec``). Only the device's owner, signed in, gets them;
each call sets a new password (the previous one stops working) and enables
the account again after a revocation disabled it.
"""

from __future__ import annotations

from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, Field

from teleconsult.api.registry import Api, ApiRequest
from teleconsult.core.errors import NotFound, Unavailable
from teleconsult.core.policy import Action
from teleconsult.messaging.mqtt_dynsec import DynsecError, MqttAccounts
from teleconsult.messaging.routes import MESSAGING

MQTT_ACCOUNTS = web.AppKey("mqtt_accounts", MqttAccounts)
api = Api()


class MqttCredentialsOut(BaseModel):
    username: str = Field(description="the MQTT username: the device id")
    password: str = Field(description="a new MQTT password; the previous one stops working")
    client_id_prefix: UUID = Field(description="client ids must start with this (the user id)")


@api.op(
    "POST",
    "/api/v1/devices/{device_id}/mqtt",
    operation_id="provisionDeviceMqtt",
    summary="New MQTT credentials for one of the caller's devices (docs/mqtt.md)",
    tag="messaging",
    action=Action.DEVICE_MANAGE,
    response=MqttCredentialsOut,
    errors=(503,),
)
async def provision_device_mqtt(req: ApiRequest) -> web.Response:
    principal, device_id = req.principal, req.params["device_id"]
    mine = await req.request.app[MESSAGING].my_devices(principal)
    if not any(d.id == device_id for d in mine):  # someone else's, revoked or missing
        raise NotFound("device not found")
    try:
        credentials = await req.request.app[MQTT_ACCOUNTS].provision(principal.user_id, device_id)
    except DynsecError:
        raise Unavailable(
            "the MQTT broker is not reachable", headers={"Retry-After": "5"}
        ) from None
    body = MqttCredentialsOut(
        username=credentials.username,
        password=credentials.password,
        client_id_prefix=principal.user_id,
    )
    return web.Response(
        text=body.model_dump_json(),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )
