"""No double-booking: the overlap constraints, the advisory locks before them, deadlock retries.

Double-booking is refused by the database (the exclusion constraints of
migration 0003), not by a read-then-write. A write that may enter an overlap
check takes the people's advisory locks first: in a transaction of its own via
:func:`guarded_fetchrow` (store.py), or inside its own statement with
:func:`people_locks` (booking_store.py). Either way an exclusion violation
becomes :class:`SlotTaken`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, TypeAlias, TypeVar

import asyncpg

from teleconsult.core.errors import TeleconsultError

logger = logging.getLogger(__name__)

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"
SlotOwner = Literal["doctor", "patient"]
T = TypeVar("T")

_OVERLAP_CONSTRAINTS: dict[str, SlotOwner] = {
    "appointments_doctor_no_overlap": "doctor",
    "appointments_patient_no_overlap": "patient",
}

# Two transactions writing overlapping rows at the same moment can each wait for
# the other inside the exclusion check, and PostgreSQL then aborts one as a
# deadlock, again and again under contention. So writers that may enter the
# check first queue on transaction-level advisory locks, always the doctor's
# then the patient's (separate key spaces: a consistent order, no cycle). The
# constraints still decide; the locks only make the losers fail with the
# exclusion violation, after the winner committed (the check sees committed
# rows whatever the statement's snapshot). Deadlocks the locks cannot prevent
# (a caller's transaction holding other locks) are retried.
LOCK_DOCTOR = 0x74636472  # "tcdr", the first key of pg_advisory_xact_lock(int, int)
LOCK_PATIENT = 0x74637074  # "tcpt"
LOCK_PEOPLE = (
    "SELECT pg_advisory_xact_lock($1, hashtext($3::uuid::text)), "
    "pg_advisory_xact_lock($2, hashtext($4::uuid::text))"
)
LOCK_APPOINTMENT = (
    "SELECT pg_advisory_xact_lock($1, hashtext(doctor_id::text)), "
    "pg_advisory_xact_lock($2, hashtext(patient_id::text)) FROM appointments WHERE id = $3"
)
DEADLOCK_ATTEMPTS = 3


def people_locks(doctor: str, patient: str) -> str:
    """A select list taking the doctor's lock, then the patient's, for a statement of one's own.

    ``doctor`` and ``patient`` are SQL expressions of type uuid, e.g. ``$3::uuid``.
    PostgreSQL evaluates a select list left to right, so the order holds.
    """
    return (
        f"pg_advisory_xact_lock({LOCK_DOCTOR}, hashtext(({doctor})::text)) AS doctor_lock, "
        f"pg_advisory_xact_lock({LOCK_PATIENT}, hashtext(({patient})::text)) AS patient_lock"
    )


class SlotTaken(TeleconsultError):
    """The time overlaps an active appointment of the same doctor or patient."""

    def __init__(self, which: SlotOwner) -> None:
        super().__init__(f"the {which} already has an appointment at that time")
        self.which: SlotOwner = which


@contextmanager
def slot_taken_on_overlap() -> Iterator[None]:
    """Turn the violation of an overlap constraint into :class:`SlotTaken`."""
    try:
        yield
    except asyncpg.exceptions.ExclusionViolationError as exc:
        which = _OVERLAP_CONSTRAINTS.get(exc.constraint_name or "")
        if which is None:
            raise
        raise SlotTaken(which) from exc


async def retry_deadlocks(attempt: Callable[[], Awaitable[T]]) -> T:
    """Run ``attempt`` (a whole transaction) again when PostgreSQL aborts it as a deadlock."""
    for number in range(1, DEADLOCK_ATTEMPTS + 1):
        try:
            return await attempt()
        except asyncpg.exceptions.DeadlockDetectedError:
            if number == DEADLOCK_ATTEMPTS:
                raise
            logger.warning("overlap check deadlocked (attempt %s); retrying", number)
    raise AssertionError("unreachable")


async def guarded_fetchrow(
    conn: Conn, lock: tuple[str, list[Any]] | None, query: str, *args: Any
) -> asyncpg.Record | None:
    """Run one write the overlap constraints may refuse, after taking ``lock``.

    ``lock`` is (LOCK_PEOPLE, [doctor_id, patient_id]) or (LOCK_APPOINTMENT,
    [appointment_id]); None for writes that cannot enter an overlap check.
    The write runs in a transaction, or in a savepoint of the caller's.
    """
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as connection:
            return await guarded_fetchrow(connection, lock, query, *args)

    async def attempt() -> asyncpg.Record | None:
        with slot_taken_on_overlap():
            async with conn.transaction():
                if lock is not None:
                    await conn.execute(lock[0], LOCK_DOCTOR, LOCK_PATIENT, *lock[1])
                row: asyncpg.Record | None = await conn.fetchrow(query, *args)
                return row

    return await retry_deadlocks(attempt)
