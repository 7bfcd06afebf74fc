"""Logging set-up: JSON (or text) lines on stderr, request ids, a PHI-free access log.

Patient data must never reach the logs. The access log therefore records the
route template (``/api/v1/patients/{patient_id}``), never the raw path and
never the query string (patient search by name or phone goes there), and no
body. aiohttp's own access logger, which writes the raw request line, is
silenced in case it is ever left wired.

What clients send is not our failure. A malformed Socket.IO or Engine.IO frame,
an HTTP request aiohttp cannot parse, or garbage on the MQTT port makes the
libraries log an ERROR with a traceback, and the traceback of an HTTP parse
error quotes the raw request line, query string and all. :class:`ClientNoise`
turns such records into one WARNING line naming the kind of error, without the
traceback. As a last net, every line has URL query strings (``/path?...``)
replaced by ``?[redacted]``, so a token or a patient search sent in a URL never
reaches the log.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import traceback
import uuid
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from teleconsult.core.metrics import method_label, route_template
from teleconsult.core.settings import LogSettings

REQUEST_ID_HEADER = "X-Request-ID"
ACCESS_LOGGER_NAME = "teleconsult.access"
# A typed key: aiohttp 3.14 warns (an error under pytest) on plain string keys.
REQUEST_ID_KEY = web.RequestKey("request_id", str)

_HANDLER_NAME = "teleconsult"
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"

# Chatty at INFO, or logging peer addresses and payloads; WARNING is enough.
NOISY_LOGGERS = (
    "aiohttp.access",
    "asyncio",
    "asyncpg",
    "aiomqtt",
    "aioice",
    "aiortc",
    "engineio",
    "engineio.server",
    "socketio",
    "socketio.server",
)
# Libraries that parse what clients send: their errors about a client's bytes.
_CLIENT_PARSERS = ("engineio", "socketio", "aiohttp.server", "amqtt")
# Where a client's bytes are decoded; an exception raised in there is the client's.
_DECODING_CODE = (
    "/engineio/",
    "/socketio/",
    "/json/",
    "msgpack",
    "/aiohttp/",
    "/amqtt/",
    "teleconsult/realtime/server.py",
)
# Our code on the stack means our fault, except our packet decoder (realtime/server.py).
_OUR_CODE = "/teleconsult/"
_OUR_DECODER = "teleconsult/realtime/server.py"
_DECODING_ERRORS = (ValueError, TypeError, KeyError, IndexError, RecursionError, UnicodeError)
_QUERY_STRING = re.compile(r"(/[^\s?#'\"<>]*)\?[^\s'\"<>]+")

_request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "teleconsult_request_id", default=None
)

# Attributes every LogRecord has; anything else came from ``extra=``.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
) | {"message", "asctime", "taskName"}


def current_request_id() -> str | None:
    """The id of the request being handled in this context, if any."""
    return _request_id_var.get()


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (or ``None``) to records that do not carry one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _request_id_var.get()
        return True


def redact_query_strings(text: str) -> str:
    """``text`` with the query string of every URL-like ``/path?query`` redacted."""
    return _QUERY_STRING.sub(r"\1?[redacted]", text) if "?" in text else text


def _raised_decoding(tb: TracebackType | None) -> bool:
    """Raised in a library's decoding code, with none of our handlers on the way
    (their errors are ours, whatever their type)."""
    files = [frame.filename for frame in traceback.extract_tb(tb)]
    if any(_OUR_CODE in name and not name.endswith(_OUR_DECODER) for name in files):
        return False
    return bool(files) and any(part in files[-1] for part in _DECODING_CODE)


class ClientNoise(logging.Filter):
    """Demotes a parser library's ERROR about a client's malformed input to a WARNING
    without its traceback (which may quote the input); real faults stay ERRORs.

    The test is narrow: the record comes from a client-facing parser's logger, its
    exception is of a decoding kind, and it was raised in decoding code. An exception
    raised in our handlers keeps its traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not record.name.startswith(_CLIENT_PARSERS):
            return True
        if record.exc_info is None:
            if "unsupported version" in record.getMessage():
                self._demote(record, "a client spoke an unsupported protocol version")
            return True
        _, exc, tb = record.exc_info
        # aiohttp's HTTP parser errors are always about the bytes a client sent.
        if isinstance(exc, HttpProcessingError) or (
            isinstance(exc, _DECODING_ERRORS) and _raised_decoding(tb)
        ):
            self._demote(record, f"refused malformed client input ({type(exc).__name__})")
        return True

    @staticmethod
    def _demote(record: logging.LogRecord, message: str) -> None:
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg, record.args = message, None
        record.exc_info, record.exc_text = None, None
        record.malformed_input = True


class RedactingTextFormatter(logging.Formatter):
    """The text format, with query strings redacted (see :func:`redact_query_strings`)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_query_strings(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, exc and extra fields.

    Extra fields whose values are not JSON-serialisable are left out rather
    than stringified, so an object's repr cannot smuggle data into the log.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact_query_strings(record.getMessage()),
        }
        if record.exc_info:
            entry["exc"] = redact_query_strings(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc"] = redact_query_strings(record.exc_text)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        for key, value in vars(record).items():
            if key in _RECORD_ATTRS or key in entry:
                continue
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                continue
            entry[key] = redact_query_strings(value) if isinstance(value, str) else value
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(settings: LogSettings) -> None:
    """Send the root logger to stderr in ``settings.format``; safe to call again.

    A second call replaces the handler installed by the first instead of
    adding another; handlers installed by others (pytest's) are left alone.
    """
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.name == _HANDLER_NAME:
            root.removeHandler(existing)
            existing.close()

    handler = logging.StreamHandler(sys.stderr)
    handler.name = _HANDLER_NAME
    # On the handler, not the root logger: logger filters skip propagated records.
    handler.addFilter(RequestIdFilter())
    handler.addFilter(ClientNoise())
    if settings.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(RedactingTextFormatter(_TEXT_FORMAT))
    root.addHandler(handler)

    level = logging.getLevelName(settings.level.upper())
    if not isinstance(level, int):
        raise ValueError(f"unknown log level {settings.level!r}")
    root.setLevel(level)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


def _sane_request_id(value: str | None) -> str | None:
    if value is not None and _REQUEST_ID_RE.fullmatch(value):
        return value
    return None


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Attach a request id to the request, its log records and its response.

    A client's ``X-Request-ID`` is kept when it is a short token of
    ``[A-Za-z0-9._-]``; otherwise a new one is generated. Put this middleware
    first so that every other middleware logs with the id and error responses
    rendered further in carry the header.
    """
    request_id = _sane_request_id(request.headers.get(REQUEST_ID_HEADER)) or uuid.uuid4().hex
    request[REQUEST_ID_KEY] = request_id
    token = _request_id_var.set(request_id)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers[REQUEST_ID_HEADER] = request_id
        raise
    finally:
        _request_id_var.reset(token)
    # A streamed or WebSocket response has sent its headers already.
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = request_id
    return response


class JsonAccessLogger(AbstractAccessLogger):
    """One record per request on ``teleconsult.access``, free of patient data.

    Fields: method, route (template or ``unmatched``), status, duration_ms,
    remote, request_id, size. Never the raw path, the query string or a body.
    Wire with ``web.AppRunner(app, access_log_class=JsonAccessLogger)``.
    """

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        # Always ``teleconsult.access``: aiohttp passes its own ``aiohttp.access``
        # by default, which configure_logging silences.
        super().__init__(logging.getLogger(ACCESS_LOGGER_NAME), log_format)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        method = method_label(request.method)
        route = route_template(request)
        self.logger.info(
            "%s %s %s",
            method,
            route,
            response.status,
            extra={
                "method": method,
                "route": route,
                "status": response.status,
                "duration_ms": round(time * 1000, 3),
                "remote": request.remote,
                "request_id": request.get(REQUEST_ID_KEY),
                "size": response.body_length,
            },
        )
