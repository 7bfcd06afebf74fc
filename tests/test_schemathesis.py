"""Schemathesis against the live server: no 5xx, and every answer is one the document allows.

The real server runs as a subprocess (``python -m teleconsult serve``) on a fresh
database, and the schemathesis CLI runs against its live ``/api/v1/openapi.json``
once per role, so that each role's operations get past the policy check. Each
pass signs in as a user of its own clinic: what one pass changes (an admin may
disable users, even itself) cannot leave another pass with a dead token.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from time import monotonic, sleep
from typing import Any

import asyncpg
import pytest

from teleconsult.accounts import store
from teleconsult.accounts.bootstrap import CREDENTIALS_FILE, read_credentials
from teleconsult.core.identity import Role
from tests.conftest import settings_env
from tests.dbutil import create_database_sync, drop_database_sync
from tests.world import PASSWORD, make_user, unique_email

pytestmark = pytest.mark.slow

# Another seed (or more examples) explores further: SCHEMATHESIS_SEED=1 pytest ...
SEED = int(os.environ.get("SCHEMATHESIS_SEED", "20241124"))
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "25"))
# Every check but two. positive_data_acceptance expects any schema-valid input to
# succeed, which a server with rules beyond the schema cannot satisfy: an opaque
# cursor must be one it issued, `current_password` must be the right one, text
# may not hold U+0000. object_level_authorization needs a second identity per
# run; tenant isolation has its own tests.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "ignored_auth",
    "use_after_free",
    "ensure_resource_availability",
)
# A pass that fails prints schemathesis' report, then this much of the server's log.
LOG_TAIL_CHARS = 20_000


@dataclass(frozen=True)
class LiveServer:
    base_url: str
    database_url: str
    data_dir: Path
    log: Path

    @property
    def openapi_url(self) -> str:
        return f"{self.base_url}/api/v1/openapi.json"

    def log_tail(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL_CHARS:]

    def call(
        self, method: str, path: str, body: dict[str, Any], token: str | None = None
    ) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(
            self.base_url + path, data=json.dumps(body).encode(), headers=headers, method=method
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            answer: dict[str, Any] = json.load(resp)
        return answer

    def post(self, path: str, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
        return self.call("POST", path, body, token)

    def login(self, email: str, password: str = PASSWORD) -> dict[str, Any]:
        return self.post("/api/v1/auth/login", {"email": email, "password": password})


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until_healthy(proc: subprocess.Popen[bytes], server: LiveServer) -> None:
    deadline = monotonic() + 60
    while monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(server.base_url + "/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        sleep(0.2)
    pytest.fail(f"server did not answer /healthz within 60 s:\n{server.log_tail()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("schemathesis-server")
    database_url = create_database_sync()
    port = _free_port()
    server = LiveServer(
        base_url=f"http://127.0.0.1:{port}",
        database_url=database_url,
        data_dir=root / "data",
        log=root / "server.log",
    )
    # The server's settings all come from settings_env (as for the in-process app);
    # from outside only what Python needs and libpq-style PG* variables, which the
    # database URL may rely on (asyncpg reads them, as dbutil's connection does).
    env = {
        k: v
        for k, v in os.environ.items()
        if k in ("PATH", "HOME", "LANG", "TMPDIR") or k.startswith(("LC_", "PG"))
    }
    env.update(settings_env(database_url, server.data_dir, PORT=str(port), HOST="127.0.0.1"))
    try:
        with server.log.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "teleconsult", "serve"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_until_healthy(proc, server)
            yield server
        finally:
            _stop(proc)
    finally:
        drop_database_sync(database_url)


@dataclass(frozen=True)
class Member:
    """A signed-in user of a clinic created for one pass."""

    clinic_id: str
    user_id: str
    access_token: str


async def _clinic_with(database_url: str, roles: list[Role]) -> tuple[str, list[str]]:
    """A new clinic and one user per role in it (straight into the database); their e-mails."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        clinic = await store.insert_clinic(pool, name="Fuzzed clinic", timezone="UTC")
        accounts = [await make_user(pool, clinic.id, role, tag="st") for role in roles]
    finally:
        await pool.close()
    return str(clinic.id), [account.email for account in accounts]


def _member(server: LiveServer, email: str, password: str = PASSWORD) -> Member:
    tokens = server.login(email, password)
    user = tokens["user"]
    return Member(
        clinic_id=user["clinic_id"], user_id=user["id"], access_token=tokens["access_token"]
    )


def _at(days: int, hour: int) -> str:
    """An hour (UTC) so many days from today, as ISO 8601."""
    day = datetime.now(UTC).date() + timedelta(days=days)
    return datetime.combine(day, time(hour), tzinfo=UTC).isoformat()


def _open_calendar(
    server: LiveServer, token: str, doctor_id: str, patient_id: str, patient_token: str
) -> dict[str, list[str]]:
    """Give a doctor a profile, every day 00:00-23:59 and two bookings: the ids and
    times that let schemathesis reach the scheduling operations' success paths.

    ``token`` (an admin, or the doctor) manages the calendar and books one
    appointment for the patient (confirmed); the patient books the other
    (requested). The extra rule and exception lie outside every window used, so
    deleting them changes nothing.
    """
    doctor = f"/api/v1/doctors/{doctor_id}"
    server.call(
        "PUT",
        f"{doctor}/profile",
        {"consultation_minutes": 30, "services": ["video", "in_person", "audio", "chat"]},
        token,
    )
    for weekday in range(7):
        server.post(
            f"{doctor}/availability/rules",
            {"weekday": weekday, "start_time": "00:00", "end_time": "23:59"},
            token,
        )
    rule = server.post(
        f"{doctor}/availability/rules",
        {
            "weekday": 0,
            "start_time": "01:00",
            "end_time": "02:00",
            "kind": "break",
            "valid_from": "2000-01-03",
            "valid_until": "2000-01-03",
        },
        token,
    )
    exception = server.post(
        f"{doctor}/availability/exceptions",
        {"starts_at": _at(400, 1), "ends_at": _at(400, 2), "kind": "unavailable"},
        token,
    )
    # One feed to revoke, one whose URL keeps working.
    feed, kept = (server.post(f"{doctor}/calendar-feeds", {}, token) for _ in range(2))
    booked = [
        server.post(
            "/api/v1/appointments",
            {"doctor_id": doctor_id, "patient_id": patient_id, "service": "video"}
            | {"starts_at": _at(2, 10)},
            token,
        ),
        server.post(
            "/api/v1/appointments",
            {"doctor_id": doctor_id, "service": "in_person", "starts_at": _at(3, 10)},
            patient_token,
        ),
    ]
    return {
        "doctor_id": [doctor_id],
        "patient_id": [patient_id],
        "appointment_id": [a["id"] for a in booked],
        "rule_id": [rule["id"]],
        "exception_id": [exception["id"]],
        "feed_id": [feed["id"]],
        "token": [kept["url"].rsplit("/", 1)[-1]],
        "window_from": [_at(1, 0)],
        "window_to": [_at(15, 0)],
        "starts_at": [_at(days, hour) for days in (4, 5, 6) for hour in (8, 14)],
        "day": [_at(2, 0)[:10], _at(3, 0)[:10]],
    }


# Where each dictionary's values go; a name not listed here feeds the path
# parameter of the same name.
BINDINGS: dict[str, tuple[str, ...]] = {
    "clinic_id": ("path.clinic_id", "body.clinic_id"),
    "doctor_id": (
        "path.doctor_id",
        "body.doctor_id",
        "query.doctor",
        "query.schedule",
        "query.practitioner",
    ),
    "patient_id": ("path.patient_id", "body.patient_id", "query.patient"),
    # Times that make a window, a booking or a move succeed.
    "window_from": ("query.from", "query.start"),
    "window_to": ("query.to", "query.end"),
    "starts_at": ("body.starts_at",),
    "day": ("query.day",),
    # Forged cursors (FORGED_CURSORS) where the lists take one.
    "cursor": ("query.cursor",),
}


def _cursor(value: object) -> str:
    raw = json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# Cursors are opaque but not signed: schemathesis fuzzes them as strings, and these
# are the well-formed forgeries a string generator would hardly find (issue 11: a
# year-1 timestamp at +05:00 was a 500 on every list).
_SOME_ID = "0b7e6a4c-2f57-4e0a-9d0c-3f6f0a1b2c3d"
FORGED_CURSORS = [
    _cursor(["0001-01-01T00:00:00+05:00", _SOME_ID]),
    _cursor(["9999-12-31T23:59:59-05:00", _SOME_ID]),
    _cursor(["0001-01-01T00:00:00+00:00", _SOME_ID]),
    _cursor(["2026-01-01T00:00:00", _SOME_ID]),
    _cursor(["2026-01-01T00:00:00+00:00", "not-a-uuid"]),
    _cursor(["2026-01-01T00:00:00+00:00", _SOME_ID, "extra"]),
    _cursor({"created": "2026-01-01T00:00:00+00:00", "id": _SOME_ID}),
    _cursor([[[[[[[[[[]]]]]]]]]]),
    _cursor([12, 34]),
    base64.urlsafe_b64encode(b"\xff\xfe\x00").decode(),
]


def _config(ids: dict[str, list[str]]) -> str:
    """A schemathesis.toml that feeds real ids and times to parameters (see BINDINGS).

    Each parameter takes a real value half of the time and a generated one
    otherwise, so both the found and the not-found paths are exercised.
    """
    ids = {**ids, "cursor": FORGED_CURSORS}
    lines = []
    for name, values in ids.items():
        lines += [f"[dictionaries.{name}]", f"values = {json.dumps(values)}", ""]
    lines.append("[parameters]")
    for name in ids:
        for key in BINDINGS.get(name, (f"path.{name}",)):
            lines.append(f'"{key}" = {{ dictionary = "{name}", probability = 0.5 }}')
    return "\n".join(lines) + "\n"


def _run_schemathesis(
    server: LiveServer,
    token: str | None,
    tmp_path: Path,
    *,
    ids: dict[str, list[str]],
    extra: tuple[str, ...] = (),
    checks: tuple[str, ...] = CHECKS,
) -> str:
    """``token`` None: no Authorization header of ours, schemathesis makes its own."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(ids), encoding="utf-8")
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "--no-color",
        "run",
        server.openapi_url,
        *(("--header", f"Authorization: Bearer {token}") if token is not None else ()),
        "--checks",
        ",".join(checks),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
        *extra,
    ]
    # cwd: schemathesis looks for a config file in the working directory and its parents.
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False
    )
    report = f"{result.stdout}\n{result.stderr}"
    print(report)  # shown by `pytest -rP`: coverage and warnings of a passing run
    assert result.returncode == 0, (
        f"schemathesis found problems:\n{report}\n--- server log (tail) ---\n{server.log_tail()}"
    )
    return report


def test_admin_operations_conform_to_the_document(live_server: LiveServer, tmp_path: Path) -> None:
    """As the first admin that a fresh server creates, with users and a patient to work on."""
    credentials = read_credentials(live_server.data_dir / CREDENTIALS_FILE)
    admin = _member(live_server, credentials["email"], credentials["password"])
    # A nurse the admin may rename, promote or disable without ending its own session.
    nurse = live_server.post(
        "/api/v1/users",
        {
            "email": unique_email("st-nurse"),
            "password": PASSWORD,
            "full_name": "Target Nurse",
            "role": "nurse",
        },
        admin.access_token,
    )
    patient_email = unique_email("st-patient")
    live_server.post(
        "/api/v1/auth/register",
        {
            "clinic_id": admin.clinic_id,
            "email": patient_email,
            "password": PASSWORD,
            "full_name": "Target Patient",
            "date_of_birth": "1990-01-01",
        },
    )
    patient = _member(live_server, patient_email)
    doctor = live_server.post(
        "/api/v1/users",
        {
            "email": unique_email("st-doctor"),
            "password": PASSWORD,
            "full_name": "Target Doctor",
            "role": "doctor",
        },
        admin.access_token,
    )
    calendar = _open_calendar(
        live_server,
        admin.access_token,
        doctor["id"],
        patient.user_id,
        patient.access_token,
    )
    _run_schemathesis(
        live_server,
        admin.access_token,
        tmp_path,
        ids={
            "clinic_id": [admin.clinic_id],
            "user_id": [nurse["id"], patient.user_id],
            **calendar,
        },
        # Logging out would end the token's session mid-run; it has its own pass.
        extra=("--exclude-operation-id", "logout"),
    )


def test_clinician_operations_conform_to_the_document(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """As a doctor, who may read and write clinical notes."""
    clinic_id, (doctor_email, patient_email) = asyncio.run(
        _clinic_with(live_server.database_url, [Role.DOCTOR, Role.PATIENT])
    )
    doctor = _member(live_server, doctor_email)
    patient = _member(live_server, patient_email)
    calendar = _open_calendar(
        live_server, doctor.access_token, doctor.user_id, patient.user_id, patient.access_token
    )
    _run_schemathesis(
        live_server,
        doctor.access_token,
        tmp_path,
        ids={"clinic_id": [clinic_id], **calendar},
        extra=("--exclude-operation-id", "logout"),
    )


def test_patient_operations_conform_to_the_document(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """As a patient who registered through the API, on their own record and bookings."""
    clinic_id, (admin_email, doctor_email) = asyncio.run(
        _clinic_with(live_server.database_url, [Role.ADMIN, Role.DOCTOR])
    )
    email = unique_email("st-self")
    live_server.post(
        "/api/v1/auth/register",
        {"clinic_id": clinic_id, "email": email, "password": PASSWORD, "full_name": "Self"},
    )
    patient = _member(live_server, email)
    admin, doctor = _member(live_server, admin_email), _member(live_server, doctor_email)
    calendar = _open_calendar(
        live_server, admin.access_token, doctor.user_id, patient.user_id, patient.access_token
    )
    _run_schemathesis(
        live_server,
        patient.access_token,
        tmp_path,
        ids={"clinic_id": [clinic_id], **calendar},
        extra=("--exclude-operation-id", "logout"),
    )


def test_logout_conforms_to_the_document(live_server: LiveServer, tmp_path: Path) -> None:
    """Logout alone: after the first success the session is gone and every answer is 401."""
    clinic_id, (email,) = asyncio.run(_clinic_with(live_server.database_url, [Role.PATIENT]))
    member = _member(live_server, email)
    _run_schemathesis(
        live_server,
        member.access_token,
        tmp_path,
        ids={"clinic_id": [clinic_id]},
        extra=("--include-operation-id", "logout"),
    )


def test_forged_credentials_and_headers_never_make_a_5xx(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """No token of ours: schemathesis generates the Authorization header (the bearer
    scheme's security parameter) and every other declared header, e.g. X-Request-ID,
    on every operation. Whatever it sends is a 4xx (401 for the credentials), never a
    5xx. The conformance checks that assume a signed-in caller are left out."""
    clinic_id, _ = asyncio.run(_clinic_with(live_server.database_url, []))
    _run_schemathesis(
        live_server,
        None,
        tmp_path,
        ids={"clinic_id": [clinic_id]},
        extra=("--generation-with-security-parameters", "true"),
        checks=(
            "not_a_server_error",
            "status_code_conformance",
            "content_type_conformance",
            "response_schema_conformance",
        ),
    )
