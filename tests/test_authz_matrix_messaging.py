"""Messaging routes, called by every role, against a written policy.

The third table of the authorization matrix, beside ``tests/test_authz_matrix.py``
(helpers, route-coverage tests) and the scheduling world of ``tests/authzkit.py``
(appointments, reused here to book them). MESSAGING is written by hand and does not
import ``teleconsult.core.policy``; docs/policy.md is its prose.

Target kinds, per kind of route:

* thread routes: ``own`` is a thread the caller is a current member of (with the
  colleague doctor); ``same_clinic_other_patient`` the other patient's direct thread
  with the colleague; ``same_clinic_other_doctor`` the colleague's staff-only thread
  with a bystander nurse; ``other_tenant`` a thread of the other clinic. In the
  clinic's threads the caller is never a member, whatever their role;
* ``revokeDevice``: the caller's own device / the other patient's / the colleague's /
  a device of the other clinic's user of the caller's role;
* ``createThread``: the member named in the body is of the caller's clinic / of the
  other clinic;
* ``appointmentThread``: appointments as in the scheduling table (own / other
  patient's / colleague's / other clinic's).

An allowed send is a real envelope: sealed by the caller's registered device for
every current device of the thread, as listed by ``listThreadDevices``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from teleconsult.client.crypto import DeviceKeys, open_envelope, seal
from teleconsult.core.identity import Role
from teleconsult.messaging import store
from teleconsult.messaging.envelope import decode_b64url, encode_b64url, from_json, to_json
from teleconsult.messaging.records import ThreadKind
from tests.authzkit import (
    APPOINTMENT_OBJECT,
    SchedulingWorld,
    scheduling_world,
)
from tests.test_authz_matrix import (
    NO_ID,
    ROLES,
    A,
    Client,
    F,
    N,
    Prepared,
    Rule,
    Target,
    assert_malformed_ids_not_found,
    assert_route_follows_policy,
    read,
    row,
)
from tests.world import Account, Tenant, assert_problem, login, make_user

CLINIC_MEMBER = (Target.OWN, Target.OTHER_TENANT)
PEOPLE = (
    Target.OWN,
    Target.SAME_CLINIC_OTHER_PATIENT,
    Target.SAME_CLINIC_OTHER_DOCTOR,
    Target.OTHER_TENANT,
)
THREAD_OBJECT = PEOPLE
MEMBER_ONLY = (A, N, N, N)
THREAD = "/api/v1/threads/{thread_id}"

# The written policy. Columns: patient, doctor, nurse, receptionist, admin; inside each,
# one answer per target kind, in the order of the row's target tuple (see above).
# fmt: off
MESSAGING: dict[str, Rule] = {
    #   patient       doctor        nurse         reception.    admin
    "registerDevice": row("POST /api/v1/devices", NO_ID,
        (A,),         (A,),         (A,),         (A,),         (A,)),
    "listMyDevices": row("GET /api/v1/devices", NO_ID,
        (A,),         (A,),         (A,),         (A,),         (A,)),
    # Own device / other patient's / colleague's / other clinic's.
    "revokeDevice": row("DELETE /api/v1/devices/{device_id}", PEOPLE,
        MEMBER_ONLY,  MEMBER_ONLY,  MEMBER_ONLY,  MEMBER_ONLY,  MEMBER_ONLY),
    # A member of the caller's clinic / of the other clinic.
    "createThread": row("POST /api/v1/threads", CLINIC_MEMBER,
        (F, F),       (A, N),       (A, N),       (A, N),       (A, N)),
    # Own / other patient's / colleague's / other clinic's appointment.
    "appointmentThread": row("POST /api/v1/appointments/{appointment_id}/thread",
        APPOINTMENT_OBJECT,
        (A, N, A, N), (A, A, N, N), (A, A, A, N), (A, A, A, N), (A, A, A, N)),
    "listMyThreads": row("GET /api/v1/threads", NO_ID,
        (A,),         (A,),         (A,),         (A,),         (A,)),
    # A thread of the caller's / other patient's / colleague's / other clinic's.
    "getThread": row(f"GET {THREAD}", THREAD_OBJECT,
        MEMBER_ONLY,  MEMBER_ONLY,  MEMBER_ONLY,  MEMBER_ONLY,  MEMBER_ONLY),
    "listThreadDevices": row(f"GET {THREAD}/devices", THREAD_OBJECT,
        MEMBER_ONLY,  MEMBER_ONLY,  MEMBER_ONLY,  MEMBER_ONLY,  MEMBER_ONLY),
    "listMessages": row(f"GET {THREAD}/messages", THREAD_OBJECT,
        MEMBER_ONLY,  MEMBER_ONLY,  MEMBER_ONLY,  MEMBER_ONLY,  MEMBER_ONLY),
    "sendMessage": row(f"POST {THREAD}/messages", THREAD_OBJECT,
        MEMBER_ONLY,  MEMBER_ONLY,  MEMBER_ONLY,  MEMBER_ONLY,  MEMBER_ONLY),
    "markThread": row(f"POST {THREAD}/receipts", THREAD_OBJECT,
        MEMBER_ONLY,  MEMBER_ONLY,  MEMBER_ONLY,  MEMBER_ONLY,  MEMBER_ONLY),
}
# fmt: on
AUTHENTICATED = sorted(op for op, r in MESSAGING.items() if not r.public)


@dataclass
class MessagingWorld(SchedulingWorld):
    """The scheduling world (for appointments), plus a bystander nurse, one registered
    device per person, and the threads of each target kind."""

    bystander: Account | None = None
    devices: dict[UUID, tuple[UUID, DeviceKeys]] = field(default_factory=dict)
    own_threads: dict[UUID, UUID] = field(default_factory=dict)  # by member user id
    threads: dict[Target, UUID] = field(default_factory=dict)

    async def device(self, owner: Account) -> tuple[UUID, DeviceKeys]:
        """A freshly registered device; the first one of each person is kept for sending."""
        keys = DeviceKeys.generate()
        device = await store.register_device(
            self.pool,
            user_id=owner.user_id,
            x25519_public=keys.encryption_public_key,
            ed25519_public=keys.signing_public_key,
        )
        if owner.clinic_id == self.other.clinic_id:
            self.foreign.add(str(device.id))
        self.devices.setdefault(owner.user_id, (device.id, keys))
        return device.id, keys

    async def thread(self, clinic: Tenant, kind: ThreadKind, people: list[Account]) -> UUID:
        thread = await store.create_thread(
            self.pool,
            clinic_id=clinic.clinic_id,
            kind=kind,
            created_by=people[-1].user_id,
            members=[(p.user_id, p.role.value) for p in people],
        )
        return self._note_foreign(clinic, thread.id)

    def thread_of(self, target: Target, subject: Account) -> UUID:
        return self.own_threads[subject.user_id] if target is Target.OWN else self.threads[target]

    def member_of(self, target: Target, subject: Account) -> Account:
        """Someone who is a current member of the thread of ``target`` kind."""
        if target is Target.OWN:
            return subject
        return self.other[Role.DOCTOR] if target is Target.OTHER_TENANT else self.colleague

    async def recipients(self, thread_id: UUID, member: Account) -> dict[UUID, bytes]:
        """Every current device of the thread, as a member lists them."""
        resp = await self.client.get(f"/api/v1/threads/{thread_id}/devices", headers=member.headers)
        assert resp.status == 200, await resp.text()
        items = (await resp.json())["items"]
        return {
            UUID(d["id"]): decode_b64url(d["x25519_public"], field="x25519_public") for d in items
        }

    async def envelope(self, thread_id: UUID, sender: Account, member: Account) -> dict[str, Any]:
        device_id, keys = self.devices[sender.user_id]
        env = seal(
            plaintext=b"How are you feeling today?",
            thread_id=thread_id,
            sender=keys,
            sender_device_id=device_id,
            recipients=await self.recipients(thread_id, member),
        )
        return to_json(env)


@pytest.fixture
async def world(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant, other_tenant: Tenant
) -> MessagingWorld:
    bystander = await make_user(app_pool, tenant.clinic_id, Role.NURSE, tag="bystander")
    world = await scheduling_world(
        MessagingWorld, client, app_pool, tenant, other_tenant, bystander=bystander
    )
    colleague = world.colleague
    await login(client, colleague)  # lists a thread's devices for non-members' envelopes
    assert tenant.other_patient is not None
    own_people = [*tenant.users.values(), tenant.other_patient, colleague, bystander]
    for person in [*own_people, *other_tenant.users.values()]:
        await world.device(person)
    care = ThreadKind.CARE_TEAM
    for role in ROLES:
        world.own_threads[tenant[role].user_id] = await world.thread(
            tenant, care, [tenant[role], colleague]
        )
    world.threads = {
        Target.SAME_CLINIC_OTHER_PATIENT: await world.thread(
            tenant, ThreadKind.DIRECT, [tenant.other_patient, colleague]
        ),
        Target.SAME_CLINIC_OTHER_DOCTOR: await world.thread(tenant, care, [bystander, colleague]),
        Target.OTHER_TENANT: await world.thread(
            other_tenant, care, list(other_tenant.users.values())
        ),
    }
    return world


async def prepare(world: MessagingWorld, op: str, role: Role | None, target: Target) -> Prepared:
    """Build the request for ``op`` as ``role`` (None: no token) on ``target``."""
    pool, own = world.pool, world.own
    caller = own[role] if role is not None else None
    subject = caller or own[Role.ADMIN]
    prep = Prepared(caller, {})
    thread_id = world.thread_of(target, subject)
    if "{thread_id}" in MESSAGING[op].path:
        prep.params["thread_id"] = thread_id
    match op:
        case "listMyDevices" | "listMyThreads" | "getThread" | "listThreadDevices":
            pass
        case "listMessages":
            prep.query = {"after": "0"}
        case "registerDevice":
            keys = DeviceKeys.generate()
            prep.body = {
                "x25519_public": encode_b64url(keys.encryption_public_key),
                "ed25519_public": encode_b64url(keys.signing_public_key),
                "label": "Phone",
            }
            prep.probe = read(
                pool, "SELECT count(*) FROM devices WHERE user_id = $1", subject.user_id
            )
        case "revokeDevice":
            assert own.other_patient is not None
            owner = {
                Target.OWN: subject,
                Target.SAME_CLINIC_OTHER_PATIENT: own.other_patient,
                Target.SAME_CLINIC_OTHER_DOCTOR: world.colleague,
                Target.OTHER_TENANT: world.other[subject.role],
            }[target]
            device_id = prep.params["device_id"] = (await world.device(owner))[0]
            prep.probe = read(
                pool, "SELECT revoked_at IS NULL FROM devices WHERE id = $1", device_id
            )
        case "createThread":
            assert own.other_patient is not None
            member = own.other_patient if target is Target.OWN else world.other[Role.PATIENT]
            prep.body = {"kind": "direct", "member_ids": [str(member.user_id)]}
            prep.probe = read(
                pool, "SELECT count(*) FROM thread_members WHERE user_id = $1", member.user_id
            )
        case "appointmentThread":
            appointment_id = prep.params["appointment_id"] = await world.appointment(target)
            prep.probe = read(
                pool, "SELECT count(*) FROM threads WHERE appointment_id = $1", appointment_id
            )
        case "sendMessage":
            # Non-members send an envelope as valid as a member's would be.
            member = world.member_of(target, subject)
            prep.body = {"envelope": await world.envelope(thread_id, subject, member)}
            prep.probe = read(pool, "SELECT count(*) FROM messages WHERE thread_id = $1", thread_id)
        case "markThread":
            prep.body = {"delivered_seq": 0, "read_seq": 0}
            prep.probe = read(
                pool,
                "SELECT updated_at FROM receipts WHERE thread_id = $1 AND user_id = $2",
                thread_id,
                subject.user_id,
            )
        case _:
            raise AssertionError(f"no request factory for operation {op}")
    return prep


# --- the matrix ----------------------------------------------------------------------


@pytest.mark.parametrize("op", AUTHENTICATED)
async def test_route_answers_every_role_as_the_policy_says(op: str, world: MessagingWorld) -> None:
    await assert_route_follows_policy(world, op, MESSAGING[op], prepare)


async def test_malformed_path_id_is_not_found(world: MessagingWorld) -> None:
    await assert_malformed_ids_not_found(world, MESSAGING, prepare)


# --- lists ---------------------------------------------------------------------------


async def items(world: MessagingWorld, path: str, caller: Account) -> list[dict[str, Any]]:
    resp = await world.client.get(path, headers=caller.headers)
    assert resp.status == 200, f"{path} as {caller.role.value}: {await resp.text()}"
    found: list[dict[str, Any]] = (await resp.json())["items"]
    return found


async def test_lists_show_only_the_callers_threads_and_devices(world: MessagingWorld) -> None:
    """Each role lists the threads it is a current member of, and its own devices."""
    problems = []
    for role in ROLES:
        caller = world.own[role]
        # The caller leaves a second thread: it is no longer theirs to list.
        left = await world.thread(world.own, ThreadKind.CARE_TEAM, [caller, world.colleague])
        assert await store.remove_member(world.pool, left, caller.user_id)
        threads = {t["id"] for t in await items(world, "/api/v1/threads", caller)}
        want = {str(world.own_threads[caller.user_id])}
        if threads != want:
            problems.append(f"listMyThreads as {role.value}: extra {threads - want}")
        devices = await items(world, "/api/v1/devices", caller)
        if {d["user_id"] for d in devices} != {str(caller.user_id)}:
            problems.append(f"listMyDevices as {role.value}: {devices}")
    assert problems == [], "\n".join(problems)


# --- single behaviours ---------------------------------------------------------------


async def test_a_former_member_is_a_stranger(world: MessagingWorld) -> None:
    """Leaving a thread ends access to it: 404 everywhere, and no message stored."""
    patient = world.own[Role.PATIENT]
    thread_id = world.own_threads[patient.user_id]
    envelope = await world.envelope(thread_id, patient, patient)
    assert await store.remove_member(world.pool, thread_id, patient.user_id)
    base = f"/api/v1/threads/{thread_id}"
    client, headers = world.client, patient.headers
    for resp in [
        await client.get(base, headers=headers),
        await client.get(f"{base}/devices", headers=headers),
        await client.get(f"{base}/messages", headers=headers),
        await client.post(f"{base}/messages", json={"envelope": envelope}, headers=headers),
        await client.post(f"{base}/receipts", json={"read_seq": 0}, headers=headers),
    ]:
        await assert_problem(resp, 404, "not_found")
    count = "SELECT count(*) FROM messages WHERE thread_id = $1"
    assert await world.pool.fetchval(count, thread_id) == 0


async def test_a_sent_message_is_numbered_and_opens_for_the_other_member(
    world: MessagingWorld,
) -> None:
    patient, colleague = world.own[Role.PATIENT], world.colleague
    thread_id = world.own_threads[patient.user_id]
    envelope = await world.envelope(thread_id, patient, patient)
    path = f"/api/v1/threads/{thread_id}/messages"
    resp = await world.client.post(path, json={"envelope": envelope}, headers=patient.headers)
    assert resp.status == 200, await resp.text()
    sent = await resp.json()
    assert (sent["seq"], sent["duplicate"]) == (1, False)

    page = await items(world, path, colleague)
    assert [m["seq"] for m in page] == [1]
    device_id, keys = world.devices[colleague.user_id]
    sender_key = world.devices[patient.user_id][1].signing_public_key
    plaintext = open_envelope(
        from_json(page[0]["envelope"]),
        me=keys,
        my_device_id=device_id,
        sender_signing_key=sender_key,
    )
    assert plaintext == b"How are you feeling today?"


async def test_an_appointment_thread_holds_only_its_patient_and_doctor(
    world: MessagingWorld,
) -> None:
    """Front desk may open it, but that makes them no member of it."""
    receptionist, patient = world.own[Role.RECEPTIONIST], world.own[Role.PATIENT]
    appointment_id = await world.appointment(Target.OWN)
    path = f"/api/v1/appointments/{appointment_id}/thread"
    resp = await world.client.post(path, headers=receptionist.headers)
    assert resp.status == 200, await resp.text()
    thread_id = (await resp.json())["id"]
    again = await world.client.post(path, headers=patient.headers)
    assert again.status == 200, await again.text()
    assert (await again.json())["id"] == thread_id
    members = await world.pool.fetch(
        "SELECT user_id FROM thread_members WHERE thread_id = $1 AND left_at IS NULL", thread_id
    )
    want = {world.own[Role.DOCTOR].user_id, patient.user_id}
    assert {m["user_id"] for m in members} == want
    resp = await world.client.get(f"/api/v1/threads/{thread_id}", headers=receptionist.headers)
    await assert_problem(resp, 404, "not_found")
