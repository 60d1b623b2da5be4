"""``ledger.money``: the one conversion between ``Money`` at the edges and integer minor units inside."""

from __future__ import annotations

from decimal import Decimal

import pytest
from moneyed import Money

from ledger.errors import InvalidAmount
from ledger.money import MAX_MINOR_UNITS, cny, from_minor, minor_units_per_unit, to_minor


@pytest.mark.parametrize(
    ("money", "minor"),
    [
        (Money("12.34", "CNY"), 1234),
        (Money("0.01", "CNY"), 1),
        (Money("0", "CNY"), 0),
        (Money("-7.50", "CNY"), -750),
        (Money("12.340", "CNY"), 1234),
        (Money("1000000", "CNY"), 100_000_000),
        (Money("500", "JPY"), 500),
        (Money("1.234", "KWD"), 1234),
    ],
)
def test_to_minor_counts_minor_units_of_the_currency(money: Money, minor: int) -> None:
    assert to_minor(money) == minor
    assert type(to_minor(money)) is int


@pytest.mark.parametrize(
    ("minor", "currency"),
    [(0, "CNY"), (1, "CNY"), (-1, "CNY"), (99, "CNY"), (123_456_789, "CNY"), (MAX_MINOR_UNITS - 1, "CNY")]
    + [(500, "JPY"), (1234, "KWD")],
)
def test_from_minor_and_to_minor_round_trip(minor: int, currency: str) -> None:
    money = from_minor(minor, currency)

    assert money.currency.code == currency
    assert isinstance(money.amount, Decimal)
    assert to_minor(money) == minor


def test_from_minor_gives_the_exact_decimal_amount() -> None:
    assert from_minor(1234, "CNY") == Money("12.34", "CNY")
    assert from_minor(5, "CNY").amount == Decimal("0.05")
    assert from_minor(500, "JPY") == Money("500", "JPY")


def test_minor_units_per_unit_follows_iso_4217() -> None:
    assert minor_units_per_unit("CNY") == 100
    assert minor_units_per_unit("cny") == 100
    assert minor_units_per_unit("JPY") == 1
    assert minor_units_per_unit("KWD") == 1000


@pytest.mark.parametrize("amount", ["0.001", "12.345", "-0.005", "0.0000001"])
def test_fractional_fen_is_refused(amount: str) -> None:
    with pytest.raises(InvalidAmount, match="whole number of minor units"):
        to_minor(Money(amount, "CNY"))


def test_fraction_of_a_yen_is_refused_although_the_same_digits_are_fine_in_yuan() -> None:
    assert to_minor(Money("0.5", "CNY")) == 50
    with pytest.raises(InvalidAmount):
        to_minor(Money("0.5", "JPY"))


@pytest.mark.parametrize("value", [1.5, 0.1, 12.0])
def test_floats_are_refused(value: float) -> None:
    with pytest.raises(InvalidAmount, match="float"):
        cny(value)  # type: ignore[arg-type]
    with pytest.raises(InvalidAmount, match="expected Money"):
        to_minor(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [Decimal("12.34"), 1234, "12.34"])
def test_to_minor_only_takes_money(value: object) -> None:
    with pytest.raises(InvalidAmount, match="expected Money"):
        to_minor(value)  # type: ignore[arg-type]


def test_cny_takes_strings_ints_and_decimals() -> None:
    assert cny("12.34") == Money("12.34", "CNY")
    assert cny(12) == Money("12", "CNY")
    assert cny(Decimal("0.01")) == Money("0.01", "CNY")


@pytest.mark.parametrize("amount", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_amounts_are_refused(amount: str) -> None:
    with pytest.raises(InvalidAmount, match="finite"):
        to_minor(Money(amount, "CNY"))


def test_huge_amounts_are_refused_at_the_bigint_safety_margin() -> None:
    largest = from_minor(MAX_MINOR_UNITS - 1, "CNY")
    assert to_minor(largest) == MAX_MINOR_UNITS - 1

    for minor in (MAX_MINOR_UNITS, -MAX_MINOR_UNITS, 2**63, 10**30):
        with pytest.raises(InvalidAmount, match="too large"):
            to_minor(from_minor(minor, "CNY"))
