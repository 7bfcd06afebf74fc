"""Every route of the OpenAPI document, called by every role, against a written policy.

EXPECTED is a second, hand-written statement of the policy (docs/policy.md is its
prose). It deliberately does not import ``teleconsult.core.policy``: a change to the
server's rules must be matched here on purpose, or this test fails.

For each operation the test sends one request per role and per target kind:

* ``own``: an object of the caller's clinic (for a patient on patient data: their
  own record); routes without an id in the path only have this column;
* ``same_clinic_other_patient``: another patient of the caller's clinic (patient
  routes only; a patient must get 404 there);
* ``other_tenant``: the same kind of object in another clinic (never allowed),

plus one request without a token (401). Denials must be problem documents with the
right ``code`` and must change nothing; an allowed answer must not mention any id
of the other clinic.

Scheduling routes (doctors, availability, slots, appointments, calendar feeds and
their FHIR views) have their own table and request builders in
``tests/test_authz_matrix_scheduling.py``, and messaging routes (devices, threads,
messages, receipts) in ``tests/test_authz_matrix_messaging.py``; both reuse the
helpers here, and the route-coverage tests below read all three tables
(``policy_tables``). The tables built on appointments share the scheduling world of
``tests/authzkit.py``.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from teleconsult.core.identity import Role
from tests.auditkit import chained
from tests.recordskit import give_care  # records (issue 14, part R)
from tests.world import PASSWORD, Account, Tenant, login, make_user, unique_email

Client = TestClient[Any, Any]
Probe = Callable[[], Awaitable[object]]


class Expect(StrEnum):
    ALLOW = "allow"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    UNAUTHENTICATED = "unauthenticated"


class Target(StrEnum):
    OWN = "own"
    SAME_CLINIC_OTHER_PATIENT = "same_clinic_other_patient"
    # Scheduling only: another doctor of the caller's clinic (or their appointment),
    # and for bookings, a patient of the other clinic.
    SAME_CLINIC_OTHER_DOCTOR = "same_clinic_other_doctor"
    OTHER_TENANT = "other_tenant"
    OTHER_TENANT_PATIENT = "other_tenant_patient"


A, F, N = Expect.ALLOW, Expect.FORBIDDEN, Expect.NOT_FOUND
NO_ID = (Target.OWN,)
CLINIC_OBJECT = (Target.OWN, Target.OTHER_TENANT)
PATIENT_OBJECT = (Target.OWN, Target.SAME_CLINIC_OTHER_PATIENT, Target.OTHER_TENANT)
ROLES = (Role.PATIENT, Role.DOCTOR, Role.NURSE, Role.RECEPTIONIST, Role.ADMIN)
DENIAL = {
    Expect.FORBIDDEN: (403, "forbidden"),
    Expect.NOT_FOUND: (404, "not_found"),
    Expect.UNAUTHENTICATED: (401, "unauthenticated"),
}


@dataclass(frozen=True)
class Rule:
    """One row of the table: the route, and per role the answer per target kind."""

    method: str
    path: str
    targets: tuple[Target, ...] = ()
    cells: dict[Role, dict[Target, Expect]] = dataclasses.field(default_factory=dict)

    @property
    def public(self) -> bool:
        return not self.targets


def public(route: str) -> Rule:
    method, path = route.split(" ")
    return Rule(method, path)


def row(route: str, targets: tuple[Target, ...], *answers: tuple[Expect, ...]) -> Rule:
    """``answers`` are in ROLES order; each has one answer per target kind."""
    method, path = route.split(" ")
    cells = {}
    for role, cell in zip(ROLES, answers, strict=True):
        assert len(cell) == len(targets), f"{route}: {role} needs {len(targets)} answers"
        cells[role] = dict(zip(targets, cell, strict=True))
    return Rule(method, path, targets, cells)


# The written policy. Columns: patient, doctor, nurse, receptionist, admin; inside each,
# one answer per target kind (own[, same_clinic_other_patient], other_tenant).
# fmt: off
EXPECTED: dict[str, Rule] = {
    "healthz": public("GET /healthz"),
    "readyz": public("GET /readyz"),
    "login": public("POST /api/v1/auth/login"),
    "refreshTokens": public("POST /api/v1/auth/refresh"),
    # --- browser session (issue 12, part A) ---
    "refreshBrowserSession": public("POST /api/v1/auth/session/refresh"),
    "registerPatient": public("POST /api/v1/auth/register"),
    #   patient    doctor     nurse      reception. admin
    "logout": row("POST /api/v1/auth/logout", NO_ID,
        (A,),      (A,),      (A,),      (A,),      (A,)),
    "getMe": row("GET /api/v1/me", NO_ID,
        (A,),      (A,),      (A,),      (A,),      (A,)),
    "updateMe": row("PATCH /api/v1/me", NO_ID,
        (A,),      (A,),      (A,),      (A,),      (A,)),
    "changePassword": row("POST /api/v1/me/password", NO_ID,
        (A,),      (A,),      (A,),      (A,),      (A,)),
    "getClinic": row("GET /api/v1/clinics/{clinic_id}", CLINIC_OBJECT,
        (A, N),    (A, N),    (A, N),    (A, N),    (A, N)),
    "updateClinic": row("PATCH /api/v1/clinics/{clinic_id}", CLINIC_OBJECT,
        (F, F),    (F, F),    (F, F),    (F, F),    (A, N)),
    "listUsers": row("GET /api/v1/users", NO_ID,
        (F,),      (F,),      (F,),      (F,),      (A,)),
    "createUser": row("POST /api/v1/users", NO_ID,
        (F,),      (F,),      (F,),      (F,),      (A,)),
    "getUser": row("GET /api/v1/users/{user_id}", CLINIC_OBJECT,
        (F, F),    (F, F),    (F, F),    (F, F),    (A, N)),
    "updateUser": row("PATCH /api/v1/users/{user_id}", CLINIC_OBJECT,
        (F, F),    (F, F),    (F, F),    (F, F),    (A, N)),
    "listPatients": row("GET /api/v1/patients", NO_ID,
        (F,),      (A,),      (A,),      (A,),      (A,)),
    "getPatient": row("GET /api/v1/patients/{patient_id}", PATIENT_OBJECT,
        (A, N, N), (A, A, N), (A, A, N), (A, A, N), (A, A, N)),
    "updatePatient": row("PATCH /api/v1/patients/{patient_id}", PATIENT_OBJECT,
        (A, N, N), (A, A, N), (A, A, N), (A, A, N), (A, A, N)),
    # --- records (issue 14, part R): the notes rows live in test_authz_matrix_records.py ---
    "listAudit": row("GET /api/v1/audit", NO_ID,
        (F,),      (F,),      (F,),      (F,),      (A,)),
    "getTurnCredentials": row("GET /api/v1/turn/credentials", NO_ID,
        (A,),      (A,),      (A,),      (A,),      (A,)),
}
# fmt: on
AUTHENTICATED = sorted(op for op, r in EXPECTED.items() if not r.public)
PUBLIC = sorted(op for op, r in EXPECTED.items() if r.public)
# Served without a token and outside the OpenAPI document: the document itself, and
# the Prometheus scrape (which names route templates, never ids).
# /socket.io/ is engine.io's endpoint (the /chat and /signal namespaces): it is
# not a REST operation. Who may connect and what each event may touch are
# checked per connection and per event: tests/test_chat_security.py and
# tests/test_signaling.py.
UNDOCUMENTED = {
    ("/api/v1/openapi.json", "GET"),
    ("/metrics", "GET"),
    ("/socket.io/", "GET"),
    ("/socket.io/", "POST"),
    ("/socket.io/", "OPTIONS"),
    # --- web pages (issue 12, part A): public files, no data (teleconsult/pages/routes.py) ---
    ("/", "GET"),
    ("/{name}.html", "GET"),
    ("/static/{path}", "GET"),
    # --- join links (issue 12 follow-up): the same page for any well-formed room id; the
    # room resolves through getRoomAppointment, signed in ---
    ("/join/{room_id}", "GET"),
}


@dataclass
class World:
    client: Client
    pool: asyncpg.Pool
    own: Tenant
    other: Tenant

    @property
    def foreign_ids(self) -> set[str]:
        """Ids of the other clinic that no answer to the own clinic may mention."""
        accounts = [*self.other.users.values(), self.other.other_patient]
        return {str(self.other.clinic_id)} | {str(a.user_id) for a in accounts if a}


@dataclass
class Prepared:
    """One request, ready to send, and what a mutation by it would change."""

    caller: Account | None
    params: dict[str, UUID]
    body: dict[str, Any] | None = None
    probe: Probe | None = None
    query: dict[str, str] | None = None
    headers: dict[str, str] | None = None  # fhir (issue 14, F): e.g. Bulk Data's Prefer
    data: bytes | None = None  # records (issue 14, R): a raw body (document chunks)


W = TypeVar("W", bound=World)
# Builds one request: (world, operation, role or None for no token, target kind).
PrepareFn = Callable[[W, str, Role | None, Target], Awaitable[Prepared]]


def read(pool: asyncpg.Pool, sql: str, *args: object) -> Probe:
    async def probe() -> object:
        return await pool.fetchval(sql, *args)

    return probe


def full_name(pool: asyncpg.Pool, user_id: UUID) -> Probe:
    return read(pool, "SELECT full_name FROM users WHERE id = $1", user_id)


async def prepare(world: World, op: str, role: Role | None, target: Target) -> Prepared:
    """Build the request for ``op`` as ``role`` (None: no token) on ``target``."""
    pool, own = world.pool, world.own
    caller = own[role] if role is not None else None
    tenant = world.other if target is Target.OTHER_TENANT else own
    assert own.other_patient is not None
    patient = {
        Target.OWN: own[Role.PATIENT],  # the patient caller's own record
        Target.SAME_CLINIC_OTHER_PATIENT: own.other_patient,
        Target.OTHER_TENANT: world.other[Role.PATIENT],
    }[target].user_id
    params = {
        "clinic_id": tenant.clinic_id,
        "user_id": tenant[Role.DOCTOR].user_id,
        "patient_id": patient,
    }
    prep = Prepared(caller, params)
    new_name = f"Renamed {secrets.token_hex(4)}"
    subject = caller or own[Role.ADMIN]
    match op:
        case "getMe" | "getClinic" | "getUser" | "getPatient":
            pass  # reads: the path is the whole request
        case "listUsers" | "listPatients" | "listAudit" | "getTurnCredentials":
            pass  # lists: scoped by the caller's clinic, checked by the leak check
        case "logout":
            # Logging out ends the session: use a fresh one, not the tenant's.
            if caller is not None:
                prep.caller = subject = await login(world.client, dataclasses.replace(caller))
            prep.probe = read(
                pool,
                "SELECT count(*) FROM auth_sessions WHERE user_id = $1 AND revoked_at IS NULL",
                subject.user_id,
            )
        case "updateMe":
            prep.body = {"full_name": new_name}
            prep.probe = full_name(pool, subject.user_id)
        case "changePassword":
            # It ends the caller's other sessions: use a throwaway account.
            fresh = await make_user(pool, own.clinic_id, role or Role.PATIENT, tag="pw")
            prep.caller = await login(world.client, fresh) if role is not None else None
            prep.body = {"current_password": PASSWORD, "new_password": "a-new-long-password"}
            prep.probe = read(pool, "SELECT password_hash FROM users WHERE id = $1", fresh.user_id)
        case "updateClinic":
            prep.body = {"name": new_name}
            prep.probe = read(pool, "SELECT name FROM clinics WHERE id = $1", tenant.clinic_id)
        case "createUser":
            email = unique_email("created")
            prep.body = {
                "email": email,
                "password": PASSWORD,
                "full_name": new_name,
                "role": "nurse",
            }
            prep.probe = read(pool, "SELECT count(*) FROM users WHERE email = $1", email)
        case "updateUser":
            # Never the admin the test signs in with: a throwaway user of the target clinic.
            victim = await make_user(pool, tenant.clinic_id, Role.NURSE, tag="victim")
            params["user_id"] = victim.user_id
            prep.body = {"full_name": new_name}
            prep.probe = full_name(pool, victim.user_id)
        case "updatePatient":
            prep.body = {"full_name": new_name}
            prep.probe = full_name(pool, patient)
        case _:
            raise AssertionError(f"no request factory for operation {op}")
    return prep


def _outcome_problems(label: str, content_type: str, text: str, code: str) -> list[str]:
    """fhir (issue 14, F): a denial under /fhir/ is an OperationOutcome carrying the code."""
    if content_type != "application/fhir+json":
        return [f"{label}: denial is {content_type}, not application/fhir+json"]
    body = json.loads(text)
    codes = [
        coding.get("code")
        for issue in body.get("issue", [])
        for coding in (issue.get("details") or {}).get("coding", [])
    ]
    if body.get("resourceType") != "OperationOutcome" or code not in codes:
        return [f"{label}: expected an OperationOutcome with code {code}, got {text[:160]}"]
    return []


async def check(
    world: World, label: str, method: str, path: str, prep: Prepared, want: Expect, success: int
) -> list[str]:
    """Send one request; return what went against ``want`` (empty when all is well)."""
    before = await prep.probe() if prep.probe else None
    kwargs: dict[str, Any] = {"headers": prep.caller.headers if prep.caller else {}}
    if prep.headers:  # fhir (issue 14, F)
        kwargs["headers"] = {**kwargs["headers"], **prep.headers}
    if prep.body is not None:
        kwargs["json"] = prep.body
    if prep.data is not None:  # records (issue 14, R)
        kwargs["data"] = prep.data
    if prep.query is not None:
        kwargs["params"] = prep.query
    resp = await world.client.request(method, path, **kwargs)
    text = await resp.text()
    found: list[str] = []
    if want is Expect.ALLOW:
        if resp.status != success:
            found.append(f"{label}: expected {success}, got {resp.status} {text[:160]}")
        leaked = sorted(i for i in world.foreign_ids if i in text)
        if leaked:
            found.append(f"{label}: answer mentions the other clinic's ids {leaked}")
    else:
        status, code = DENIAL[want]
        if resp.status != status:
            found.append(f"{label}: expected {status} {code}, got {resp.status} {text[:160]}")
        elif path.startswith("/fhir/"):  # fhir (issue 14, F): denials are OperationOutcomes
            found += _outcome_problems(label, resp.content_type, text, code)
        elif resp.content_type != "application/problem+json":
            found.append(f"{label}: denial is {resp.content_type}, not problem+json")
        elif (await resp.json(content_type=None)).get("code") != code:
            found.append(f"{label}: expected code {code}, got {text[:160]}")
    if prep.probe is not None:
        changed = await prep.probe() != before
        if want is Expect.ALLOW and not changed:
            found.append(f"{label}: allowed mutation changed nothing")
        if want is not Expect.ALLOW and changed:
            found.append(f"{label}: DENIED MUTATION CHANGED STATE")
    return found


async def openapi(client: Client) -> dict[str, Any]:
    resp = await client.get("/api/v1/openapi.json")
    assert resp.status == 200
    doc: dict[str, Any] = await resp.json()
    return doc


def success_status(doc: dict[str, Any], rule: Rule) -> int:
    responses = doc["paths"][rule.path][rule.method.lower()]["responses"]
    return int(next(code for code in responses if code.startswith("2")))


def path_of(rule: Rule, params: dict[str, UUID] | dict[str, str]) -> str:
    return rule.path.format(**{k: str(v) for k, v in params.items()})


def policy_tables() -> dict[str, Rule]:
    """Every written table: this file's, the scheduling, messaging and rtc ones."""
    # Imported here: those modules import this one.
    from tests.test_authz_matrix_fhir import FHIR  # fhir (issue 14, F)
    from tests.test_authz_matrix_messaging import MESSAGING
    from tests.test_authz_matrix_payments import PAYMENTS  # payments (issue 15)
    from tests.test_authz_matrix_recordings import RECORDINGS_TABLE  # issue 13, part R
    from tests.test_authz_matrix_records import RECORDS  # records (issue 14, part R)
    from tests.test_authz_matrix_rtc import RTC
    from tests.test_authz_matrix_scheduling import SCHEDULING

    tables = [EXPECTED, SCHEDULING, MESSAGING, RTC, FHIR, RECORDINGS_TABLE, PAYMENTS, RECORDS]
    ops = [op for table in tables for op in table]
    assert len(ops) == len(set(ops)), "an operation is in two tables"
    return EXPECTED | SCHEDULING | MESSAGING | RTC | FHIR | RECORDINGS_TABLE | PAYMENTS | RECORDS


async def route_problems(world: W, op: str, rule: Rule, prepare_fn: PrepareFn[W]) -> list[str]:
    """Every role on every target kind, then anonymous: what went against the table."""
    success = success_status(await openapi(world.client), rule)
    problems: list[str] = []
    for role in ROLES:
        for target in rule.targets:
            prep = await prepare_fn(world, op, role, target)
            label = f"{op} as {role.value} on {target.value}"
            path = path_of(rule, prep.params)
            want = rule.cells[role][target]
            problems += await check(world, label, rule.method, path, prep, want, success)
    prep = await prepare_fn(world, op, None, Target.OWN)
    anonymous = Expect.UNAUTHENTICATED
    path = path_of(rule, prep.params)
    problems += await check(world, f"{op} anonymous", rule.method, path, prep, anonymous, success)
    return problems


async def malformed_id_problems(
    world: W, table: dict[str, Rule], prepare_fn: PrepareFn[W]
) -> list[str]:
    """A caller who may act, with every path id replaced by a non-UUID: 404, no change."""
    problems: list[str] = []
    for op, rule in sorted(table.items()):
        if rule.public or "{" not in rule.path:
            continue
        role = next(r for r in ROLES if rule.cells[r][Target.OWN] is Expect.ALLOW)
        prep = await prepare_fn(world, op, role, Target.OWN)
        path = path_of(rule, dict.fromkeys(prep.params, "not-a-uuid"))
        label = f"{op} as {role.value} with a malformed id"
        problems += await check(world, label, rule.method, path, prep, Expect.NOT_FOUND, 0)
    return problems


async def assert_route_follows_policy(
    world: W, op: str, rule: Rule, prepare_fn: PrepareFn[W]
) -> None:
    """``op`` answers every role on every target kind, and no token, as ``rule`` says."""
    problems = await route_problems(world, op, rule, prepare_fn)
    assert problems == [], "\n".join(problems)


async def assert_malformed_ids_not_found(
    world: W, table: dict[str, Rule], prepare_fn: PrepareFn[W]
) -> None:
    """Every route of ``table`` with a non-UUID path id: 404, no change."""
    problems = await malformed_id_problems(world, table, prepare_fn)
    assert problems == [], "\n".join(problems)


@pytest.fixture
def world(client: Client, app_pool: asyncpg.Pool, tenant: Tenant, other_tenant: Tenant) -> World:
    return World(client, app_pool, tenant, other_tenant)


# --- the table and the document agree --------------------------------------------------


async def test_every_documented_route_has_a_policy_row_and_vice_versa(client: Client) -> None:
    doc = await openapi(client)
    documented = {
        (path, method.upper()): item["operationId"]
        for path, methods in doc["paths"].items()
        for method, item in methods.items()
    }
    table = policy_tables()
    written = {(r.path, r.method): op for op, r in table.items()}
    assert sorted(set(documented) - set(written)) == [], "routes without a policy row"
    assert sorted(set(written) - set(documented)) == [], "policy rows without a route"
    assert documented == written, "operationIds differ between the table and the document"
    for (path, method), op in documented.items():
        item = doc["paths"][path][method.lower()]
        if table[op].public:
            assert item["security"] == [], f"{op} is public in the table, not in the document"
            assert "x-policy-action" not in item, op
        else:
            assert item["security"] == [{"bearerAuth": []}], f"{op} must require a token"
            assert item.get("x-policy-action"), f"{op} names no policy action"


async def test_every_served_route_is_documented_or_known_undocumented(client: Client) -> None:
    # A route added beside the registry would skip its policy check and this matrix.
    served = {
        (route.resource.canonical, route.method)
        for route in client.app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    written = {(r.path, r.method) for r in policy_tables().values()}
    assert served - written == UNDOCUMENTED


# --- the matrix ----------------------------------------------------------------------


@pytest.mark.parametrize("op", AUTHENTICATED)
async def test_route_answers_every_role_as_the_policy_says(op: str, world: World) -> None:
    await assert_route_follows_policy(world, op, EXPECTED[op], prepare)


async def test_public_routes_work_without_a_token(client: Client, tenant: Tenant) -> None:
    doctor, nurse = tenant[Role.DOCTOR], tenant[Role.NURSE]
    bodies: dict[str, dict[str, Any] | None] = {
        "healthz": None,
        "readyz": None,
        "login": {"email": doctor.email, "password": PASSWORD},
        "refreshTokens": {"refresh_token": nurse.refresh_token},
        "registerPatient": {
            "clinic_id": str(tenant.clinic_id),
            "email": unique_email("registered"),
            "password": PASSWORD,
            "full_name": "New Patient",
        },
    }
    # --- browser session (issue 12, part A): the cookie a cookie-transport sign-in set ---
    browser = {"X-Session-Transport": "cookie"}
    signed_in = await client.post(
        "/api/v1/auth/login", json={"email": nurse.email, "password": PASSWORD}, headers=browser
    )
    assert signed_in.status == 200, await signed_in.text()
    bodies["refreshBrowserSession"] = None
    headers_of = {"refreshBrowserSession": browser}
    # --- end browser session ---
    assert sorted(bodies) == PUBLIC, "every public route needs a request here"
    doc = await openapi(client)
    problems = []
    for op, body in bodies.items():
        rule = EXPECTED[op]
        want = success_status(doc, rule)
        kwargs: dict[str, Any] = {} if body is None else {"json": body}
        if op in headers_of:
            kwargs["headers"] = headers_of[op]
        resp = await client.request(rule.method, rule.path, **kwargs)
        if resp.status != want:
            problems.append(f"{op} without a token: expected {want}, got {resp.status}")
    assert problems == [], "\n".join(problems)


# --- single behaviours -----------------------------------------------------------------


async def expect_problem(resp: ClientResponse, status: int, code: str) -> None:
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == "application/problem+json"
    assert (await resp.json(content_type=None))["code"] == code


async def test_patient_listing_patients_is_forbidden(client: Client, tenant: Tenant) -> None:
    resp = await client.get("/api/v1/patients", headers=tenant[Role.PATIENT].headers)
    await expect_problem(resp, 403, "forbidden")


async def test_audit_list_shows_only_the_callers_clinic(world: World) -> None:
    client, other = world.client, world.other
    # Activity in the other clinic, so it has rows that must not show.
    other_patient = other[Role.PATIENT].user_id
    other_doctor = other[Role.DOCTOR].headers
    note = {"body": "Other clinic's note."}
    await give_care(world.pool, other[Role.DOCTOR], other[Role.PATIENT])  # records (issue 14)
    for method, path, headers, body in [
        ("PATCH", f"/api/v1/clinics/{other.clinic_id}", other[Role.ADMIN].headers, {"name": "X"}),
        ("GET", f"/api/v1/patients/{other_patient}", other_doctor, None),
        ("POST", f"/api/v1/patients/{other_patient}/notes", other_doctor, note),
    ]:
        resp = await client.request(method, path, headers=headers, json=body)
        assert resp.status < 300, await resp.text()
    own_admin = world.own[Role.ADMIN]
    await chained(world.pool)
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {"limit": "200"} | ({"cursor": cursor} if cursor else {})
        resp = await client.get("/api/v1/audit", params=query, headers=own_admin.headers)
        assert resp.status == 200, await resp.text()
        page = await resp.json()
        rows += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    expected = await world.pool.fetch(
        "SELECT seq FROM audit_log WHERE clinic_id = $1 ORDER BY seq", own_admin.clinic_id
    )
    assert [row["seq"] for row in rows] == [r["seq"] for r in expected]
    assert any(row["actor_id"] == str(own_admin.user_id) for row in rows)
    foreign = world.foreign_ids
    for row in rows:
        mentioned = {row["actor_id"], row["object_id"], *map(str, row["detail"].values())}
        assert not mentioned & foreign, f"audit row {row['seq']} mentions the other clinic"


@pytest.mark.parametrize("role", [Role.DOCTOR, Role.PATIENT])
async def test_unknown_patient_id_is_not_found(client: Client, tenant: Tenant, role: Role) -> None:
    resp = await client.get(f"/api/v1/patients/{uuid.uuid4()}", headers=tenant[role].headers)
    await expect_problem(resp, 404, "not_found")


async def test_malformed_path_id_is_not_found(world: World) -> None:
    await assert_malformed_ids_not_found(world, EXPECTED, prepare)
