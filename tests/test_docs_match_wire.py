"""The docs match the wire: docs/protocol.md and docs/rest-guide.md against the code.

The error-code table of docs/protocol.md is generated from ``ERROR_MEANINGS``
(``python -m teleconsult.core.errors --write docs/protocol.md``); the refused-envelope
table, the ack example and the device body are checked against what the server
really answers; and every curl command of docs/rest-guide.md is run, in order,
against a real server, and must get the status and the answer its comment shows.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from teleconsult.api.problems import _HTTP_CODES
from teleconsult.client.chat import RETRYABLE
from teleconsult.client.crypto import DeviceKeys, seal
from teleconsult.core.errors import (
    ERROR_MEANINGS,
    ClientError,
    ErrorCode,
    with_error_code_table,
)
from teleconsult.core.identity import Role
from teleconsult.messaging import wire
from teleconsult.messaging.envelope import (
    MAX_RECIPIENTS,
    Envelope,
    EnvelopeError,
    EnvelopeErrorCode,
    decode_b64url,
    encode_b64url,
    to_json,
    to_msgpack,
)
from teleconsult.messaging.service import envelope_problem
from teleconsult.realtime.acks import error_ack
from tests.world import Account, Tenant

Client = TestClient[Any, Any]
DOCS = Path(__file__).resolve().parents[1] / "docs"
PROTOCOL_MD = DOCS / "protocol.md"
REST_GUIDE_MD = DOCS / "rest-guide.md"
ANY = "…"  # in a documented answer: a value that differs every time


def section(text: str, heading: str) -> str:
    """The text under ``heading`` (a whole markdown heading line) up to the next heading."""
    match = re.search(rf"^{re.escape(heading)}\n(.*?)(?=^#+ |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"no section {heading!r}"
    return match.group(1)


def json_blocks(text: str) -> list[Any]:
    return [json.loads(b) for b in re.findall(r"^```json\n(.*?)^```", text, re.M | re.S)]


def backticked(text: str) -> list[str]:
    """The `code spans` of markdown ``text``, outside fenced blocks."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.findall(r"`([^`\n]+)`", prose)


# -- the error codes --------------------------------------------------------------------


def test_the_error_code_table_is_the_one_the_code_renders() -> None:
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    assert with_error_code_table(text) == text, (
        "docs/protocol.md: run `python -m teleconsult.core.errors --write docs/protocol.md`"
    )


def test_every_error_code_has_a_meaning_and_a_status() -> None:
    assert [c for c in ErrorCode if c not in ERROR_MEANINGS] == []
    for code, meaning in ERROR_MEANINGS.items():
        assert meaning.meaning.strip(), code
        assert "|" not in meaning.meaning and "\n" not in meaning.meaning, code
        assert meaning.statuses and all(400 <= s <= 599 for s in meaning.statuses), code


def test_a_plain_http_error_gets_a_status_its_code_documents() -> None:
    for status, code in _HTTP_CODES.items():
        assert status in ERROR_MEANINGS[code].statuses, (status, code)


def test_the_codes_worth_sending_again_are_those_the_client_and_the_doc_retry() -> None:
    # REST-only codes (payments, docs/payments.md) never reach a chat or signaling ack,
    # so neither the chat client nor the acks section needs to know them.
    retry = {
        str(code)
        for code, meaning in ERROR_MEANINGS.items()
        if meaning.retry and not meaning.rest_only
    }
    assert retry == RETRYABLE
    acks = section(PROTOCOL_MD.read_text(encoding="utf-8"), "### Requests and acks")
    sentence = re.search(r"would give;[^.]*\)\.(.*?)are worth\s+sending again", acks, re.S)
    assert sentence, "the acks section should say which codes are worth sending again"
    assert set(backticked(sentence.group(1))) == retry


def test_every_internal_envelope_code_becomes_a_documented_wire_code() -> None:
    refused = refused_envelope_rows()
    for internal in EnvelopeErrorCode:
        problem = envelope_problem(EnvelopeError(internal, "detail", field="nonce"))
        code = ErrorCode(str(problem.code))
        assert problem.status in ERROR_MEANINGS[code].statuses, internal
        assert any(row.code == code for row in refused), f"{code} is not in the refused table"


def test_codes_that_never_travel_are_not_documented_as_wire_codes() -> None:
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    named = set(backticked(text))
    wire_codes = {str(c) for c in ErrorCode}
    # decrypt_failed is named once, as what the reference client reports when opening.
    for internal in EnvelopeErrorCode:
        if str(internal) not in wire_codes and internal is not EnvelopeErrorCode.DECRYPT_FAILED:
            assert str(internal) not in named, f"docs/protocol.md still names `{internal}`"


def test_the_ack_examples_carry_real_codes() -> None:
    acks = [
        block
        for block in json_blocks(PROTOCOL_MD.read_text(encoding="utf-8"))
        if isinstance(block, dict) and block.get("ok") is False
    ]
    assert acks, "docs/protocol.md should show an error ack"
    for ack in acks:
        code = ErrorCode(ack["error"]["code"])
        assert ack["error"]["status"] in ERROR_MEANINGS[code].statuses


def test_the_documented_error_ack_is_what_a_short_nonce_gets() -> None:
    (documented,) = [
        b
        for b in json_blocks(PROTOCOL_MD.read_text(encoding="utf-8"))
        if isinstance(b, dict) and b.get("ok") is False
    ]
    obj = to_json(sealed())
    obj["nonce"] = encode_b64url(bytes(23))
    with pytest.raises(ClientError) as refused:
        wire.envelope_of(obj, max_bytes=65536)
    assert error_ack(refused.value) == documented


# -- a refused envelope: the table against the server's answers ------------------------


@dataclass(frozen=True)
class Row:
    wrong: str
    code: str
    status: int
    fields: tuple[str, ...]  # the backticked field names; empty for "none"


def refused_envelope_rows() -> list[Row]:
    text = section(PROTOCOL_MD.read_text(encoding="utf-8"), "### A refused envelope")
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[2].isdigit():
            continue
        (code,) = backticked(cells[1])
        fields = () if cells[3].startswith("none") else tuple(backticked(cells[3]))
        rows.append(Row(cells[0], code, int(cells[2]), fields))
    assert rows, "docs/protocol.md has no refused-envelope table"
    for row in rows:
        ErrorCode(row.code)  # a real code
        assert row.status in ERROR_MEANINGS[ErrorCode(row.code)].statuses, row
    return rows


@dataclass(frozen=True)
class Answer:
    code: str
    status: int
    field: str | None


def answer_of(exc: ClientError) -> Answer:
    return Answer(str(exc.code), exc.status, exc.fields[0].field if exc.fields else None)


def check_row(rows: list[Row], phrase: str, answer: Answer) -> Row:
    """The one row whose "what is wrong" has ``phrase`` documents ``answer``."""
    found = [row for row in rows if phrase in row.wrong]
    assert len(found) == 1, f"{len(found)} rows say {phrase!r}"
    (row,) = found
    assert (answer.code, answer.status) == (row.code, row.status), (phrase, answer)
    if answer.field is None:
        assert row.fields == (), (phrase, answer)
    else:
        assert re.sub(r"\[\d+\]", "[i]", answer.field) in row.fields, (phrase, answer)
    return row


def sealed(
    keys: DeviceKeys | None = None,
    *,
    device_id: UUID | None = None,
    thread_id: UUID | None = None,
    recipients: dict[UUID, bytes] | None = None,
    plaintext: bytes = b"Good morning, doctor",
    client_msg_id: str | None = None,
) -> Envelope:
    return seal(
        plaintext=plaintext,
        thread_id=thread_id or uuid4(),
        sender=keys or DeviceKeys.generate(),
        sender_device_id=device_id or uuid4(),
        recipients=recipients or {},
        client_msg_id=client_msg_id,
    )


def refused_by_parsing(envelope: dict[str, Any] | bytes, *, max_bytes: int = 65536) -> Answer:
    """What the Socket.IO and MQTT transports answer (they call ``wire.envelope_of``)."""
    with pytest.raises(ClientError) as refused:
        wire.envelope_of(envelope, max_bytes=max_bytes)
    return answer_of(refused.value)


def json_with(**changes: Any) -> dict[str, Any]:
    return {**to_json(sealed()), **changes}


def parsing_cases() -> list[tuple[str, dict[str, Any] | bytes, int]]:
    env = sealed()
    keys: Any = to_json(env)["keys"]
    key = keys[0]
    many = [
        {"device_id": str(uuid4()), "sealed_key": key["sealed_key"]}
        for _ in range(MAX_RECIPIENTS + 1)
    ]
    bad_key = {"device_id": key["device_id"], "sealed_key": key["sealed_key"] + "="}
    return [
        ("does not decode", b"\xc1", 65536),
        ("not an array of 9 items", b"\x91\x01", 65536),
        ("bytes after it", to_msgpack(env) + b"\x00", 65536),
        ("a member missing", json_with(nonce=encode_b64url(bytes(23))), 65536),
        ("a member missing", json_with(client_msg_id="short"), 65536),
        ("a member missing", json_with(keys=[bad_key]), 65536),
        ("no entry", json_with(keys=[]), 65536),
        ("no entry", json_with(keys=many), 65536),
        ("twice", json_with(keys=[key, key]), 65536),
        ("is an integer", json_with(v=2), 65536),
        ("size limit", to_json(sealed(plaintext=bytes(2000))), 1024),
    ]


def test_each_refusal_while_parsing_is_the_documented_one() -> None:
    rows = refused_envelope_rows()
    for phrase, envelope, max_bytes in parsing_cases():
        check_row(rows, phrase, refused_by_parsing(envelope, max_bytes=max_bytes))


@dataclass
class Phone:
    """A signed-in user with a registered device."""

    account: Account
    keys: DeviceKeys = field(default_factory=DeviceKeys.generate)
    device_id: UUID = field(default_factory=uuid4)


async def registered(client: Client, account: Account) -> Phone:
    phone = Phone(account)
    body = {
        "x25519_public": encode_b64url(phone.keys.encryption_public_key),
        "ed25519_public": encode_b64url(phone.keys.signing_public_key),
    }
    resp = await client.post("/api/v1/devices", json=body, headers=account.headers)
    assert resp.status == 201, await resp.text()
    phone.device_id = UUID((await resp.json())["id"])
    return phone


async def rest_answer(client: Client, phone: Phone, thread_id: UUID, env: Any) -> Answer:
    envelope = to_json(env) if isinstance(env, Envelope) else env
    resp = await client.post(
        f"/api/v1/threads/{thread_id}/messages",
        json={"envelope": envelope},
        headers=phone.account.headers,
    )
    body = await resp.json(content_type=None)
    if resp.status < 400:
        return Answer("", resp.status, None)
    assert resp.content_type == "application/problem+json"
    errors = body.get("errors") or []
    return Answer(body["code"], resp.status, errors[0]["field"] if errors else None)


async def test_each_refusal_by_the_server_is_the_documented_one(
    client: Client, tenant: Tenant
) -> None:
    rows = refused_envelope_rows()
    patient = await registered(client, tenant[Role.PATIENT])
    doctor = await registered(client, tenant[Role.DOCTOR])
    resp = await client.post(
        "/api/v1/threads",
        json={"kind": "direct", "member_ids": [str(patient.account.user_id)]},
        headers=doctor.account.headers,
    )
    assert resp.status == 201, await resp.text()
    thread = UUID((await resp.json())["id"])
    peers = {doctor.device_id: doctor.keys.encryption_public_key}

    def envelope(**overrides: Any) -> Envelope:
        args: dict[str, Any] = {
            "device_id": patient.device_id,
            "thread_id": thread,
            "recipients": peers,
        }
        return sealed(patient.keys, **{**args, **overrides})

    async def check(phrase: str, env: Any, *, to: UUID = thread) -> None:
        check_row(rows, phrase, await rest_answer(client, patient, to, env))

    exercised = {phrase for phrase, _, _ in parsing_cases()}
    cases: list[tuple[str, Any, UUID]] = [
        ("thread it is sent to", envelope(thread_id=uuid4()), thread),
        ("not a current device of the sender", envelope(device_id=uuid4()), thread),
        ("does not verify", replace(envelope(), signature=bytes(64)), thread),
        ("seals for a device", envelope(recipients={**peers, uuid4(): bytes(range(32))}), thread),
        ("not a current member", envelope(), uuid4()),
        ("a member missing", json_with(nonce="AA=="), thread),
    ]
    for phrase, env, to in cases:
        await check(phrase, env, to=to)
        exercised.add(phrase)
    first = envelope(client_msg_id="retry-0123456789abcdef")
    assert (await rest_answer(client, patient, thread, first)).status == 200
    await check("already stored", envelope(client_msg_id="retry-0123456789abcdef"))
    exercised.add("already stored")
    # An envelope that is not an object never reaches the envelope checks.
    not_an_object = await rest_answer(client, patient, thread, "a string")
    assert not_an_object == Answer("validation_failed", 400, "body.envelope")
    below = section(PROTOCOL_MD.read_text(encoding="utf-8"), "### A refused envelope")
    assert "`validation_failed` naming\n`body.envelope` (REST)" in below
    unexercised = [r.wrong for r in rows if not any(p in r.wrong for p in exercised)]
    assert unexercised == [], "every row of the table is checked against the server"


# -- the device body ------------------------------------------------------------------


async def openapi(client: Client) -> dict[str, Any]:
    resp = await client.get("/api/v1/openapi.json")
    assert resp.status == 200
    document: dict[str, Any] = await resp.json()
    return document


def operation(document: dict[str, Any], operation_id: str) -> dict[str, Any]:
    for item in document["paths"].values():
        for op in item.values():
            if isinstance(op, dict) and op.get("operationId") == operation_id:
                return op
    raise AssertionError(f"no operation {operation_id}")


def request_schema(document: dict[str, Any], operation_id: str) -> dict[str, Any]:
    schema = operation(document, operation_id)["requestBody"]["content"]["application/json"]
    ref: str = schema["schema"]["$ref"]
    resolved: dict[str, Any] = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return resolved


async def test_the_documented_device_body_is_the_registration_schema(client: Client) -> None:
    schema = request_schema(await openapi(client), "registerDevice")
    text = section(PROTOCOL_MD.read_text(encoding="utf-8"), "## Device keys and registration")
    (body,) = json_blocks(text)
    assert set(body) == set(schema["properties"])
    assert set(schema["required"]) <= set(body)
    table = [line for line in text.splitlines() if line.startswith("| `")]
    assert {backticked(line)[0] for line in table} == set(schema["required"])


# -- the REST guide, run against a real server ------------------------------------------


@dataclass
class Command:
    text: str
    method: str
    url: str
    headers: dict[str, str]
    data: str | None
    status: int
    shows: Any  # the documented part of the answer, or None


def guide_commands() -> list[Command]:
    text = REST_GUIDE_MD.read_text(encoding="utf-8")
    blocks = re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S)
    assert blocks, "docs/rest-guide.md has no sh blocks"
    commands: list[Command] = []
    for block in blocks:
        lines = block.replace("\\\n", " ").splitlines()
        index = 0
        while index < len(lines):
            line = lines[index]
            assert line.startswith("curl "), f"not a curl command: {line!r}"
            comment = []
            index += 1
            while index < len(lines) and lines[index].startswith("#"):
                comment.append(lines[index].lstrip("#").strip())
                index += 1
            assert comment, f"no documented answer under {line!r}"
            commands.append(parse_curl(line, " ".join(comment)))
    return commands


def parse_curl(line: str, comment: str) -> Command:
    args = shlex.split(line)[1:]
    method, url, headers, data = "", "", {}, None
    while args:
        arg = args.pop(0)
        if arg in ("-s", "-sS", "--silent"):
            continue
        if arg in ("-X", "--request"):
            method = args.pop(0)
        elif arg in ("-H", "--header"):
            name, _, value = args.pop(0).partition(":")
            headers[name.strip()] = value.strip()
        elif arg in ("-d", "--data", "--data-raw"):
            data = args.pop(0)
        else:
            assert not arg.startswith("-"), f"the test does not know curl's {arg}"
            assert not url, f"two URLs in {line!r}"
            url = arg
    status, _, shown = comment.partition(" ")
    return Command(
        text=line,
        method=method or ("POST" if data is not None else "GET"),
        url=url,
        headers=headers,
        data=data,
        status=int(status),
        shows=json.loads(shown) if shown else None,
    )


def expand(value: str, env: dict[str, str], command: Command) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in env, f"${name} is not set before: {command.text}"
        return env[name]

    return re.sub(r"\$(?:\{([A-Z][A-Z0-9_]*)\}|([A-Z][A-Z0-9_]*))", one, value)


def documented_operation(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    for template, item in document["paths"].items():
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path) and method.lower() in item:
            op: dict[str, Any] = item[method.lower()]
            return op
    raise AssertionError(f"{method} {path} is not in the OpenAPI document")


def assert_shows(shown: Any, real: Any, where: str = "answer") -> None:
    """Every value the doc shows is in the real answer; ``…`` matches anything."""
    if shown == ANY:
        return
    if isinstance(shown, dict):
        assert isinstance(real, dict), (where, real)
        for key, value in shown.items():
            assert key in real, f"{where} has no {key!r}: {real}"
            assert_shows(value, real[key], f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(real, list) and len(real) >= len(shown), (where, real)
        for index, value in enumerate(shown):
            assert_shows(value, real[index], f"{where}[{index}]")
    else:
        assert shown == real, f"{where}: the doc shows {shown!r}, the server sent {real!r}"


async def appointment_of(pool: asyncpg.Pool, doctor: Account, patient_id: UUID) -> UUID:
    """A confirmed appointment of the clinic's doctor with the patient, as booking makes."""
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO doctor_profiles (user_id, clinic_id, consultation_minutes, "
            "buffer_minutes, currency, services) "
            "VALUES ($1, $2, 30, 10, 'KES', '{video}') ON CONFLICT DO NOTHING",
            doctor.user_id,
            doctor.clinic_id,
        )
        appointment_id: UUID = await conn.fetchval(
            "INSERT INTO appointments (clinic_id, doctor_id, patient_id, service, starts_at, "
            "ends_at, status) VALUES ($1, $2, $3, 'video', $4, $5, 'confirmed') RETURNING id",
            doctor.clinic_id,
            doctor.user_id,
            patient_id,
            start,
            start + timedelta(minutes=30),
        )
    return appointment_id


Hook = Callable[[dict[str, Any]], Awaitable[None]]


async def test_every_curl_command_of_the_rest_guide_gets_its_documented_answer(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    document = await openapi(client)
    keys = DeviceKeys.generate()
    doctor = tenant[Role.DOCTOR]
    env: dict[str, str] = {
        "BASE": "",
        "CLINIC_ID": str(tenant.clinic_id),
        "X25519_PUBLIC": encode_b64url(keys.encryption_public_key),
        "ED25519_PUBLIC": encode_b64url(keys.signing_public_key),
        "STAFF_TOKEN": doctor.access_token,
    }

    def tokens(answer: dict[str, Any]) -> None:
        env["TOKEN"], env["REFRESH"] = answer["access_token"], answer["refresh_token"]

    async def on_login(answer: dict[str, Any]) -> None:
        # The patient who registered signs in: the first sign-in names them.
        tokens(answer)
        env["DEVICE_TOKEN"] = answer["device_token"]
        if "PATIENT_ID" not in env:
            env["PATIENT_ID"] = answer["user"]["id"]
            patient_id = UUID(answer["user"]["id"])
            env["APPOINTMENT_ID"] = str(await appointment_of(app_pool, doctor, patient_id))

    async def on_tokens(answer: dict[str, Any]) -> None:
        tokens(answer)

    async def on_device(answer: dict[str, Any]) -> None:
        env["DEVICE_ID"] = answer["id"]

    async def on_thread(answer: dict[str, Any]) -> None:
        env["THREAD_ID"] = answer["id"]

    async def on_devices(answer: dict[str, Any]) -> None:
        recipients = {
            UUID(d["id"]): decode_b64url(d["x25519_public"], field="x25519_public")
            for d in answer["items"]
        }
        envelope = sealed(
            keys,
            device_id=UUID(env["DEVICE_ID"]),
            thread_id=UUID(env["THREAD_ID"]),
            recipients=recipients,
        )
        env["ENVELOPE"] = json.dumps(to_json(envelope))

    hooks: dict[str, Hook] = {
        "login": on_login,
        "refreshTokens": on_tokens,
        "registerDevice": on_device,
        "appointmentThread": on_thread,
        "listThreadDevices": on_devices,
    }
    ran: list[str] = []
    for command in guide_commands():
        url = expand(command.url, env, command)
        path = url.partition("?")[0]
        op = documented_operation(document, command.method, path)
        assert str(command.status) in op["responses"], (
            f"the OpenAPI document does not list {command.status} for {command.text}"
        )
        headers = {k: expand(v, env, command) for k, v in command.headers.items()}
        data = expand(command.data, env, command) if command.data is not None else None
        resp = await client.request(command.method, url, headers=headers, data=data)
        text = await resp.text()
        assert resp.status == command.status, f"{command.text}\n-> {resp.status} {text}"
        answer = json.loads(text) if text else None
        if command.status >= 400:
            assert resp.content_type == "application/problem+json", command.text
        if command.shows is not None:
            assert_shows(command.shows, answer)
        hook = hooks.get(op["operationId"])
        if hook is not None and resp.status < 300:
            assert isinstance(answer, dict)
            await hook(answer)
        ran.append(op["operationId"])
    assert set(hooks) <= set(ran), "the guide registers, signs in, adds a device and sends"
