"""The browser test harness: a real teleconsult server with a seeded clinic, driven in
Debian's Chromium by Playwright (async API).

Nothing is downloaded: Chromium is ``/usr/bin/chromium`` (``.ci/run`` installs it);
``playwright install`` is never run. Without that binary the browser tests skip with
the reason. One server, one clinic and one browser per test module (module-scoped
fixtures on the module's event loop: mark the module
``pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]``).

Fixtures:
- ``clinic``: the running server (``clinic.base_url``) and its seeded people: two
  doctors with profiles and opening hours every day (06:00-22:00 in ``CLINIC_TZ``, a
  zone where it is morning when the tests start: see ``pick_clinic_tz``), a patient
  (360 px phone), a second patient, a receptionist, an admin; TURN configured
  (``clinic.turn``) with the secret of a coturn the ``turn_relay`` fixture starts on
  request.
- ``new_page(role, lang="en")``: a page signed in through the sign-in form, in a fresh
  browser context of its own (a 360x740 phone for patients).
- ``shot(page, name)``: a PNG under ``test-artifacts/screenshots/``.
- ``axe(page)``: axe-core's violations on the page (injected through the DevTools
  protocol, which the page's CSP does not govern).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import pytest
import pytest_asyncio
from playwright.async_api import (
    Browser,
    BrowserContext,
    Page,
    ViewportSize,
    async_playwright,
    expect,
)

from teleconsult.accounts import store
from teleconsult.core.identity import Role
from teleconsult.turn.credentials import coturn_auth_config
from tests.coturnkit import Coturn, find_turnserver, free_port_tcp_udp
from tests.servers import ServerProcess
from tests.world import PASSWORD, password_hash, unique_email

# Waits, not timings: on a loaded machine (CI runs the whole suite on two cores) a page
# may take longer than Playwright's 5 s default to reach a state; the tests that the issue
# bounds (a decline seen within 2 s) keep their own explicit timeout.
expect.set_options(timeout=15_000)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
# The clinic's time zone is chosen when the tests start so that it is morning there
# (docs/pages.md, "Browser tests and the time of day"): the seeded hours (06:00-22:00
# every day) then leave at least nine hours of free slots that all fall on the clinic's
# current local day, whatever the hour in UTC. Africa/Nairobi when it is 06:00-12:00
# there, otherwise a zone without summer time where it is now 09:xx.
HOME_TZ = "Africa/Nairobi"
MORNING = (6, 12)  # local hours [start, end) in which HOME_TZ is kept
TARGET_HOUR = 9
# One zone per whole-hour UTC offset, none with daylight saving time (so the offset
# cannot move under a running test).
ZONES_BY_OFFSET = {
    -12: "Etc/GMT+12",
    -11: "Pacific/Pago_Pago",
    -10: "Pacific/Honolulu",
    -9: "Pacific/Gambier",
    -8: "Pacific/Pitcairn",
    -7: "America/Phoenix",
    -6: "America/Regina",
    -5: "America/Bogota",
    -4: "America/La_Paz",
    -3: "America/Sao_Paulo",
    -2: "Atlantic/South_Georgia",
    -1: "Atlantic/Cape_Verde",
    0: "Africa/Abidjan",
    1: "Africa/Lagos",
    2: "Africa/Maputo",
    3: "Africa/Nairobi",
    4: "Asia/Dubai",
    5: "Asia/Tashkent",
    6: "Asia/Dhaka",
    7: "Asia/Bangkok",
    8: "Asia/Singapore",
    9: "Asia/Tokyo",
    10: "Australia/Brisbane",
    11: "Pacific/Guadalcanal",
}


def pick_clinic_tz(now: datetime) -> str:
    """A time zone in which ``now`` is morning: HOME_TZ if it is between MORNING's hours
    there, otherwise the zone of ZONES_BY_OFFSET where it is TARGET_HOUR o'clock."""
    if MORNING[0] <= now.astimezone(ZoneInfo(HOME_TZ)).hour < MORNING[1]:
        return HOME_TZ
    offset = (TARGET_HOUR - now.astimezone(UTC).hour) % 24
    return ZONES_BY_OFFSET[offset - 24 if offset > 11 else offset]


CLINIC_TZ = pick_clinic_tz(datetime.now(UTC))
TURN_REALM = "teleconsult.test"
PHONE: ViewportSize = {"width": 360, "height": 740}
DESKTOP: ViewportSize = {"width": 1280, "height": 800}


@dataclass
class Person:
    user_id: UUID
    email: str
    full_name: str
    role: Role
    phone: str | None = None


@dataclass
class Turn:
    port: int
    secret: str

    @property
    def uris(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp,turn:127.0.0.1:{self.port}?transport=tcp"


@dataclass
class Clinic:
    base_url: str
    clinic_id: UUID
    server: ServerProcess
    turn: Turn
    people: dict[str, Person] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Person:
        return self.people[name]

    def url(self, path: str) -> str:
        return self.base_url + path


# The seeded clinic: names the pages show, and who signs in for new_page(role).
SEED = [
    ("doctor", Role.DOCTOR, "Dr Amina Diallo", None),
    ("doctor2", Role.DOCTOR, "Dr Jean Okafor", None),
    ("patient", Role.PATIENT, "Grace Mwangi", "+254711000001"),
    ("patient2", Role.PATIENT, "Moussa Traoré", "+221770000002"),
    ("receptionist", Role.RECEPTIONIST, "Fatou Ndiaye", None),
    ("admin", Role.ADMIN, "Admin Kamau", None),
]


async def _seed(dsn: str) -> tuple[UUID, dict[str, Person]]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        clinic = await store.insert_clinic(
            pool, name=f"Clinique du Lac {secrets.token_hex(2)}", timezone=CLINIC_TZ
        )
        people = {}
        for key, role, name, phone in SEED:
            email = unique_email(key)
            user = await store.insert_user(
                pool,
                clinic_id=clinic.id,
                email=email,
                password_hash=password_hash(),
                role=role,
                full_name=name,
                phone=phone,
            )
            assert user is not None
            people[key] = Person(user.id, email, name, role, phone)
        return clinic.id, people
    finally:
        await pool.close()


async def _open_hours(base_url: str, admin: Person, doctors: list[Person]) -> None:
    """Profiles and opening hours every day, 06:00-22:00 (CLINIC_TZ), through the API
    as the admin."""
    async with aiohttp.ClientSession(base_url) as http:
        async with http.post(
            "/api/v1/auth/login", json={"email": admin.email, "password": PASSWORD}
        ) as resp:
            assert resp.status == 200, await resp.text()
            token = (await resp.json())["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        for i, doctor in enumerate(doctors):
            profile = {
                "specialties": ["General practice"] if i == 0 else ["Paediatrics"],
                "languages": ["fr", "en"],
                "consultation_minutes": 30,
                "services": ["video", "audio", "in_person"],
            }
            async with http.put(
                f"/api/v1/doctors/{doctor.user_id}/profile", json=profile, headers=auth
            ) as resp:
                assert resp.status == 200, await resp.text()
            for weekday in range(7):
                rule = {"weekday": weekday, "start_time": "06:00", "end_time": "22:00"}
                async with http.post(
                    f"/api/v1/doctors/{doctor.user_id}/availability/rules", json=rule, headers=auth
                ) as resp:
                    assert resp.status == 201, await resp.text()


@pytest.fixture(scope="module")
def chromium_path() -> str:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (.ci/run does)")
    return str(CHROMIUM)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def clinic(
    database_url: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> AsyncIterator[Clinic]:
    root = tmp_path_factory.mktemp("pages")
    turn = Turn(port=free_port_tcp_udp(), secret=secrets.token_urlsafe(24))
    # --- room (issue 12, part B): a module may set SERVER_ENV = {"NAME": "value"} ---
    extra_env: dict[str, str] = dict(getattr(request.module, "SERVER_ENV", {}))
    server = ServerProcess(
        database_url,
        root,
        name="pages",
        TURN_SECRETS=turn.secret,
        TURN_URIS=turn.uris,
        **extra_env,
    )
    clinic_id, people = await _seed(database_url)
    await server.start()
    try:
        await _open_hours(server.base_url, people["admin"], [people["doctor"], people["doctor2"]])
        yield Clinic(server.base_url, clinic_id, server, turn, people)
    finally:
        await server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def turn_relay(
    clinic: Clinic, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Coturn]:
    """Debian's coturn on the port and with the secret the server's TURN_URIS name."""
    workdir = tmp_path_factory.mktemp("coturn")
    relay = Coturn(find_turnserver(), workdir, clinic.turn.port)
    await relay.start(coturn_auth_config([clinic.turn.secret], TURN_REALM))
    try:
        yield relay
    finally:
        await relay.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(
            executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()


NewContext = Callable[..., Awaitable[BrowserContext]]
NewPage = Callable[..., Awaitable[Page]]


@pytest_asyncio.fixture(loop_scope="module")
async def new_context(browser: Browser, clinic: Clinic) -> AsyncIterator[NewContext]:
    """Fresh browser contexts (own cookies, own cache), closed after the test."""
    contexts: list[BrowserContext] = []

    async def make(*, phone: bool = False, lang: str = "en") -> BrowserContext:
        context = await browser.new_context(
            base_url=clinic.base_url,
            viewport=PHONE if phone else DESKTOP,
            locale="fr-FR" if lang == "fr" else "en-GB",
            timezone_id=CLINIC_TZ,
            is_mobile=phone,
            has_touch=phone,
        )
        context.set_default_timeout(15_000)
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        await context.close()


LANDING = {
    Role.PATIENT: "/patient.html",
    Role.DOCTOR: "/doctor.html",
    Role.RECEPTIONIST: "/frontdesk.html",
    Role.ADMIN: "/frontdesk.html",
    Role.NURSE: "/frontdesk.html",
}


async def sign_in(page: Page, person: Person) -> None:
    """Through the sign-in form, as a person would; waits for the role's page."""
    await page.goto("/")
    await page.locator("#signin-email").fill(person.email)
    await page.locator("#signin-password").fill(PASSWORD)
    await page.locator("#signin-form button[type=submit]").click()
    await page.wait_for_url(f"**{LANDING[person.role]}*")


@pytest_asyncio.fixture(loop_scope="module")
async def new_page(clinic: Clinic, new_context: NewContext) -> NewPage:
    """``await new_page("patient")``: a signed-in page of that seeded person (or role
    name: "doctor", "patient", "receptionist", "admin"); patients on a 360 px phone."""

    async def make(who: str, *, lang: str = "en", phone: bool | None = None) -> Page:
        person = clinic[who]
        is_phone = person.role is Role.PATIENT if phone is None else phone
        context = await new_context(phone=is_phone, lang=lang)
        page = await context.new_page()
        await sign_in(page, person)
        await page.wait_for_selector("body.ready")
        return page

    return make


Shot = Callable[[Page, str], Awaitable[Path]]


@pytest.fixture
def shot(request: pytest.FixtureRequest) -> Shot:
    """Save a full-page PNG as ``<module>-<name>.png`` (a test artifact, gitignored)."""
    module = Path(str(request.node.fspath)).stem.removeprefix("test_")

    async def take(page: Page, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{module}-{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        return path

    return take


Axe = Callable[[Page], Awaitable[list[dict[str, Any]]]]


@pytest.fixture(scope="session")
def axe_source() -> str:
    return AXE.read_text(encoding="utf-8")


@pytest.fixture
def axe(axe_source: str) -> Axe:
    """axe-core's violations (WCAG 2.x A and AA rules and best practices) on the page."""

    async def run(page: Page) -> list[dict[str, Any]]:
        # Evaluated over the DevTools protocol: the page's CSP (no inline script) stays on.
        await page.evaluate(axe_source + "\n;undefined")
        result = await page.evaluate(
            """async () => {
                const r = await axe.run(document, {resultTypes: ["violations"]});
                return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                    nodes: v.nodes.map(n => n.target.join(" ")).slice(0, 5)}));
            }"""
        )
        return list(result)

    return run


def summarise_axe(page_name: str, violations: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for v in violations:
        counts[v["impact"] or "none"] = counts.get(v["impact"] or "none", 0) + 1
    detail = json.dumps(violations, ensure_ascii=False) if violations else ""
    return f"axe-core on {page_name}: {len(violations)} violation(s) {counts} {detail}".strip()
