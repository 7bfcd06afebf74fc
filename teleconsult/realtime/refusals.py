"""Refused authorization attempts on the live transports, audited the way REST's are.

An event of a signed-in user that the policy refuses (``forbidden``, or the
``not_found`` of an object that exists but is not theirs: another clinic's or
another patient's thread or room, a thread they are not a member of, a device
of someone else's) goes to the same :class:`~teleconsult.api.registry.RefusalSink`
as REST's refusals: ``access.refused`` rows that belong to no clinic, at most
``AUDIT_REFUSALS_PER_MINUTE`` per actor and action whichever transport they came
by (``api/refusals.py``), with ``detail.transport`` naming it.

What is not a refusal stays as it was: a malformed event, a missing object, a
rate limit or a state conflict gets its error ack and nothing else; so do the
two 403s about timing in the caller's own consultation (``outside_join_window``,
``not_admitted``: a waiting patient's client racing its admission is no probe). Nor are
connections refused for want of a valid token (a Socket.IO connect, an MQTT
CONNECT or request that is not signed by one of the topic user's devices):
nobody is proven to have been refused, and REST does not audit a bad bearer
token either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from teleconsult.api.registry import Refusal, RefusalSink, tell_refusal
from teleconsult.core.errors import ClientError, ErrorCode, Forbidden
from teleconsult.core.identity import Principal
from teleconsult.core.policy import Action, OutOfScope

SOCKETIO = "socketio"
MQTT = "mqtt"
_MAX_TARGET = 200
_NOT_YET = frozenset({ErrorCode.OUTSIDE_JOIN_WINDOW, ErrorCode.NOT_ADMITTED})


@dataclass(frozen=True, slots=True)
class Via:
    """How an event came: its transport, and (looked up only for a refusal) the client's address."""

    transport: str
    address: Callable[[], str | None] | None = None


MQTT_VIA = Via(MQTT)  # the device's address is the broker's to know, not the bridge's


def is_refusal(exc: ClientError) -> bool:
    """An authorization refusal, as REST audits them: a 403 (but not "not yet"), or the
    404 of ``OutOfScope``."""
    if isinstance(exc, Forbidden):
        return exc.code not in _NOT_YET
    return isinstance(exc, OutOfScope)


class EventRefusals:
    """Tells the refusal sink (if any) of each refused event; never raises."""

    def __init__(self, sink: RefusalSink | None) -> None:
        self._sink = sink

    async def note(
        self,
        principal: Principal,
        exc: ClientError,
        *,
        via: Via,
        operation: str,
        action: Action | str,
        target_type: str | None,
        target_id: object,
    ) -> None:
        """Audit ``exc`` if it is a refusal. ``target_id`` is the payload's value as sent."""
        if self._sink is None or not is_refusal(exc):
            return
        refusal = Refusal(
            principal=principal,
            action=action,
            operation_id=operation,
            status=exc.status,
            code=str(exc.code),
            target_type=target_type if isinstance(target_id, str) else None,
            target_id=target_id[:_MAX_TARGET] if isinstance(target_id, str) else None,
            ip=via.address() if via.address is not None else None,
            transport=via.transport,
        )
        await tell_refusal(self._sink, refusal)


def payload_field(data: object, name: str) -> object:
    """``data[name]`` when the payload is an object that has it, else None."""
    return data.get(name) if isinstance(data, dict) else None
