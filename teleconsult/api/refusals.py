"""Refused authorization attempts as audit rows of their own, bounded per actor.

A signed-in caller whom the policy refuses (403 ``forbidden``, or 404 for an
object of another clinic or another patient, see ``core.policy.OutOfScope``) is
probing, or running a broken client. Either way a security officer wants to see
it, but a loop of refusals must not bloat the trail or slow it down.

So each (actor, action) gets ``per_minute`` ``access.refused`` rows in any
sliding minute; the first refusal past that writes one ``access.refused`` row
with ``detail.suppressed = true`` ("more followed, not recorded") and the rest of
that minute writes nothing. A flood therefore costs at most ``per_minute + 1``
rows per actor, action and minute, and the metric
``teleconsult_authz_refusals_total`` still counts every refusal. The limits use
the shared rate limiter (Redis when configured), so the bound holds across
processes. Each row is written in its own transaction: a refusal changes
nothing it could commit with.

The rows belong to no clinic (``clinic_id`` is empty; the actor's clinic is in
``detail.actor_clinic_id``): the id a caller probed may be another clinic's, and
no clinic's audit list may show another tenant's ids. They are the installation's
security events, read by whoever keeps the whole trail.
"""

from __future__ import annotations

import logging

from teleconsult.api.registry import Refusal
from teleconsult.audit import AuditEvent, AuditTrail
from teleconsult.core.metrics import Metrics
from teleconsult.core.ratelimit import RateLimiter

logger = logging.getLogger(__name__)

AUDIT_ACTION = "access.refused"
WINDOW_SECONDS = 60


class AuditedRefusals:
    """A ``RefusalSink`` that writes rate-limited audit rows. Safe to call concurrently."""

    def __init__(
        self,
        audit: AuditTrail,
        limiter: RateLimiter,
        *,
        per_minute: int,
        metrics: Metrics | None = None,
    ) -> None:
        self._audit = audit
        self._limiter = limiter
        self._per_minute = per_minute
        self._metrics = metrics

    async def refused(self, refusal: Refusal) -> None:
        if self._metrics is not None:
            self._metrics.authz_refusals.labels(str(refusal.status)).inc()
        key = f"refused:{refusal.principal.user_id}:{refusal.action}"
        if (await self._limiter.hit(key, self._per_minute, WINDOW_SECONDS)).allowed:
            await self._audit.record(self._event(refusal, suppressed=False))
            return
        # One marker per minute that more came than were recorded.
        if (await self._limiter.hit(f"{key}:over", 1, WINDOW_SECONDS)).allowed:
            await self._audit.record(self._event(refusal, suppressed=True))
            return
        if self._metrics is not None:
            self._metrics.authz_refusals_unaudited.inc()

    def _event(self, refusal: Refusal, *, suppressed: bool) -> AuditEvent:
        principal = refusal.principal
        detail: dict[str, str | int | bool] = {
            "policy_action": str(refusal.action),
            "operation": refusal.operation_id,
            "status": refusal.status,
            "code": refusal.code,
            "actor_clinic_id": str(principal.clinic_id),
        }
        if refusal.transport is not None:
            detail["transport"] = refusal.transport
        if suppressed:
            detail["suppressed"] = True
            detail["limit_per_minute"] = self._per_minute
        return AuditEvent(
            action=AUDIT_ACTION,
            outcome="denied",
            actor_id=principal.user_id,
            actor_role=principal.role.value,
            # Not the actor's clinic: the target may be another clinic's, and a clinic's
            # audit list must never show another tenant's ids. An installation-level row,
            # for whoever keeps the whole trail; the actor's clinic is in the detail.
            clinic_id=None,
            object_type=refusal.target_type,
            object_id=refusal.target_id,
            ip=refusal.ip,
            detail=detail,
        )
