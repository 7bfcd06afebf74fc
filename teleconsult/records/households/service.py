"""Households: a carer (guardian) manages a child's or an elder's record, with
permissions per dependant (``read``, ``write``, ``consent``). The front desk and
admins set them up. A child (under 18 by date of birth) may be a dependant on the
carer's word; an adult only with a documented basis (legal guardianship or a power of
attorney), so a guardian never acts for an adult stranger."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Literal
from uuid import UUID

import asyncpg

from teleconsult.audit import AuditEvent
from teleconsult.core.errors import FieldError, NotFound, Unprocessable
from teleconsult.core.identity import Principal, Role
from teleconsult.core.policy import OutOfScope, Scope, ensure_in_scope
from teleconsult.records.base import RecordsService
from teleconsult.records.households import store
from teleconsult.records.households.store import HouseholdRecord, MemberRecord

AdultBasis = Literal["legal_guardianship", "power_of_attorney"]
ADULT_AGE = 18


def is_minor(born: date | None, today: date) -> bool:
    if born is None:
        return False
    had_birthday = (today.month, today.day) >= (born.month, born.day)
    return today.year - born.year - (0 if had_birthday else 1) < ADULT_AGE


class HouseholdService(RecordsService):
    async def create(self, principal: Principal, *, label: str, ip: str | None) -> HouseholdRecord:
        async with self._pool.acquire() as conn, conn.transaction():
            household = await store.insert_household(
                conn, clinic_id=principal.clinic_id, label=label, by=principal.user_id
            )
            await self._audit.record(
                AuditEvent.by(principal, "household.create", "household", household.id, ip=ip),
                conn,
            )
        return household

    async def _load(
        self, conn: asyncpg.Connection, principal: Principal, household_id: UUID
    ) -> tuple[HouseholdRecord, list[MemberRecord]]:
        household = await store.get_household(conn, household_id)
        if household is None:
            raise NotFound("household not found")
        members = await store.list_members(conn, household_id)
        member = any(m.user_id == principal.user_id and m.removed_at is None for m in members)
        if principal.role is Role.PATIENT:
            # A patient sees the households they are a current member of.
            if household.clinic_id != principal.clinic_id or not member:
                raise OutOfScope("household not found")
        else:
            ensure_in_scope(principal, Scope(household.clinic_id), "household")
        return household, members

    async def get(
        self, principal: Principal, household_id: UUID, *, ip: str | None
    ) -> tuple[HouseholdRecord, list[MemberRecord]]:
        async with self._pool.acquire() as conn, conn.transaction():
            found = await self._load(conn, principal, household_id)
            await self._audit.record(
                AuditEvent.by(principal, "household.read", "household", household_id, ip=ip), conn
            )
        return found

    async def put_member(
        self,
        principal: Principal,
        household_id: UUID,
        *,
        user_id: UUID,
        kind: Literal["guardian", "dependant"],
        permissions: list[str],
        adult_basis: AdultBasis | None,
        ip: str | None,
    ) -> MemberRecord:
        async with self._pool.acquire() as conn, conn.transaction():
            household, _ = await self._load(conn, principal, household_id)
            facts = await store.patient_facts(conn, user_id)
            if facts is None or facts[0] != household.clinic_id:
                raise Unprocessable(
                    "members are patients of the household's clinic",
                    fields=[FieldError("body.user_id", "not a patient of this clinic")],
                )
            if kind == "guardian" and permissions:
                raise Unprocessable(
                    "permissions are given per dependant",
                    fields=[FieldError("body.permissions", "must be empty for a guardian")],
                )
            minor = is_minor(facts[1], datetime.now(UTC).date())
            if kind == "dependant" and not minor and adult_basis is None:
                raise Unprocessable(
                    "an adult is a dependant only with a documented legal basis",
                    fields=[FieldError("body.adult_basis", "required for an adult dependant")],
                )
            member = await store.upsert_member(
                conn,
                household_id=household_id,
                user_id=user_id,
                kind=kind,
                permissions=sorted(set(permissions)),
                by=principal.user_id,
            )
            await self._audit.record(
                AuditEvent.by(
                    principal,
                    "household.member_put",
                    "household",
                    household_id,
                    ip=ip,
                    detail={
                        "user_id": str(user_id),
                        "kind": kind,
                        "permissions": ",".join(member.permissions) or "none",
                        "minor": minor,
                        "adult_basis": adult_basis or "none",
                    },
                ),
                conn,
            )
        return member

    async def remove_member(
        self, principal: Principal, household_id: UUID, user_id: UUID, *, ip: str | None
    ) -> MemberRecord:
        async with self._pool.acquire() as conn, conn.transaction():
            await self._load(conn, principal, household_id)
            member = await store.remove_member(conn, household_id=household_id, user_id=user_id)
            if member is None:
                raise NotFound("member not found")
            await self._audit.record(
                AuditEvent.by(
                    principal,
                    "household.member_remove",
                    "household",
                    household_id,
                    ip=ip,
                    detail={"user_id": str(user_id)},
                ),
                conn,
            )
        return member
