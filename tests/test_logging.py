"""Logging: JSON lines, request ids, and an access log that carries no patient data."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient

from teleconsult.core.logging import (
    ACCESS_LOGGER_NAME,
    NOISY_LOGGERS,
    REQUEST_ID_KEY,
    ClientNoise,
    JsonAccessLogger,
    JsonFormatter,
    RequestIdFilter,
    configure_logging,
    redact_query_strings,
    request_id_middleware,
)
from teleconsult.core.settings import LogSettings

handler_logger = logging.getLogger("tests.handler")


async def _item(request: web.Request) -> web.Response:
    handler_logger.info("looking up item")
    return web.json_response(
        {"id": request.match_info["item_id"], "request_id": request[REQUEST_ID_KEY]}
    )


async def _missing(request: web.Request) -> web.Response:
    raise web.HTTPNotFound()


def _app() -> web.Application:
    app = web.Application(middlewares=[request_id_middleware])
    app.router.add_get("/items/{item_id}", _item)
    app.router.add_get("/missing", _missing)
    return app


def _capture(name: str) -> tuple[logging.Logger, logging.Handler, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    target = logging.getLogger(name)
    target.addHandler(handler)
    return target, handler, stream


@pytest.fixture
def access_log() -> Iterator[io.StringIO]:
    """JSON lines written to the access logger during the test."""
    target, handler, stream = _capture(ACCESS_LOGGER_NAME)
    previous = target.level
    target.setLevel(logging.INFO)
    yield stream
    target.setLevel(previous)
    target.removeHandler(handler)


@pytest.fixture
def handler_log() -> Iterator[io.StringIO]:
    """JSON lines written by the test handlers."""
    target, handler, stream = _capture(handler_logger.name)
    previous = target.level
    target.setLevel(logging.INFO)
    yield stream
    target.setLevel(previous)
    target.removeHandler(handler)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo configure_logging's changes to the root and third-party loggers."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    for name, noisy_level in noisy.items():
        logging.getLogger(name).setLevel(noisy_level)


async def _client(aiohttp_client: AiohttpClient) -> TestClient[web.Request, None]:
    server = TestServer(_app())
    # server_kwargs of aiohttp_client do not reach the AppRunner; start it ourselves.
    await server.start_server(access_log_class=JsonAccessLogger)
    return await aiohttp_client(server)


async def _lines(stream: io.StringIO, count: int = 1) -> list[dict[str, Any]]:
    """Parsed JSON lines, waiting for ``count``: the access log is written after the reply."""
    for _ in range(100):
        if len(stream.getvalue().splitlines()) >= count:
            break
        await asyncio.sleep(0.01)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _record(msg: str, *args: object, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("tests.unit", logging.WARNING, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_json_formatter_writes_standard_fields() -> None:
    line = JsonFormatter().format(_record("%s apples", 3))

    entry = json.loads(line)
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "tests.unit"
    assert entry["msg"] == "3 apples"
    assert entry["ts"].endswith("Z")
    assert "\n" not in line


def test_json_formatter_includes_exception_text() -> None:
    try:
        raise ValueError("bad value")
    except ValueError:
        record = logging.LogRecord(
            "tests.unit", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
        )

    entry = json.loads(JsonFormatter().format(record))

    assert "ValueError: bad value" in entry["exc"]


def test_json_formatter_keeps_serialisable_extras_only() -> None:
    record = _record("event", clinic_id=12, tags=["a"], handle=object())

    entry = json.loads(JsonFormatter().format(record))

    assert entry["clinic_id"] == 12
    assert entry["tags"] == ["a"]
    assert "handle" not in entry


@pytest.mark.usefixtures("restore_logging")
def test_configure_logging_twice_installs_one_handler(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogSettings(level="INFO", format="json"))
    configure_logging(LogSettings(level="INFO", format="json"))
    logging.getLogger("tests.configured").info("once")

    lines = capsys.readouterr().err.splitlines()

    assert len(lines) == 1
    assert json.loads(lines[0])["msg"] == "once"


@pytest.mark.usefixtures("restore_logging")
def test_configure_logging_text_format_writes_plain_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(LogSettings(level="INFO", format="text"))
    logging.getLogger("tests.configured").info("plain %s", "text")

    err = capsys.readouterr().err

    assert "INFO tests.configured" in err
    assert err.rstrip().endswith("plain text")


@pytest.mark.usefixtures("restore_logging")
def test_configure_logging_silences_aiohttp_default_access_log() -> None:
    configure_logging(LogSettings(level="DEBUG", format="json"))

    assert not logging.getLogger("aiohttp.access").isEnabledFor(logging.INFO)


async def test_access_log_records_route_template_without_query(
    aiohttp_client: AiohttpClient, access_log: io.StringIO
) -> None:
    client = await _client(aiohttp_client)

    async with client.get("/items/42", params={"name": "Alice", "phone": "5550100"}) as resp:
        assert resp.status == 200

    (entry,) = await _lines(access_log)
    assert entry["route"] == "/items/{item_id}"
    assert entry["method"] == "GET"
    assert entry["status"] == 200
    assert entry["duration_ms"] >= 0
    assert entry["request_id"] == resp.headers["X-Request-ID"]
    output = access_log.getvalue()
    assert "Alice" not in output
    assert "5550100" not in output
    assert "/items/42" not in output


async def test_access_log_marks_unknown_paths_unmatched(
    aiohttp_client: AiohttpClient, access_log: io.StringIO
) -> None:
    client = await _client(aiohttp_client)

    async with client.get("/patients/secret-name") as resp:
        assert resp.status == 404

    (entry,) = await _lines(access_log)
    assert entry["route"] == "unmatched"
    assert entry["status"] == 404
    assert "secret-name" not in access_log.getvalue()


async def test_valid_request_id_is_echoed(aiohttp_client: AiohttpClient) -> None:
    client = await _client(aiohttp_client)

    async with client.get("/items/1", headers={"X-Request-ID": "abc-123.DEF_4"}) as resp:
        assert resp.headers["X-Request-ID"] == "abc-123.DEF_4"


async def test_missing_request_id_is_generated(aiohttp_client: AiohttpClient) -> None:
    client = await _client(aiohttp_client)

    async with client.get("/items/1") as resp:
        generated = resp.headers["X-Request-ID"]

    assert len(generated) == 32
    int(generated, 16)


@pytest.mark.parametrize("bad", ["x" * 65, "has space", "semi;colon", "Ünïcode"])
async def test_invalid_request_id_is_replaced(aiohttp_client: AiohttpClient, bad: str) -> None:
    client = await _client(aiohttp_client)

    async with client.get("/items/1", headers={"X-Request-ID": bad}) as resp:
        replaced = resp.headers["X-Request-ID"]

    assert replaced != bad
    assert len(replaced) == 32


async def test_request_id_is_stored_on_the_request(aiohttp_client: AiohttpClient) -> None:
    client = await _client(aiohttp_client)

    async with client.get("/items/1", headers={"X-Request-ID": "trace-0"}) as resp:
        body = await resp.json()

    assert body["request_id"] == "trace-0"


async def test_request_id_is_set_on_http_exception_responses(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await _client(aiohttp_client)

    async with client.get("/missing", headers={"X-Request-ID": "trace-1"}) as resp:
        assert resp.status == 404
        assert resp.headers["X-Request-ID"] == "trace-1"


async def test_records_logged_during_a_request_carry_its_id(
    aiohttp_client: AiohttpClient, handler_log: io.StringIO
) -> None:
    client = await _client(aiohttp_client)

    async with client.get("/items/1", headers={"X-Request-ID": "trace-2"}):
        pass

    (entry,) = await _lines(handler_log)
    assert entry["msg"] == "looking up item"
    assert entry["request_id"] == "trace-2"


def _failed_record(logger: str, fail: Any) -> logging.LogRecord:
    try:
        fail()
    except Exception:
        return logging.LogRecord(
            logger, logging.ERROR, __file__, 1, "handler error", None, sys.exc_info()
        )
    raise AssertionError("did not fail")


def test_a_clients_malformed_frame_is_a_warning_without_its_traceback() -> None:
    record = _failed_record("engineio.server", lambda: json.loads("[[[ token=abc"))
    assert ClientNoise().filter(record)
    assert (record.levelname, record.exc_info) == ("WARNING", None)
    assert record.getMessage() == "refused malformed client input (JSONDecodeError)"


def test_an_error_raised_in_our_own_handler_keeps_its_traceback() -> None:
    def ours() -> None:  # raised here, not in a library's decoding code
        raise ValueError("a bug")

    record = _failed_record("engineio.server", ours)
    assert ClientNoise().filter(record)
    assert record.levelname == "ERROR" and record.exc_info is not None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET /socket.io/?EIO=4&token=abc HTTP/1.1", "GET /socket.io/?[redacted] HTTP/1.1"),
        ("b'GET /api/v1/patients?q=Jane'", "b'GET /api/v1/patients?[redacted]'"),
        ("http://h:1/x?a=1&b=2 and /y?z", "http://h:1/x?[redacted] and /y?[redacted]"),
        ("is it? yes", "is it? yes"),
    ],
)
def test_query_strings_are_redacted(text: str, expected: str) -> None:
    assert redact_query_strings(text) == expected
