"""A playback ticket ends with its login session (issue 13, loose end 2).

A ticket issued before a logout, a password change (from another session), the
account's disabling or a role change plays nothing afterwards: 404 like any bad
ticket, as the bearer token of that session is refused. The check is the accounts
domain's own ``recheck`` (teleconsult/recording/tickets.py, ``still_current``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from uuid import UUID

import pytest

from teleconsult.core.identity import Role
from tests import test_recording_api
from tests.test_recording_api import Room, audit_count, media_url
from tests.world import PASSWORD, Account, assert_problem, disable, log_out, login

# The recording API tests' fixtures: small chunks, a consultation of the tenant.
settings = test_recording_api.settings
room = test_recording_api.room

Ending = Callable[[Room, Account], Awaitable[None]]


async def ticket_url(room: Room, who: Account, recording_id: UUID) -> str:
    resp = await room.client.post(
        f"/api/v1/recordings/{recording_id}/playback-ticket", headers=who.headers
    )
    assert resp.status == 200, await resp.text()
    url: str = (await resp.json())["url"]
    return url


async def by_logout(room: Room, who: Account) -> None:
    await log_out(room.client, room.tenant, who)


async def by_password_change(room: Room, who: Account) -> None:
    """From another session of the same user: that one goes on, the ticket's ends."""
    elsewhere = await login(room.client, Account(who.user_id, who.clinic_id, who.role, who.email))
    resp = await room.client.post(
        "/api/v1/me/password",
        json={"current_password": PASSWORD, "new_password": "a-brand-new-secret"},
        headers=elsewhere.headers,
    )
    assert resp.status == 204, await resp.text()


async def by_disabling(room: Room, who: Account) -> None:
    await disable(room.client, room.tenant, who)


async def by_role_change(room: Room, who: Account) -> None:
    """The session lives on, but the ticket was issued to a doctor, and no doctor remains."""
    resp = await room.client.patch(
        f"/api/v1/users/{who.user_id}",
        json={"role": "nurse"},
        headers=room.tenant[Role.ADMIN].headers,
    )
    assert resp.status == 200, await resp.text()


ENDINGS: dict[str, Ending] = {
    "logout": by_logout,
    "password_change": by_password_change,
    "disabled": by_disabling,
    "role_change": by_role_change,
}


@pytest.mark.parametrize("ending", list(ENDINGS))
async def test_a_ticket_issued_before_its_session_ended_plays_nothing(
    room: Room, tmp_path: Path, ending: str
) -> None:
    recording_id, media = await room.record(tmp_path)
    doctor = room.tenant[Role.DOCTOR]
    url = await ticket_url(room, doctor, recording_id)
    resp = await room.client.get(url, headers={"Range": "bytes=0-9"})
    assert resp.status == 206 and await resp.read() == media[:10]  # it did play
    played = await audit_count(room.pool, "recording.play", recording_id)

    await ENDINGS[ending](room, doctor)

    await assert_problem(await room.client.get(url), 404, "not_found")
    await assert_problem(
        await room.client.get(url, headers={"Range": "bytes=0-9"}), 404, "not_found"
    )
    # The bearer token of the same session is refused too (401, or 403 for a nurse).
    resp = await room.client.get(media_url(recording_id), headers=doctor.headers)
    assert resp.status in (401, 403), await resp.text()
    assert await audit_count(room.pool, "recording.play", recording_id) == played


async def test_another_users_session_ending_leaves_a_ticket_alone(
    room: Room, tmp_path: Path
) -> None:
    recording_id, media = await room.record(tmp_path)
    url = await ticket_url(room, room.tenant[Role.PATIENT], recording_id)
    await log_out(room.client, room.tenant, room.tenant[Role.DOCTOR])
    resp = await room.client.get(url)
    assert resp.status == 200 and await resp.read() == media
