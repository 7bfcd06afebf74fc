"""Vital sign kinds: their LOINC codes, UCUM units and the values a body can have.

Pure. Limits are physiological extremes, not normal ranges: a value outside them
is an error of entry (a temperature of 370 °C, an SpO2 of 120 %), refused with 400
naming the field; an abnormal but possible value is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from teleconsult.core.errors import BadRequest, FieldError


@dataclass(frozen=True)
class Code:
    loinc: str
    display: str
    low: float
    high: float


@dataclass(frozen=True)
class Kind:
    name: str
    units: dict[str, Code]  # UCUM unit -> code and range
    # Blood pressure: the second value (diastolic) and the panel code.
    second: Code | None = None
    panel: str | None = None


BLOOD_PRESSURE_PANEL: Final = "85354-9"
KINDS: Final[dict[str, Kind]] = {
    k.name: k
    for k in (
        Kind(
            "blood_pressure",
            {"mm[Hg]": Code("8480-6", "Systolic blood pressure", 40, 300)},
            second=Code("8462-4", "Diastolic blood pressure", 20, 200),
            panel=BLOOD_PRESSURE_PANEL,
        ),
        Kind("heart_rate", {"/min": Code("8867-4", "Heart rate", 20, 300)}),
        Kind("temperature", {"Cel": Code("8310-5", "Body temperature", 25, 45)}),
        Kind(
            "spo2",
            {
                "%": Code(
                    "59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", 50, 100
                )
            },
        ),
        Kind("weight", {"kg": Code("29463-7", "Body weight", 0.2, 500)}),
        Kind("height", {"cm": Code("8302-2", "Body height", 20, 280)}),
        Kind("respiratory_rate", {"/min": Code("9279-1", "Respiratory rate", 2, 80)}),
        Kind(
            "glucose",
            {
                "mg/dL": Code("2339-0", "Glucose [Mass/volume] in Blood", 10, 1500),
                "mmol/L": Code("15074-8", "Glucose [Moles/volume] in Blood", 0.5, 85),
            },
        ),
    )
}


def check(kind: str, unit: str, value: float, value2: float | None) -> str:
    """The LOINC code of a measurement (for blood pressure: the panel's), or 400 naming
    the field at fault."""
    spec = KINDS.get(kind)
    if spec is None:
        raise BadRequest("unknown kind", fields=[FieldError("body.kind", "unknown kind")])
    code = spec.units.get(unit)
    if code is None:
        expected = " or ".join(spec.units)
        raise BadRequest(
            "wrong unit", fields=[FieldError("body.unit", f"{kind} is measured in {expected}")]
        )
    if not code.low <= value <= code.high:
        raise BadRequest(
            "impossible value",
            fields=[
                FieldError(
                    "body.value", f"{kind} must lie between {code.low:g} and {code.high:g} {unit}"
                )
            ],
        )
    if spec.second is None:
        if value2 is not None:
            raise BadRequest(
                "no second value", fields=[FieldError("body.value2", f"{kind} has one value")]
            )
        return code.loinc
    if value2 is None:
        raise BadRequest(
            "diastolic missing", fields=[FieldError("body.value2", "the diastolic pressure")]
        )
    low, high = spec.second.low, spec.second.high
    if not low <= value2 <= high or value2 >= value:
        raise BadRequest(
            "impossible value",
            fields=[
                FieldError(
                    "body.value2",
                    f"diastolic must lie between {low:g} and {high:g} and below the systolic",
                )
            ],
        )
    assert spec.panel is not None
    return spec.panel
