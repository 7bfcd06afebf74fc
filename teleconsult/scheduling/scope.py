"""An appointment loaded for someone: in their scope, or not at all.

Every service that acts on a consultation (booking, the network test, chat's
appointment thread, recordings) reads the appointment this way, so the scope rule
(docs/policy.md) lives in one place: another clinic's appointment, or for a
patient anyone else's, is ``not_found``.
"""

from __future__ import annotations

from uuid import UUID

from teleconsult.core.identity import Principal
from teleconsult.core.policy import Scope, ensure_in_scope
from teleconsult.scheduling import store
from teleconsult.scheduling.records import Appointment


def scope_of(appointment: Appointment | None) -> Scope | None:
    if appointment is None:
        return None
    return Scope(appointment.clinic_id, appointment.patient_id, appointment.doctor_id)


async def appointment_in_scope(
    conn: store.Conn, principal: Principal, appointment_id: UUID, *, for_update: bool = False
) -> Appointment:
    """The appointment; NotFound (or Forbidden) when ``principal`` may not touch it."""
    appointment = await store.get_appointment(conn, appointment_id, for_update=for_update)
    ensure_in_scope(principal, scope_of(appointment), "appointment")
    assert appointment is not None
    return appointment
