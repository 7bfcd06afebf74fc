"""REST transport for pre-call network tests: offer/answer, the client's report, results."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, Field, StringConstraints, model_validator

from teleconsult.api.models import Body
from teleconsult.api.registry import Api, ApiRequest
from teleconsult.core.policy import Action
from teleconsult.rtc.figures import ClientFigures, ServerFigures
from teleconsult.rtc.records import NetworkTest, TestStatus
from teleconsult.rtc.sdp import MAX_SDP_CHARS
from teleconsult.rtc.service import NetworkTestService

NETWORK_TESTS = web.AppKey("network_tests", NetworkTestService)
api = Api()

Sdp = Annotated[str, StringConstraints(min_length=1, max_length=MAX_SDP_CHARS)]
Millis = Annotated[float, Field(ge=0, le=60_000, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, le=10_000_000)]
Bitrate = Annotated[float, Field(ge=0, le=10_000_000_000, allow_inf_nan=False)]


class OfferBody(Body):
    sdp: Sdp = Field(description="The client's SDP offer, with its candidates (no trickle)")
    type: Literal["offer"]


class NetworkTestStarted(BaseModel):
    id: UUID
    sdp: str = Field(description="The server's answer, with every candidate")
    type: Literal["answer"] = "answer"
    expires_at: datetime = Field(description="When the server closes its peer at the latest")


class ClientReport(Body):
    """What the probe measured (docs/rtc.md); ranges are what a real test can produce."""

    duration_s: Annotated[float, Field(gt=0, le=600, allow_inf_nan=False)]
    pings_sent: Annotated[int, Field(ge=0, le=100_000)]
    pings_echoed: Annotated[int, Field(ge=0, le=100_000)]
    loss: Fraction
    rtt_ms_min: Millis | None
    rtt_ms_p50: Millis | None
    rtt_ms_p95: Millis | None
    rtt_ms_max: Millis | None
    jitter_ms: Millis | None
    bitrate_bps: Bitrate
    media_packets_received: Count
    media_packets_lost: Count
    media_jitter_ms: Millis | None
    audio_frames: Count
    video_frames: Count

    @model_validator(mode="after")
    def _consistent(self) -> ClientReport:
        if self.pings_echoed > self.pings_sent:
            raise ValueError("pings_echoed cannot exceed pings_sent")
        rtts = [self.rtt_ms_min, self.rtt_ms_p50, self.rtt_ms_p95, self.rtt_ms_max]
        present = [value for value in rtts if value is not None]
        if present and len(present) != len(rtts):
            raise ValueError("give all of rtt_ms_min, _p50, _p95 and _max, or none")
        if present and present != sorted(present):
            raise ValueError("expected rtt_ms_min <= rtt_ms_p50 <= rtt_ms_p95 <= rtt_ms_max")
        if bool(present) != (self.pings_echoed > 0):
            raise ValueError("round trips are given exactly when some pings were echoed")
        return self

    def figures(self) -> ClientFigures:
        return ClientFigures(**self.model_dump())


class NetworkTestOut(BaseModel):
    id: UUID
    appointment_id: UUID
    consultation_id: UUID
    user_id: UUID
    user_role: str
    status: TestStatus
    started_at: datetime
    expires_at: datetime
    finished_at: datetime | None
    reported_at: datetime | None
    # The figures' own dataclasses are the response schema: one list of fields.
    server: ServerFigures | None = Field(description="Measured by the server's peer")
    client: ClientFigures | None = Field(description="Reported by the client")

    @classmethod
    def of(cls, t: NetworkTest) -> NetworkTestOut:
        return cls(
            id=t.id,
            appointment_id=t.appointment_id,
            consultation_id=t.consultation_id,
            user_id=t.user_id,
            user_role=t.user_role,
            status=t.status,
            started_at=t.started_at,
            expires_at=t.expires_at,
            finished_at=t.finished_at,
            reported_at=t.reported_at,
            server=ServerFigures(**t.server) if t.server else None,
            client=ClientFigures(**t.client) if t.client else None,
        )


class NetworkTestList(BaseModel):
    items: list[NetworkTestOut] = Field(description="Each user's newest test, newest first")


def _svc(req: ApiRequest) -> NetworkTestService:
    return req.request.app[NETWORK_TESTS]


@api.op(
    "POST",
    "/api/v1/appointments/{appointment_id}/network-tests",
    operation_id="startNetworkTest",
    summary="Start a pre-call network test: the server's peer answers the offer",
    tag="rtc",
    action=Action.NETWORK_TEST_RUN,
    body=OfferBody,
    response=NetworkTestStarted,
    status=201,
    errors=(409, 422, 503),
)
async def start_network_test(req: ApiRequest) -> NetworkTestStarted:
    """The server's peer echoes the data channel and the media tracks back until the
    client closes, reports, or the time limit. A malformed or unusable offer is 400
    ``invalid_sdp``; one whose every candidate is a loopback, private, link-local or
    other address the server does not contact, 422 ``peer_address_refused``; too many
    tests at once, 503 with Retry-After."""
    body = req.body(OfferBody)
    started = await _svc(req).start(
        req.principal, req.params["appointment_id"], body.sdp, ip=req.ip
    )
    return NetworkTestStarted(
        id=started.test.id, sdp=started.answer_sdp, expires_at=started.test.expires_at
    )


@api.op(
    "POST",
    "/api/v1/network-tests/{network_test_id}/result",
    operation_id="reportNetworkTest",
    summary="Report the client's figures; answers both sides' figures",
    tag="rtc",
    action=Action.NETWORK_TEST_RUN,
    body=ClientReport,
    response=NetworkTestOut,
    errors=(409,),
)
async def report_network_test(req: ApiRequest) -> NetworkTestOut:
    """Only the user who started the test may report, once. Reporting ends the test."""
    test = await _svc(req).report(
        req.principal, req.params["network_test_id"], req.body(ClientReport).figures(), ip=req.ip
    )
    return NetworkTestOut.of(test)


@api.op(
    "GET",
    "/api/v1/appointments/{appointment_id}/network-tests",
    operation_id="listNetworkTests",
    summary="The newest network test of each participant of the appointment",
    tag="rtc",
    action=Action.NETWORK_TEST_READ,
    response=NetworkTestList,
)
async def list_network_tests(req: ApiRequest) -> NetworkTestList:
    """A patient sees only their own result."""
    found = await _svc(req).latest(req.principal, req.params["appointment_id"], ip=req.ip)
    return NetworkTestList(items=[NetworkTestOut.of(t) for t in found])
