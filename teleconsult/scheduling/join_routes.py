"""HTTP transport of join links (issue 12 follow-up): ``/join/<room id>`` is a page
(teleconsult/pages/routes.py) that asks this API, signed in, which appointment the room
belongs to, then opens ``room.html?appointment=<id>``.

The room id is the link's secret-less handle; the answer is the appointment itself, to
whoever may read that appointment (its patient, its doctor, the clinic's other staff).
An unknown room, a malformed id and a room out of the caller's scope are the same 404,
and every answer is audited as an appointment read.
"""

from __future__ import annotations

import re

from teleconsult.api.registry import Api, ApiRequest
from teleconsult.core.errors import NotFound
from teleconsult.core.policy import Action
from teleconsult.scheduling.routes import PUBLIC_URL, SCHEDULING, AppointmentOut

api = Api()
# store.new_room_id: secrets.token_urlsafe(24); anything else is not a room.
ROOM_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


@api.op(
    "GET",
    "/api/v1/rooms/{room_id}",
    operation_id="getRoomAppointment",
    summary="The appointment of a consultation room (resolves a join link)",
    tag="appointments",
    action=Action.APPOINTMENT_READ,
    string_params=("room_id",),
    response=AppointmentOut,
)
async def get_room_appointment(req: ApiRequest) -> AppointmentOut:
    room_id = req.request.match_info["room_id"]
    if not ROOM_ID.match(room_id):
        raise NotFound("appointment not found")
    booked = await req.request.app[SCHEDULING].get_by_room(req.principal, room_id, ip=req.ip)
    return AppointmentOut.of(booked.appointment, booked.consultation, req.request.app[PUBLIC_URL])
