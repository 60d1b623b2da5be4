"""Exact money: integer minor units (fen for CNY) in storage, ``Money`` at the edges.

This is the one place that converts between the two. It refuses anything that is not an exact number of
minor units (``Money("0.001", "CNY")``) and never touches floats.
"""

from __future__ import annotations

from decimal import Decimal

from moneyed import Currency, Money, get_currency

from ledger.errors import InvalidAmount

# PostgreSQL bigint; amounts and running totals must fit with room to add.
MAX_MINOR_UNITS = 2**62


def minor_units_per_unit(currency: str | Currency) -> int:
    """100 for CNY (1 yuan = 100 fen), 1 for JPY, and so on."""
    cur = currency if isinstance(currency, Currency) else get_currency(str(currency).upper())
    return int(cur.sub_unit or 1)


def to_minor(money: Money) -> int:
    """``Money("12.34", "CNY")`` -> 1234. Raises InvalidAmount for fractional minor units."""
    if not isinstance(money, Money):
        raise InvalidAmount(f"expected Money, got {type(money).__name__}")
    amount = money.amount
    if not isinstance(amount, Decimal) or not amount.is_finite():
        raise InvalidAmount(f"amount {amount!r} is not a finite decimal")
    scaled = amount * minor_units_per_unit(money.currency)
    if scaled != scaled.to_integral_value():
        raise InvalidAmount(f"{amount} {money.currency.code} is not a whole number of minor units")
    minor = int(scaled)
    if abs(minor) >= MAX_MINOR_UNITS:
        raise InvalidAmount(f"{amount} {money.currency.code} is too large")
    return minor


def from_minor(minor: int, currency: str) -> Money:
    """1234, "CNY" -> ``Money("12.34", "CNY")``."""
    per_unit = minor_units_per_unit(currency)
    return Money(Decimal(int(minor)) / Decimal(per_unit), currency)


def cny(amount: str | int | Decimal) -> Money:
    """Shorthand for tests and demo data: ``cny("12.34")``. Strings or Decimals only, never floats."""
    if isinstance(amount, float):
        raise InvalidAmount("floats are not money")
    return Money(Decimal(amount), "CNY")
