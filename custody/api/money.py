"""Money in JSON: ``{"amount": "1234.50", "currency": "CNY"}``, the amount a decimal string, never a float.

``MoneyField`` reads and writes that object. Output comes from integer fen (``source="amount_fen"``); input
must be an exact decimal string with at most two decimals, within the ledger's range, in CNY. A JSON number,
``"1e3"``, ``"12.345"``, ``"-5"`` or ``"1.5"`` of a currency we do not hold is refused with a field error,
never rounded. The drf-spectacular extension documents it as the ``Money`` component.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.plumbing import ResolvedComponent
from moneyed import Money
from rest_framework import serializers

from ledger.money import MAX_MINOR_UNITS, to_minor

CURRENCIES = ("CNY",)
# At most 16 digits of yuan and 2 of fen: always below the ledger's 2**62 fen.
AMOUNT_PATTERN = r"^(0|[1-9][0-9]{0,15})(\.[0-9]{1,2})?$"
_AMOUNT = re.compile(AMOUNT_PATTERN)
_SIGNED_AMOUNT_PATTERN = r"^-?(0|[1-9][0-9]{0,15})\.[0-9]{2}$"


def money_json(fen: int, currency: str = "CNY") -> dict[str, str]:
    """``1234`` -> ``{"amount": "12.34", "currency": "CNY"}``: exact integer arithmetic, always two decimals
    (every currency the API takes has 100 minor units)."""
    if currency not in CURRENCIES:
        raise ValueError(f"unsupported currency {currency!r}")
    whole, cents = divmod(abs(int(fen)), 100)
    return {"amount": f"{'-' if fen < 0 else ''}{whole}.{cents:02d}", "currency": currency}


class MoneyField(serializers.Field):
    """A money object. ``min_fen`` bounds input (1 by default: amounts are positive)."""

    default_error_messages = {
        "invalid": "金额须为对象 {{amount, currency}} money must be an object {{amount, currency}}",
        "amount": '金额须为最多两位小数的字符串，如 "1234.50" amount must be a decimal string with at most '
        'two decimals, like "1234.50"',
        "currency": "币种须为 {currencies} currency must be one of {currencies}",
        "min": "金额须不少于 {minimum} the amount must be at least {minimum}",
    }

    def __init__(self, *, min_fen: int = 1, **kwargs: Any) -> None:
        self.min_fen = min_fen
        super().__init__(**kwargs)

    def to_representation(self, value: Any) -> dict[str, str]:
        if isinstance(value, Money):
            return money_json(to_minor(value), value.currency.code)
        return money_json(int(value))

    def to_internal_value(self, data: Any) -> Money:
        if not isinstance(data, dict) or set(data) - {"amount", "currency"} or "amount" not in data:
            self.fail("invalid")
        amount, currency = data.get("amount"), data.get("currency", "CNY")
        if not isinstance(amount, str) or not _AMOUNT.fullmatch(amount):
            self.fail("amount")
        if currency not in CURRENCIES:
            self.fail("currency", currencies=", ".join(CURRENCIES))
        money = Money(Decimal(amount), currency)
        fen = to_minor(money)
        if fen < self.min_fen or fen >= MAX_MINOR_UNITS:
            self.fail("min", minimum=money_json(self.min_fen, currency)["amount"])
        return money


class SignedMoneyField(MoneyField):
    """Output only: an amount that may be negative (a statement line, a difference)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("read_only", True)
        super().__init__(**kwargs)

    def to_representation(self, value: Any) -> dict[str, str]:
        return money_json(to_minor(value) if isinstance(value, Money) else int(value))


def _money_component(name: str, pattern: str, description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "properties": {
            "amount": {"type": "string", "pattern": pattern, "example": "1234.50"},
            "currency": {"type": "string", "enum": list(CURRENCIES), "example": "CNY"},
        },
        "required": ["amount", "currency"],
        "additionalProperties": False,
    }


class MoneyFieldExtension(OpenApiSerializerFieldExtension):
    target_class = MoneyField

    def map_serializer_field(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        component = ResolvedComponent(
            name="Money",
            type=ResolvedComponent.SCHEMA,
            object="Money",
            schema=_money_component(
                "Money",
                AMOUNT_PATTERN,
                "金额：十进制字符串（元，最多两位小数）与币种 money: a decimal string of yuan (at most two "
                "decimals) and a currency; never a JSON number",
            ),
        )
        auto_schema.registry.register_on_missing(component)
        return component.ref


class SignedMoneyFieldExtension(OpenApiSerializerFieldExtension):
    target_class = SignedMoneyField

    def map_serializer_field(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        component = ResolvedComponent(
            name="SignedMoney",
            type=ResolvedComponent.SCHEMA,
            object="SignedMoney",
            schema=_money_component(
                "SignedMoney", _SIGNED_AMOUNT_PATTERN, "可为负的金额 money that may be negative"
            ),
        )
        auto_schema.registry.register_on_missing(component)
        return component.ref
