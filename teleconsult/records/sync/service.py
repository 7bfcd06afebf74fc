"""The change feed for apps that work offline: every change to the records the caller
may see after a cursor, in pages, each with the changed object itself, so an app
catches up in one round trip per page (docs/records.md, "Sync").

The feed (``record_changes``) is written by triggers; a page is read in one statement
limited to patients the caller has some basis on, then each (patient, part) is checked
again with the access rules of ``access.py`` in the same transaction, so what a consent
or a care team no longer covers is left out. Not safe to assume a page is full: a page
may hold fewer changes than asked (or none) and still not be the last."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final
from uuid import UUID

import asyncpg

from teleconsult.audit import AuditEvent
from teleconsult.core.errors import Forbidden, NotFound
from teleconsult.core.identity import Principal
from teleconsult.records.access import AccessBasis, Need, ensure_access
from teleconsult.records.base import RecordsService
from teleconsult.records.careplans.service import open_plan
from teleconsult.records.documents.service import open_document
from teleconsult.records.fieldcrypt import ClinicKeys
from teleconsult.records.notes.service import open_version as open_note
from teleconsult.records.prescriptions.service import open_medication, open_prescription
from teleconsult.records.profiles.service import open_profile, open_summary
from teleconsult.records.sync import store

# The access scope each kind of change needs (a profile: "profile", plus "summary" for
# its clinical part).
SCOPE: Final = {
    "note": "notes",
    "vital": "vitals",
    "medication": "medications",
    "prescription": "medications",
    "profile": "profile",
    "care_plan": "summary",
    # Issue 14, part RG: a document's metadata and versions (never its content) needs
    # "documents"; a consent, what GET .../consents needs (the patient, or a guardian
    # with the "consent" permission); a household and a care team membership, the
    # profile's basis, then narrowed by RULES.
    "document": "documents",
    "consent": "summary",
    "household": "profile",
    "care_team": "profile",
}
assert set(SCOPE) == store.KINDS
NEED: Final[dict[str, Need]] = {"consent": "consent"}
# Kinds only some bases may see (others: any basis for the scope). A care team
# membership is also shown to the member themself (checked on the object).
ONLY: Final = {
    "consent": frozenset({"self", "guardian"}),
    "care_team": frozenset({"self", "guardian"}),
}


@dataclass(frozen=True)
class Change:
    seq: int
    kind: str
    patient_id: UUID
    object_id: UUID
    data: Any  # the object, typed per kind (routes serialise it)


@dataclass(frozen=True)
class SyncPage:
    changes: list[Change]
    cursor: int
    complete: bool


class SyncService(RecordsService):
    async def _basis(
        self,
        conn: asyncpg.Connection,
        principal: Principal,
        patient_id: UUID,
        scope: str,
        need: Need = "read",
    ) -> AccessBasis | None:
        try:
            async with conn.transaction():  # a savepoint: a refusal leaves nothing behind
                return await ensure_access(conn, principal, patient_id, scope, need=need)
        except (Forbidden, NotFound):
            return None

    async def page(
        self, principal: Principal, *, after: int, limit: int, ip: str | None
    ) -> SyncPage:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await store.changes(
                conn,
                user_id=principal.user_id,
                clinic_id=principal.clinic_id,
                role=principal.role.value,
                after=after,
                limit=limit,
            )
            # The newest change of each object only: the app wants the current state (a
            # household is one object per member's record).
            latest: dict[tuple[str, UUID, UUID], store.ChangeRow] = {}
            for row in rows:
                latest.pop((row.kind, row.object_id, row.patient_id), None)
                latest[(row.kind, row.object_id, row.patient_id)] = row
            bases: dict[tuple[UUID, str, Need], AccessBasis | None] = {}
            keys: dict[UUID, ClinicKeys] = {}
            allowed: list[tuple[store.ChangeRow, AccessBasis, bool]] = []
            for row in latest.values():
                scope, need = SCOPE[row.kind], NEED.get(row.kind, "read")
                wanted = [(scope, need)] + ([("summary", "read")] if row.kind == "profile" else [])
                for each in wanted:
                    if (row.patient_id, *each) not in bases:
                        bases[(row.patient_id, *each)] = await self._basis(
                            conn, principal, row.patient_id, *each
                        )
                basis = bases[(row.patient_id, scope, need)]
                if basis is None:
                    continue
                if (
                    row.kind in ONLY
                    and basis.kind not in ONLY[row.kind]
                    and row.kind != "care_team"  # the member's own: checked on the object
                ):
                    continue
                if basis.clinic_id not in keys:
                    keys[basis.clinic_id] = await self._crypt.for_clinic(conn, basis.clinic_id)
                clinical = bases.get((row.patient_id, "summary", "read")) is not None
                allowed.append((row, basis, clinical))
            changes = await self._load(conn, principal, allowed, keys)
            shown = {(c.kind, c.object_id, c.patient_id) for c in changes}
            allowed = [a for a in allowed if (a[0].kind, a[0].object_id, a[0].patient_id) in shown]
            await self._audit_page(conn, principal, allowed, ip)
        cursor = rows[-1].seq if rows else after
        return SyncPage(changes=changes, cursor=cursor, complete=len(rows) < limit)

    async def _load(
        self,
        conn: asyncpg.Connection,
        principal: Principal,
        allowed: list[tuple[store.ChangeRow, AccessBasis, bool]],
        keys: dict[UUID, ClinicKeys],
    ) -> list[Change]:
        def ids(kind: str) -> list[UUID]:
            return [row.object_id for row, _, _ in allowed if row.kind == kind]

        found: dict[tuple[str, UUID], Any] = {}
        for kind in SCOPE:
            for object_id, item in (await store.objects(conn, kind, ids(kind))).items():
                found[(kind, object_id)] = item
        out: list[Change] = []
        for row, basis, clinical in allowed:
            item = found.get((row.kind, row.object_id))
            if item is None:
                continue
            if (
                row.kind == "care_team"
                and basis.kind not in ONLY["care_team"]
                and item.member_id != principal.user_id
            ):
                continue  # staff see their own membership only
            k = keys[basis.clinic_id]
            data: Any
            match row.kind:
                case "note":
                    data = open_note(k, item)
                case "vital":
                    data = item
                case "medication":
                    data = open_medication(k, item)
                case "prescription":
                    data = open_prescription(k, item)
                case "profile":
                    data = (open_profile(k, item), open_summary(k, item) if clinical else None)
                case "care_plan":
                    data = open_plan(k, item)
                case "document":
                    data = open_document(k, *item)
                case _:  # consent, household, care_team: no encrypted field
                    data = item
            out.append(Change(row.seq, row.kind, row.patient_id, row.object_id, data))
        return out

    async def _audit_page(
        self,
        conn: asyncpg.Connection,
        principal: Principal,
        allowed: list[tuple[store.ChangeRow, AccessBasis, bool]],
        ip: str | None,
    ) -> None:
        """One ``record.sync`` event per patient whose data the page shows."""
        per_patient: dict[UUID, tuple[AccessBasis, int]] = {}
        for row, basis, _ in allowed:
            _, count = per_patient.get(row.patient_id, (basis, 0))
            per_patient[row.patient_id] = (basis, count + 1)
        events = [
            AuditEvent.by(
                principal,
                "record.sync",
                "patient",
                patient_id,
                clinic_id=basis.clinic_id,
                ip=ip,
                detail={"basis": basis.kind, "changes": count},
            )
            for patient_id, (basis, count) in per_patient.items()
        ]
        if events:
            await self._audit.record_many(events, conn)
