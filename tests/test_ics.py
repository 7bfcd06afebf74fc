"""iCalendar feed: structure, times, statuses, escaping, folding, no PHI (pure, no I/O)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import icalendar
import pytest

from teleconsult.accounts.records import UserRecord
from teleconsult.core.identity import Role
from teleconsult.scheduling.ics import (
    CONTENT_TYPE,
    escape_text,
    fold_line,
    render_calendar,
)
from teleconsult.scheduling.records import Appointment, AppointmentStatus, ServiceKind

NOW = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
START = datetime(2026, 6, 2, 9, 0, tzinfo=UTC)
CLINIC_ID = uuid4()
DOCTOR_ID = uuid4()
LINK = "https://meet.teleconsult.dev/join/r-8f3a2c"


def make_appointment(
    *,
    service: ServiceKind = ServiceKind.VIDEO,
    status: AppointmentStatus = AppointmentStatus.CONFIRMED,
    starts_at: datetime = START,
    minutes: int = 30,
    patient_id: UUID | None = None,
    version: int = 1,
) -> Appointment:
    return Appointment(
        id=uuid4(),
        clinic_id=CLINIC_ID,
        doctor_id=DOCTOR_ID,
        patient_id=patient_id or uuid4(),
        service=service,
        starts_at=starts_at,
        ends_at=starts_at + timedelta(minutes=minutes),
        buffer_minutes=5,
        status=status,
        cancel_reason="Patient asked to cancel" if status is AppointmentStatus.CANCELLED else None,
        checked_in_at=None,
        created_by=None,
        created_at=NOW - timedelta(days=3),
        updated_at=NOW - timedelta(hours=1),
        version=version,
    )


def render(
    appointments: Sequence[Appointment],
    links: Mapping[UUID, str] | None = None,
    *,
    doctor_name: str = "Dr. Ada Example",
    clinic_name: str = "Harbour Clinic",
) -> str:
    return render_calendar(
        doctor_name=doctor_name,
        clinic_name=clinic_name,
        appointments=appointments,
        consult_links=links or {},
        now=NOW,
    )


def parse(text: str) -> icalendar.Calendar:
    return icalendar.Calendar.from_ical(text)


def events(text: str) -> dict[str, icalendar.Event]:
    return {str(event["UID"]): event for event in parse(text).events}


def event_of(text: str, appointment: Appointment) -> icalendar.Event:
    return events(text)[f"{appointment.id}@teleconsult"]


def physical_lines(text: str) -> list[str]:
    assert text.endswith("\r\n")
    return text[: -len("\r\n")].split("\r\n")


def unfold(text: str) -> str:
    return text.replace("\r\n ", "")


def unescape(value: str) -> str:
    """Undo RFC 5545 TEXT escaping (independent of the code under test)."""
    return re.sub(r"\\([\\;,nN])", lambda m: {"n": "\n", "N": "\n"}.get(m[1], m[1]), value)


def test_content_type_is_text_calendar() -> None:
    assert CONTENT_TYPE.startswith("text/calendar")


def test_calendar_properties() -> None:
    calendar = parse(render([]))

    assert calendar.name == "VCALENDAR"
    assert str(calendar["VERSION"]) == "2.0"
    assert str(calendar["PRODID"]) == "-//teleconsult//EN"
    assert str(calendar["CALSCALE"]) == "GREGORIAN"
    assert str(calendar["METHOD"]) == "PUBLISH"
    assert str(calendar["X-WR-CALNAME"]) == "Dr. Ada Example (Harbour Clinic)"


def test_one_event_per_appointment_with_uid() -> None:
    appointments = [make_appointment(starts_at=START + timedelta(hours=n)) for n in range(3)]

    found = events(render(appointments))

    assert set(found) == {f"{a.id}@teleconsult" for a in appointments}


def test_event_times_are_utc_instants() -> None:
    berlin = START.astimezone(ZoneInfo("Europe/Berlin"))
    appointment = make_appointment(starts_at=berlin, minutes=45)

    text = render([appointment])
    event = event_of(text, appointment)

    assert event.decoded("DTSTART") == START
    assert event.decoded("DTEND") == START + timedelta(minutes=45)
    assert event.decoded("DTSTAMP") == NOW
    assert event.decoded("LAST-MODIFIED") == appointment.updated_at
    assert "DTSTART:20260602T090000Z\r\n" in text
    assert "DTEND:20260602T094500Z\r\n" in text


def test_naive_times_are_refused() -> None:
    naive = make_appointment(starts_at=datetime(2026, 6, 2, 9, 0))

    with pytest.raises(ValueError, match="timezone-aware"):
        render([naive])


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (AppointmentStatus.REQUESTED, "TENTATIVE"),
        (AppointmentStatus.CONFIRMED, "CONFIRMED"),
        (AppointmentStatus.IN_PROGRESS, "CONFIRMED"),
        (AppointmentStatus.COMPLETED, "CONFIRMED"),
        (AppointmentStatus.CANCELLED, "CANCELLED"),
        (AppointmentStatus.NO_SHOW, "CONFIRMED"),
    ],
)
def test_event_status_follows_appointment_status(status: AppointmentStatus, expected: str) -> None:
    appointment = make_appointment(status=status)

    assert str(event_of(render([appointment]), appointment)["STATUS"]) == expected


def test_cancelled_appointments_stay_in_the_feed_and_free_the_time() -> None:
    cancelled = make_appointment(status=AppointmentStatus.CANCELLED, version=4)

    event = event_of(render([cancelled]), cancelled)

    assert str(event["STATUS"]) == "CANCELLED"
    assert str(event["TRANSP"]) == "TRANSPARENT"
    assert event.decoded("SEQUENCE") == 4
    assert "Patient asked to cancel" not in render([cancelled])


def test_sequence_is_the_appointment_version() -> None:
    appointment = make_appointment(version=7)

    assert event_of(render([appointment]), appointment).decoded("SEQUENCE") == 7


@pytest.mark.parametrize(
    ("service", "summary"),
    [
        (ServiceKind.VIDEO, "Video consultation"),
        (ServiceKind.AUDIO, "Audio consultation"),
        (ServiceKind.CHAT, "Chat consultation"),
        (ServiceKind.IN_PERSON, "In-person appointment"),
    ],
)
def test_summary_names_only_the_service(service: ServiceKind, summary: str) -> None:
    appointment = make_appointment(service=service)

    assert str(event_of(render([appointment]), appointment)["SUMMARY"]) == summary


@pytest.mark.parametrize("service", [ServiceKind.VIDEO, ServiceKind.AUDIO])
def test_room_services_carry_the_join_link(service: ServiceKind) -> None:
    appointment = make_appointment(service=service)

    event = event_of(render([appointment], {appointment.id: LINK}), appointment)

    assert str(event["URL"]) == LINK
    assert str(event["LOCATION"]) == LINK


@pytest.mark.parametrize("service", [ServiceKind.CHAT, ServiceKind.IN_PERSON])
def test_other_services_ignore_links(service: ServiceKind) -> None:
    appointment = make_appointment(service=service)

    text = render([appointment], {appointment.id: LINK})

    assert "URL" not in event_of(text, appointment)
    assert LINK not in text


def test_in_person_location_is_the_clinic() -> None:
    appointment = make_appointment(service=ServiceKind.IN_PERSON)

    event = event_of(render([appointment]), appointment)

    assert str(event["LOCATION"]) == "Harbour Clinic"


def test_video_without_link_has_no_location() -> None:
    appointment = make_appointment(service=ServiceKind.VIDEO)

    event = event_of(render([appointment]), appointment)

    assert "URL" not in event
    assert "LOCATION" not in event


def test_links_with_line_breaks_are_refused() -> None:
    appointment = make_appointment()

    with pytest.raises(ValueError, match="URI"):
        render([appointment], {appointment.id: LINK + "\r\nATTENDEE:mailto:x@example.org"})


def test_lines_end_with_crlf_only() -> None:
    text = render([make_appointment(), make_appointment(status=AppointmentStatus.CANCELLED)])

    assert "\n" not in text.replace("\r\n", "")
    assert "\r" not in text.replace("\r\n", "")
    assert physical_lines(text)[0] == "BEGIN:VCALENDAR"
    assert physical_lines(text)[-1] == "END:VCALENDAR"


def test_escaping_round_trips() -> None:
    clinic = "Back\\slash; semi, comma\nnew line"
    appointment = make_appointment(service=ServiceKind.IN_PERSON)

    text = render([appointment], clinic_name=clinic)

    assert "LOCATION:Back\\\\slash\\; semi\\, comma\\nnew line\r\n" in text
    assert str(event_of(text, appointment)["LOCATION"]) == clinic
    # icalendar hands X- properties back raw; RFC 5545 says their default type is TEXT.
    calname = str(parse(text)["X-WR-CALNAME"])
    assert unescape(calname) == f"Dr. Ada Example ({clinic})"


def test_escape_text_normalises_line_breaks_and_drops_controls() -> None:
    assert escape_text("a\r\nb\rc\nd") == "a\\nb\\nc\\nd"
    assert escape_text("bell\x07tab\t") == "belltab\t"


def test_long_values_fold_at_75_octets_without_splitting_characters() -> None:
    clinic = "Klinik Zürich – Ärztehaus 🩺 " * 8
    link = "https://meet.teleconsult.dev/join/" + "r" * 200
    in_person = make_appointment(service=ServiceKind.IN_PERSON)
    video = make_appointment(service=ServiceKind.VIDEO, starts_at=START + timedelta(hours=1))

    text = render([in_person, video], {video.id: link}, clinic_name=clinic)

    raw = text.encode("utf-8")
    lines = raw[: -len(b"\r\n")].split(b"\r\n")
    assert max(len(line) for line in lines) == 75
    for line in lines:
        assert len(line) <= 75
        line.decode("utf-8")  # each physical line is whole UTF-8: no sequence split
    unfolded = unfold(text)
    assert f"URL:{link}\r\n" in unfolded
    assert f"LOCATION:{escape_text(clinic)}\r\n" in unfolded
    assert str(event_of(text, in_person)["LOCATION"]) == clinic
    assert str(event_of(text, video)["URL"]) == link


def test_fold_line_counts_the_leading_space() -> None:
    folded = fold_line("X" * 200)

    parts = folded.split("\r\n")
    assert [len(p) for p in parts] == [75, 75, 52]
    assert all(p.startswith(" ") for p in parts[1:])
    assert unfold(folded) == "X" * 200


def test_fold_line_keeps_multibyte_characters_whole() -> None:
    line = "SUMMARY:" + "é" * 40 + "😀" * 30

    folded = fold_line(line)

    for part in folded.split("\r\n"):
        assert len(part.encode("utf-8")) <= 75
    assert unfold(folded) == line


def test_short_lines_are_not_folded() -> None:
    assert fold_line("A" * 75) == "A" * 75


def test_output_is_deterministic_and_sorted_by_start() -> None:
    late = make_appointment(starts_at=START + timedelta(hours=2))
    early = make_appointment(starts_at=START)

    text = render([late, early])

    assert text == render([early, late])
    assert text.index(str(early.id)) < text.index(str(late.id))


def test_no_patient_data_reaches_the_feed() -> None:
    patient = UserRecord(
        id=uuid4(),
        clinic_id=CLINIC_ID,
        email="jane.patient@example.org",
        role=Role.PATIENT,
        full_name="Jane Patient",
        phone="+44 7700 900123",
        date_of_birth=date(1980, 5, 17),
        status="active",
        created_at=NOW,
        updated_at=NOW,
    )
    appointments = [
        make_appointment(service=kind, status=status, patient_id=patient.id)
        for kind in ServiceKind
        for status in AppointmentStatus
    ]
    links = {a.id: f"https://meet.teleconsult.dev/join/{uuid4().hex}" for a in appointments}

    text = unfold(render(appointments, links))

    for secret in (
        patient.full_name,
        "Jane",
        patient.email,
        "+44 7700 900123",
        "7700900123",
        "1980",
        str(patient.id),
        "Patient asked to cancel",
    ):
        assert secret not in text


def test_signature_takes_no_patient_data() -> None:
    parameters = set(inspect.signature(render_calendar).parameters)

    assert parameters == {
        "doctor_name",
        "clinic_name",
        "appointments",
        "consult_links",
        "now",
        "prodid",
        "refresh_interval",
    }


def test_refresh_interval_is_advertised() -> None:
    text = render_calendar(
        doctor_name="Dr. A",
        clinic_name="C",
        appointments=[],
        consult_links={},
        now=NOW,
        refresh_interval=timedelta(hours=1),
    )

    assert "REFRESH-INTERVAL;VALUE=DURATION:PT60M\r\n" in text
    assert "X-PUBLISHED-TTL:PT60M\r\n" in text


def test_custom_prodid_is_escaped() -> None:
    appointment = replace(make_appointment(), version=0)

    text = render_calendar(
        doctor_name="Dr. A",
        clinic_name="C",
        appointments=[appointment],
        consult_links={},
        now=NOW,
        prodid="-//Acme, Inc.//Teleconsult 1.0//EN",
    )

    assert str(parse(text)["PRODID"]) == "-//Acme, Inc.//Teleconsult 1.0//EN"
    assert event_of(text, appointment).decoded("SEQUENCE") == 0
