"""What every records service shares: the pool, the audit trail, the field keys,
and the audit event of an access (docs/records.md)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from teleconsult.audit import AuditEvent, AuditTrail
from teleconsult.audit.chain import DetailValue
from teleconsult.core.identity import Principal
from teleconsult.records.access import AccessBasis, Need, ensure_access
from teleconsult.records.fieldcrypt import ClinicKeys, FieldCrypt

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordsDeps:
    pool: asyncpg.Pool
    audit: AuditTrail
    crypt: FieldCrypt


@dataclass(frozen=True)
class Access:
    """One request's way into a patient's record: its connection (in a transaction),
    the basis it was allowed on, and the clinic's keys."""

    conn: asyncpg.Connection
    basis: AccessBasis
    keys: ClinicKeys


class RecordsService:
    """Base of the records services. Safe to call concurrently."""

    def __init__(self, deps: RecordsDeps) -> None:
        self._deps = deps
        self._pool = deps.pool
        self._audit = deps.audit
        self._crypt = deps.crypt

    @asynccontextmanager
    async def _access(
        self,
        principal: Principal,
        patient_id: UUID,
        scope: str,
        *,
        need: Need = "read",
    ) -> AsyncIterator[Access]:
        """A transaction in which ``principal`` may ``need`` ``scope`` of the record
        (checked once, in SQL, inside it). Scope ``profile`` is the demographic
        profile (staff of the clinic too); the others are clinical."""
        async with self._pool.acquire() as conn, conn.transaction():
            basis = await ensure_access(conn, principal, patient_id, scope, need=need)
            keys = await self._crypt.for_clinic(conn, basis.clinic_id)
            yield Access(conn, basis, keys)

    async def _record(
        self,
        access: Access,
        principal: Principal,
        action: str,
        *,
        ip: str | None,
        object_type: str = "patient",
        object_id: object | None = None,
        **detail: DetailValue,
    ) -> None:
        """The audit event of one read or change, on the request's connection. A use of
        break-glass access writes a second, ``record.break_glass_use`` event."""
        basis = access.basis
        facts: dict[str, DetailValue] = {"basis": basis.kind, **detail}
        if object_id is not None:
            facts["patient_id"] = str(basis.patient_id)
        events = [
            AuditEvent.by(
                principal,
                action,
                object_type,
                basis.patient_id if object_id is None else object_id,
                clinic_id=basis.clinic_id,
                ip=ip,
                detail=facts,
            )
        ]
        if basis.kind == "break_glass":
            events.append(
                AuditEvent.by(
                    principal,
                    "record.break_glass_use",
                    "patient",
                    basis.patient_id,
                    clinic_id=basis.clinic_id,
                    ip=ip,
                    detail={"access_id": str(basis.ref), "via": action},
                )
            )
        await self._audit.record_many(events, access.conn)
        # Ids and kinds only: never a field's content.
        logger.debug(
            "%s by %s %s on basis %s", action, principal.role.value, principal.user_id, basis.kind
        )
