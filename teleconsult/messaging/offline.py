"""The offline hook: tell a clinic's push or SMS gateway that a thread has news.

:class:`OfflineNotifier` is a message sink (:meth:`ChatService.add_sink`). For
each member of the thread other than the sender who has no live connection on
any server process, it enqueues a ``thread_news`` row in the notification
outbox; the outbox worker sends it through the configured channel (the signed
webhook in production), with the worker's leases and retries. The row and the
webhook carry the thread id and the user id only: no content, no names.

Coalescing: a member has at most one unsent ``thread_news`` row per thread, so
a burst of messages makes one webhook. Once it is sent, the next message makes
a new one. A message stored while its thread's row is being sent is covered by
that row: the receiver learns only that there is news, and the member's client
fetches everything from its last seq.

The check and the enqueue are not atomic: a member who connects in between
still gets a notification, and one who disconnects in between gets none for
that message (their client resumes from its last seq on reconnecting). When
presence cannot be read, every other member is notified: a needless push is
better than a missed message.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol
from uuid import UUID

import asyncpg

from teleconsult.core.errors import InfrastructureError
from teleconsult.messaging.records import StoredMessage
from teleconsult.notifications import store as outbox_store

logger = logging.getLogger(__name__)

THREAD_NEWS = "thread_news"


class OnlineCheck(Protocol):
    """Who of these users has a live connection anywhere (a Presence or the Hub)."""

    async def online(self, user_ids: Iterable[UUID]) -> set[UUID]: ...


class OfflineNotifier:
    """Enqueues coalesced ``thread_news`` notifications for offline members.

    Safe to call concurrently and from several processes: the database
    coalesces (a partial unique index), so racing calls add one row.
    """

    def __init__(self, pool: asyncpg.Pool, presence: OnlineCheck) -> None:
        self._pool = pool
        self._presence = presence

    async def sink(self, stored: StoredMessage, member_ids: list[UUID]) -> None:
        """The message sink: ``member_ids`` are the thread's current members."""
        others = [m for m in dict.fromkeys(member_ids) if m != stored.sender_user_id]
        if not others:
            return
        try:
            online = await self._presence.online(others)
        except (InfrastructureError, OSError) as exc:
            logger.warning(
                "presence unavailable (%s); announcing seq %s of thread %s to every member",
                type(exc).__name__,
                stored.seq,
                stored.thread_id,
            )
            online = set()
        offline = [m for m in others if m not in online]
        if not offline:
            return
        added = await outbox_store.enqueue_thread_news(
            self._pool,
            kind=THREAD_NEWS,
            thread_id=stored.thread_id,
            seq=stored.seq,
            user_ids=offline,
        )
        logger.debug(
            "thread %s seq %s: %s of %s offline members newly notified",
            stored.thread_id,
            stored.seq,
            len(added),
            len(offline),
        )
