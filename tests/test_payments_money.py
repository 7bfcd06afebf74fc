"""Money in minor units (pure)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from teleconsult.core.errors import BadRequest, Unprocessable
from teleconsult.payments.money import EXPONENTS, Money, exponent, parse_major, tax_of


def test_exponents_follow_iso_4217() -> None:
    assert exponent("XOF") == 0 and exponent("XAF") == 0
    assert {exponent(c) for c in ("KES", "GHS", "NGN", "USD", "EUR")} == {2}


def test_unknown_or_malformed_currency_is_refused() -> None:
    with pytest.raises(Unprocessable):
        exponent("ZZZ")
    with pytest.raises(BadRequest):
        exponent("kes")


def test_money_refuses_floats_and_mixed_currencies() -> None:
    with pytest.raises(TypeError):
        Money(15.0, "KES")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Money(1, "KES") + Money(1, "XOF")


def test_formatting_uses_the_currencys_decimals() -> None:
    assert Money(1500, "XOF").format() == "1500 XOF"
    assert Money(1500, "KES").format() == "15.00 KES"
    assert Money(5, "TND").major_string() == "0.005"


def test_parse_major_refuses_more_decimals_than_the_currency_has() -> None:
    assert parse_major("15.5", "KES") == Money(1550, "KES")
    assert parse_major("1500", "XOF") == Money(1500, "XOF")
    for bad, currency in (("1.5", "XOF"), ("1.005", "KES"), ("1e3", "KES"), ("", "KES")):
        with pytest.raises(BadRequest):
            parse_major(bad, currency)


def test_whole_major_refuses_cents() -> None:
    assert Money(150_000, "KES").whole_major() == 1500
    with pytest.raises(Unprocessable):
        Money(150_050, "KES").whole_major()


def test_tax_rounds_half_up() -> None:
    assert tax_of(1000, 1800) == 180
    assert tax_of(5, 1000) == 1  # 0.5 rounds up
    assert tax_of(4, 1000) == 0


@given(st.integers(min_value=-(10**15), max_value=10**15), st.sampled_from(sorted(EXPONENTS)))
def test_major_string_round_trips(minor: int, currency: str) -> None:
    money = Money(minor, currency)
    assert parse_major(money.major_string(), currency) == money
    assert money.decimal() == Decimal(minor).scaleb(-exponent(currency))
