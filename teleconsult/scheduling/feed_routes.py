"""HTTP transport for doctors' calendar feeds (iCalendar behind a revocable secret URL)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel

from teleconsult.api.registry import Api, ApiRequest
from teleconsult.core.policy import Action
from teleconsult.scheduling.feeds import CalendarFeedService
from teleconsult.scheduling.ics import CONTENT_TYPE as ICS_CONTENT_TYPE
from teleconsult.scheduling.records import CalendarFeed

FEEDS = web.AppKey("calendar_feeds", CalendarFeedService)
api = Api()


class Feed(BaseModel):
    id: UUID
    doctor_id: UUID
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, feed: CalendarFeed) -> Feed:
        return cls(
            id=feed.id,
            doctor_id=feed.doctor_id,
            created_at=feed.created_at,
            revoked_at=feed.revoked_at,
        )


class NewFeed(Feed):
    url: str


class FeedList(BaseModel):
    items: list[Feed]


def _svc(req: ApiRequest) -> CalendarFeedService:
    return req.request.app[FEEDS]


@api.op(
    "POST",
    "/api/v1/doctors/{doctor_id}/calendar-feeds",
    operation_id="createCalendarFeed",
    summary="A secret iCalendar URL for a doctor's appointments (shown once)",
    tag="scheduling",
    action=Action.CALENDAR_FEED_MANAGE,
    response=NewFeed,
    status=201,
)
async def create_feed(req: ApiRequest) -> NewFeed:
    """Anyone holding the URL can read the doctor's schedule (times and kinds of
    appointment, never patient data) until the feed is revoked."""
    svc = _svc(req)
    feed, token = await svc.create(req.principal, req.params["doctor_id"], ip=req.ip)
    return NewFeed(url=svc.url_for(token), **Feed.of(feed).model_dump())


@api.op(
    "GET",
    "/api/v1/doctors/{doctor_id}/calendar-feeds",
    operation_id="listCalendarFeeds",
    summary="A doctor's calendar feeds (without their secret URLs)",
    tag="scheduling",
    action=Action.CALENDAR_FEED_MANAGE,
    response=FeedList,
)
async def list_feeds(req: ApiRequest) -> FeedList:
    feeds = await _svc(req).list_feeds(req.principal, req.params["doctor_id"])
    return FeedList(items=[Feed.of(f) for f in feeds])


@api.op(
    "DELETE",
    "/api/v1/doctors/{doctor_id}/calendar-feeds/{feed_id}",
    operation_id="revokeCalendarFeed",
    summary="Revoke a calendar feed; its URL stops working at once",
    tag="scheduling",
    action=Action.CALENDAR_FEED_MANAGE,
    status=204,
)
async def revoke_feed(req: ApiRequest) -> None:
    await _svc(req).revoke(req.principal, req.params["doctor_id"], req.params["feed_id"], ip=req.ip)


@api.op(
    "GET",
    "/api/v1/calendar/{token}",
    operation_id="getCalendarFeed",
    summary="A doctor's appointments as iCalendar (the token is the credential)",
    tag="scheduling",
    action=None,
    string_params=("token",),
    media_type="text/calendar",
    errors=(404,),
)
async def calendar(req: ApiRequest) -> web.Response:
    text = await _svc(req).render(req.request.match_info["token"], ip=req.ip)
    return web.Response(
        body=text.encode("utf-8"),
        headers={"Content-Type": ICS_CONTENT_TYPE, "Cache-Control": "private, max-age=300"},
    )
