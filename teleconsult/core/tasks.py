"""Stopping background tasks for good."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any] | None], *, every: float = 0.5) -> None:
    """Cancel ``tasks`` and wait until every one has finished.

    Cancelled again every ``every`` seconds while one runs on: redis-py can swallow
    a cancellation that lands inside one of its calls, and the task would then go
    back to waiting for ever (a shutdown that hung on a chat hub's sender).
    ``asyncio.wait`` neither re-raises the tasks' CancelledError nor swallows a
    cancellation of the caller, unlike ``suppress(CancelledError)`` around ``await``.
    """
    pending = {task for task in tasks if task is not None and not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every)
