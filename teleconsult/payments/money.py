"""Money as integers in the currency's minor unit (ISO 4217), never floats. Pure.

``Money(1500, "XOF")`` is 1,500 francs (XOF has no minor unit); ``Money(1500,
"KES")`` is 15.00 shillings. Amounts in different currencies never mix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from teleconsult.core.errors import BadRequest, Unprocessable

# ISO 4217 minor-unit exponents of the currencies clinics are likely to bill in.
EXPONENTS: Final[dict[str, int]] = {
    "XOF": 0, "XAF": 0, "RWF": 0, "UGX": 0, "GNF": 0, "KMF": 0, "JPY": 0, "KRW": 0,
    "KES": 2, "GHS": 2, "NGN": 2, "USD": 2, "EUR": 2, "GBP": 2, "TZS": 2, "ZAR": 2,
    "ZMW": 2, "MAD": 2, "EGP": 2, "ETB": 2, "CDF": 2, "MWK": 2, "SLE": 2, "LRD": 2,
    "CHF": 2, "CAD": 2,
    "TND": 3, "KWD": 3, "BHD": 3, "JOD": 3, "OMR": 3, "LYD": 3,
}  # fmt: skip
_CODE = re.compile(r"^[A-Z]{3}$")
# PostgreSQL bigint; far beyond any consultation fee.
MAX_MINOR: Final = 2**63 - 1


class UnknownCurrency(Unprocessable):
    """A currency code this server has no minor-unit exponent for."""


def exponent(currency: str) -> int:
    """Digits after the decimal point in ``currency`` (XOF 0, KES 2, TND 3)."""
    if not _CODE.match(currency):
        raise BadRequest(f"{currency!r} is not an ISO 4217 currency code")
    try:
        return EXPONENTS[currency]
    except KeyError:
        raise UnknownCurrency(f"currency {currency} is not supported") from None


@dataclass(frozen=True, order=True)
class Money:
    """An amount in minor units of one currency. Arithmetic refuses mixed currencies."""

    minor: int
    currency: str

    def __post_init__(self) -> None:
        if isinstance(self.minor, bool) or not isinstance(self.minor, int):
            raise TypeError("Money.minor must be an int (minor units), never a float")
        if abs(self.minor) > MAX_MINOR:
            raise ValueError("amount out of range")
        exponent(self.currency)

    def _same(self, other: Money) -> None:
        if other.currency != self.currency:
            raise ValueError(f"cannot combine {self.currency} with {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.minor + other.minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.minor - other.minor, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.minor, self.currency)

    def decimal(self) -> Decimal:
        """The amount in major units, exactly (``Decimal('15.00')`` for 1500 KES)."""
        e = exponent(self.currency)
        return Decimal(self.minor).scaleb(-e).quantize(Decimal(1).scaleb(-e))

    def format(self) -> str:
        """``'15.00 KES'``, ``'1500 XOF'``: for receipts and provider fields."""
        return f"{self.decimal()} {self.currency}"

    def major_string(self) -> str:
        """The major-unit amount as providers want it in JSON strings (``'15.00'``, ``'1500'``)."""
        return str(self.decimal())

    def whole_major(self) -> int:
        """The amount in whole major units; refuses a fractional amount (M-Pesa takes
        whole shillings only)."""
        e = exponent(self.currency)
        whole, rest = divmod(self.minor, int(10**e))
        if rest:
            raise Unprocessable(f"{self.format()} is not a whole number of {self.currency}")
        return whole


def parse_major(text: str, currency: str) -> Money:
    """``'15.5'`` KES → 1550 minor units. Refuses more decimals than the currency has,
    exponents, signs other than a leading minus, and anything that is not a number."""
    e = exponent(currency)
    if not re.fullmatch(r"-?[0-9]{1,18}(\.[0-9]{1,6})?", text):
        raise BadRequest(f"{text!r} is not an amount")
    value = Decimal(text)
    scaled = value.scaleb(e)
    if scaled != scaled.to_integral_value():
        raise BadRequest(f"{text!r} has more decimals than {currency} allows ({e})")
    return Money(int(scaled), currency)


def tax_of(amount: int, rate_bp: int) -> int:
    """Tax on ``amount`` minor units at ``rate_bp`` basis points, rounded half up
    (as the invoice trigger of migration 0019 does)."""
    if amount < 0 or not 0 <= rate_bp <= 10_000:
        raise ValueError("amount must be >= 0 and the rate 0..10000 basis points")
    return (amount * rate_bp + 5000) // 10_000
