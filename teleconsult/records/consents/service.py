"""Consents (granted and revoked by the patient or their guardian), care teams (set by
the clinic's admins) and break-glass (docs/records.md, "Access rules")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg

from teleconsult.audit import AuditEvent
from teleconsult.core.errors import FieldError, NotFound, Unprocessable
from teleconsult.core.identity import Principal
from teleconsult.core.policy import Scope, ensure_in_scope
from teleconsult.records.access import AccessBasis, ensure_clinical_access
from teleconsult.records.base import RecordsService
from teleconsult.records.consents import store
from teleconsult.records.consents.store import CareTeamRecord, ConsentRecord

MAX_CONSENT = timedelta(days=3 * 365)
MAX_CARE_TEAM = timedelta(days=2 * 365)


def _future(when: datetime, longest: timedelta, field: str) -> None:
    now = datetime.now(UTC)
    if when <= now:
        raise Unprocessable("must lie in the future", fields=[FieldError(field, "in the past")])
    if when > now + longest:
        raise Unprocessable(
            "too far ahead", fields=[FieldError(field, f"at most {longest.days} days ahead")]
        )


class ConsentService(RecordsService):
    async def grant(
        self,
        principal: Principal,
        patient_id: UUID,
        *,
        grantee_user_id: UUID | None,
        grantee_clinic_id: UUID | None,
        scope: str,
        expires_at: datetime,
        ip: str | None,
    ) -> ConsentRecord:
        _future(expires_at, MAX_CONSENT, "body.expires_at")
        async with self._access(principal, patient_id, "summary", need="consent") as access:
            conn, clinic = access.conn, access.basis.clinic_id
            if grantee_user_id is not None and not await store.clinician_of(
                conn, grantee_user_id, clinic
            ):
                raise Unprocessable(
                    "the grantee is not a doctor or nurse of the patient's clinic",
                    fields=[FieldError("body.grantee_user_id", "not a clinician here")],
                )
            if grantee_clinic_id is not None and not await store.clinic_exists(
                conn, grantee_clinic_id
            ):
                raise Unprocessable(
                    "no such organisation",
                    fields=[FieldError("body.grantee_clinic_id", "unknown clinic")],
                )
            consent = await store.insert_consent(
                conn,
                clinic_id=clinic,
                patient_id=patient_id,
                grantee_user_id=grantee_user_id,
                grantee_clinic_id=grantee_clinic_id,
                scope=scope,
                granted_by=principal.user_id,
                expires_at=expires_at,
            )
            await self._record(
                access,
                principal,
                "consent.grant",
                ip=ip,
                object_type="consent",
                object_id=consent.id,
                scope=scope,
                grantee="user" if grantee_user_id else "organisation",
            )
        return consent

    async def list_consents(
        self, principal: Principal, patient_id: UUID, *, ip: str | None
    ) -> list[ConsentRecord]:
        async with self._access(principal, patient_id, "summary", need="consent") as access:
            found = await store.list_consents(access.conn, patient_id)
            await self._record(access, principal, "consent.list", ip=ip, results=len(found))
        return found

    async def revoke(
        self, principal: Principal, patient_id: UUID, consent_id: UUID, *, ip: str | None
    ) -> ConsentRecord:
        async with self._access(principal, patient_id, "summary", need="consent") as access:
            consent = await store.revoke_consent(
                access.conn, patient_id=patient_id, consent_id=consent_id, by=principal.user_id
            )
            if consent is None:
                raise NotFound("consent not found")
            await self._record(
                access,
                principal,
                "consent.revoke",
                ip=ip,
                object_type="consent",
                object_id=consent.id,
            )
        return consent

    # -- care teams: organisational, set by the clinic's admins -------------------------

    async def _patient_of_clinic(
        self, conn: asyncpg.Connection, principal: Principal, patient_id: UUID
    ) -> UUID:
        clinic = await store.patient_clinic(conn, patient_id)
        ensure_in_scope(principal, None if clinic is None else Scope(clinic), "patient")
        assert clinic is not None
        return clinic

    async def add_member(
        self,
        principal: Principal,
        patient_id: UUID,
        *,
        member_id: UUID,
        ends_at: datetime,
        ip: str | None,
    ) -> CareTeamRecord:
        _future(ends_at, MAX_CARE_TEAM, "body.ends_at")
        async with self._pool.acquire() as conn, conn.transaction():
            clinic = await self._patient_of_clinic(conn, principal, patient_id)
            if not await store.clinician_of(conn, member_id, clinic):
                raise Unprocessable(
                    "a care team member is a doctor or nurse of the patient's clinic",
                    fields=[FieldError("body.member_id", "not a clinician here")],
                )
            member = await store.insert_care_team(
                conn,
                clinic_id=clinic,
                patient_id=patient_id,
                member_id=member_id,
                ends_at=ends_at,
                added_by=principal.user_id,
            )
            await self._audit.record(
                AuditEvent.by(
                    principal,
                    "care_team.add",
                    "care_team_member",
                    member.id,
                    ip=ip,
                    detail={"patient_id": str(patient_id), "member_id": str(member_id)},
                ),
                conn,
            )
        return member

    async def list_members(
        self, principal: Principal, patient_id: UUID, *, ip: str | None
    ) -> list[CareTeamRecord]:
        async with self._pool.acquire() as conn, conn.transaction():
            await self._patient_of_clinic(conn, principal, patient_id)
            found = await store.list_care_team(conn, patient_id)
            await self._audit.record(
                AuditEvent.by(
                    principal,
                    "care_team.list",
                    "patient",
                    patient_id,
                    ip=ip,
                    detail={"results": len(found)},
                ),
                conn,
            )
        return found

    async def end_member(
        self, principal: Principal, patient_id: UUID, membership_id: UUID, *, ip: str | None
    ) -> CareTeamRecord:
        async with self._pool.acquire() as conn, conn.transaction():
            await self._patient_of_clinic(conn, principal, patient_id)
            member = await store.end_care_team(
                conn, patient_id=patient_id, membership_id=membership_id
            )
            if member is None:
                raise NotFound("care team membership not found")
            await self._audit.record(
                AuditEvent.by(
                    principal,
                    "care_team.end",
                    "care_team_member",
                    member.id,
                    ip=ip,
                    detail={"patient_id": str(patient_id)},
                ),
                conn,
            )
        return member

    # -- break-glass ----------------------------------------------------------------------

    async def break_glass(
        self, principal: Principal, patient_id: UUID, *, reason: str, scope: str, ip: str | None
    ) -> tuple[AccessBasis, datetime]:
        async with self._pool.acquire() as conn, conn.transaction():
            keys = await self._crypt.for_clinic(conn, principal.clinic_id)
            basis = await ensure_clinical_access(
                conn,
                principal,
                patient_id,
                scope,
                break_glass_reason=reason,
                keys=keys,
                audit=self._audit,
                ip=ip,
            )
            expires: datetime = await conn.fetchval(
                "SELECT expires_at FROM break_glass_accesses WHERE id = $1", basis.ref
            )
        return basis, expires
