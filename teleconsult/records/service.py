"""Patient demographics (rows of ``users``). Every read and change is audited. Clinical
notes moved to ``records/notes`` (versioned, encrypted)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from teleconsult.accounts import store as accounts_store
from teleconsult.accounts.records import UserRecord
from teleconsult.audit import AuditEvent, AuditTrail
from teleconsult.core.identity import Principal, Role
from teleconsult.core.policy import Scope, ensure_in_scope


class PatientService:
    """Safe to call concurrently."""

    def __init__(self, *, pool: asyncpg.Pool, audit: AuditTrail) -> None:
        self._pool = pool
        self._audit = audit

    def _event(
        self,
        principal: Principal,
        action: str,
        patient_id: UUID | None,
        ip: str | None,
        **detail: str | int | bool,
    ) -> AuditEvent:
        kind = "patient" if patient_id else "patient_list"
        return AuditEvent.by(principal, action, kind, patient_id, ip=ip, detail=detail)

    async def _load(
        self, conn: asyncpg.Connection | asyncpg.Pool, principal: Principal, patient_id: UUID
    ) -> UserRecord:
        user = await accounts_store.get_user(conn, patient_id)
        scope = (
            Scope(user.clinic_id, user.id)
            if user is not None and user.role is Role.PATIENT
            else None
        )
        ensure_in_scope(principal, scope, "patient")
        assert user is not None
        return user

    async def search(
        self,
        principal: Principal,
        *,
        text: str | None,
        after: tuple[datetime, UUID] | None,
        limit: int,
        ip: str | None,
    ) -> list[UserRecord]:
        """A page of ``limit`` patients, plus one more row when there is a next page
        (the caller cuts it off).

        One ``patient.list`` audit event per read (not per row), committed with it:
        the reader, the kind of query and how many patients the page shows. The
        searched text is never recorded (it is a name or a phone number)."""
        async with self._pool.acquire() as conn, conn.transaction():
            found = await accounts_store.list_users(
                conn,
                clinic_id=principal.clinic_id,
                roles=[Role.PATIENT],
                after=after,
                limit=limit + 1,
                search=text,
            )
            await self._audit.record(
                self._event(
                    principal,
                    "patient.list",
                    None,
                    ip,
                    via="patients",
                    query="search" if text else "list",
                    results=min(len(found), limit),
                    searched=bool(text),
                    after=after is not None,
                ),
                conn=conn,
            )
        return found

    async def get(self, principal: Principal, patient_id: UUID, *, ip: str | None) -> UserRecord:
        async with self._pool.acquire() as conn:
            patient = await self._load(conn, principal, patient_id)
            await self._audit.record(self._event(principal, "patient.read", patient_id, ip), conn)
        return patient

    async def update(
        self, principal: Principal, patient_id: UUID, changes: dict[str, Any], *, ip: str | None
    ) -> UserRecord:
        async with self._pool.acquire() as conn, conn.transaction():
            patient = await self._load(conn, principal, patient_id)
            if not changes:
                return patient
            updated = await accounts_store.update_user(conn, patient_id, changes)
            await self._audit.record(
                self._event(
                    principal, "patient.update", patient_id, ip, fields=",".join(sorted(changes))
                ),
                conn=conn,
            )
        return updated
