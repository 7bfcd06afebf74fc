"""iCalendar (RFC 5545) feed of one doctor's appointments (pure, no I/O).

The feed URL is a bearer secret that ends up in phone calendar apps and sync
services, so the feed carries no PHI: events are named after the kind of
service only, identified by the opaque appointment id, and the only link is the
consultation join URL, which names an opaque room. :func:`render_calendar`
deliberately takes no patient data at all.

Output is a ``text/calendar`` body with CRLF line endings, TEXT values escaped
(RFC 5545 §3.3.11) and content lines folded at 75 octets (§3.1) without ever
splitting a UTF-8 sequence. All times are UTC (``...Z``), so no ``VTIMEZONE`` is
needed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from uuid import UUID

from teleconsult.scheduling.records import (
    ROOM_SERVICES,
    Appointment,
    AppointmentStatus,
    ServiceKind,
)

CONTENT_TYPE = "text/calendar; charset=utf-8"
DEFAULT_PRODID = "-//teleconsult//EN"
UID_DOMAIN = "teleconsult"

MAX_LINE_OCTETS = 75
_CRLF = "\r\n"

SUMMARIES: Mapping[ServiceKind, str] = {
    ServiceKind.VIDEO: "Video consultation",
    ServiceKind.AUDIO: "Audio consultation",
    ServiceKind.CHAT: "Chat consultation",
    ServiceKind.IN_PERSON: "In-person appointment",
}

# VEVENT STATUS is TENTATIVE | CONFIRMED | CANCELLED. A no-show keeps CONFIRMED:
# the slot was held and should stay in the doctor's history, not vanish from it.
EVENT_STATUSES: Mapping[AppointmentStatus, str] = {
    AppointmentStatus.REQUESTED: "TENTATIVE",
    AppointmentStatus.CONFIRMED: "CONFIRMED",
    AppointmentStatus.IN_PROGRESS: "CONFIRMED",
    AppointmentStatus.COMPLETED: "CONFIRMED",
    AppointmentStatus.CANCELLED: "CANCELLED",
    AppointmentStatus.NO_SHOW: "CONFIRMED",
}

# TEXT may not contain control characters other than HTAB (TSAFE-CHAR); line
# breaks are escaped before this runs.
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_URI_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")


def escape_text(value: str) -> str:
    """Escape a TEXT value: backslash, ``;``, ``,`` and line breaks (as ``\\n``)."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace(";", "\\;")
        .replace(",", "\\,")
        .replace("\r\n", "\\n")
        .replace("\r", "\\n")
        .replace("\n", "\\n")
    )
    return _TEXT_CONTROL.sub("", escaped)


def fold_line(line: str) -> str:
    """Fold one content line into physical lines of at most 75 octets (without CRLF).

    Continuation lines start with a single space, which counts towards their 75
    octets. Breaks fall between characters, so a UTF-8 sequence is never split.
    """
    parts: list[str] = []
    current: list[str] = []
    size = 0
    limit = MAX_LINE_OCTETS
    for char in line:
        width = len(char.encode("utf-8"))
        if size + width > limit:
            parts.append("".join(current))
            current, size, limit = [], 0, MAX_LINE_OCTETS - 1
        current.append(char)
        size += width
    parts.append("".join(current))
    return (_CRLF + " ").join(parts)


def format_utc(value: datetime) -> str:
    """A DATE-TIME in UTC form (``YYYYMMDDTHHMMSSZ``); naive datetimes are refused."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"iCalendar times must be timezone-aware, got naive {value!r}")
    return value.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def _format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds <= 0:
        raise ValueError(f"refresh interval must be positive, got {value!r}")
    return f"PT{seconds}S" if seconds % 60 else f"PT{seconds // 60}M"


def _check_uri(value: str) -> str:
    # URI values are not TEXT: they are written verbatim, so they must not carry
    # anything that could break out of the content line.
    if not value or _URI_FORBIDDEN.search(value):
        raise ValueError("consultation link must be a non-empty URI without spaces or controls")
    return value


def _event(
    appointment: Appointment, *, clinic_name: str, link: str | None, dtstamp: str
) -> list[str]:
    lines = [
        "BEGIN:VEVENT",
        f"UID:{appointment.id}@{UID_DOMAIN}",
        f"DTSTAMP:{dtstamp}",
        f"DTSTART:{format_utc(appointment.starts_at)}",
        f"DTEND:{format_utc(appointment.ends_at)}",
        f"SUMMARY:{escape_text(SUMMARIES[appointment.service])}",
        f"STATUS:{EVENT_STATUSES[appointment.status]}",
        f"SEQUENCE:{max(appointment.version, 0)}",
        f"CREATED:{format_utc(appointment.created_at)}",
        f"LAST-MODIFIED:{format_utc(appointment.updated_at)}",
    ]
    if appointment.service in ROOM_SERVICES and link is not None:
        lines.append(f"LOCATION:{escape_text(link)}")
        lines.append(f"URL:{_check_uri(link)}")
    elif appointment.service is ServiceKind.IN_PERSON and clinic_name:
        lines.append(f"LOCATION:{escape_text(clinic_name)}")
    # Cancelled events no longer block the doctor's free/busy time.
    cancelled = appointment.status is AppointmentStatus.CANCELLED
    lines.append(f"TRANSP:{'TRANSPARENT' if cancelled else 'OPAQUE'}")
    lines.append("END:VEVENT")
    return lines


def render_calendar(
    *,
    doctor_name: str,
    clinic_name: str,
    appointments: Sequence[Appointment],
    consult_links: Mapping[UUID, str],
    now: datetime,
    prodid: str = DEFAULT_PRODID,
    refresh_interval: timedelta = timedelta(minutes=15),
) -> str:
    """The ``VCALENDAR`` feed for one doctor, one ``VEVENT`` per appointment.

    ``consult_links`` maps appointment ids to consultation join URLs; a link is
    used (``LOCATION`` and ``URL``) for video and audio appointments only.
    Cancelled appointments are kept with ``STATUS:CANCELLED`` so that
    subscribed calendars remove them. Events are ordered by start, then id, so
    equal inputs give byte-identical output.
    """
    dtstamp = format_utc(now)
    lines = [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        f"PRODID:{escape_text(prodid)}",
        "CALSCALE:GREGORIAN",
        "METHOD:PUBLISH",
        f"X-WR-CALNAME:{escape_text(f'{doctor_name} ({clinic_name})')}",
        f"REFRESH-INTERVAL;VALUE=DURATION:{_format_duration(refresh_interval)}",
        f"X-PUBLISHED-TTL:{_format_duration(refresh_interval)}",
    ]
    for appointment in sorted(appointments, key=lambda a: (format_utc(a.starts_at), str(a.id))):
        lines.extend(
            _event(
                appointment,
                clinic_name=clinic_name,
                link=consult_links.get(appointment.id),
                dtstamp=dtstamp,
            )
        )
    lines.append("END:VCALENDAR")
    return "".join(fold_line(line) + _CRLF for line in lines)
