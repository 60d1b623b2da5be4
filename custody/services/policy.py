"""Jurisdictions and their versioned policy (监管政策): every threshold of DESIGN.md section 1.

A policy row is never edited. ``publish_policy`` validates a change and writes the next version, effective at
once for new contracts and courses; a contract keeps the version it was signed under (``Contract.policy``).
Guidance prices (政府指导价) belong to a version: a new version copies the previous prices unless replaced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction

from custody.errors import RuleViolation
from custody.models import ClassSizeBand, GuidancePrice, Jurisdiction, Policy, ReleaseCadence, TeachingMode
from custody.models.policy import default_risk_thresholds
from custody.selectors import policy as policy_selectors
from ledger import clock

# Shanghai's figures (发改价格〔2021〕1279号 as applied locally), in fen per standard lesson: offline
# 80 / 60 / 40 yuan for small / medium / large classes (45-minute lessons), online 20 yuan (30 minutes).
DEFAULT_GUIDANCE_PRICES_FEN: Mapping[tuple[str, str], int] = {
    (ClassSizeBand.SMALL, TeachingMode.OFFLINE): 8_000,
    (ClassSizeBand.MEDIUM, TeachingMode.OFFLINE): 6_000,
    (ClassSizeBand.LARGE, TeachingMode.OFFLINE): 4_000,
    (ClassSizeBand.SMALL, TeachingMode.ONLINE): 2_000,
    (ClassSizeBand.MEDIUM, TeachingMode.ONLINE): 2_000,
    (ClassSizeBand.LARGE, TeachingMode.ONLINE): 2_000,
}

_SMALLINT_MAX = 32_767
_INT_MAX = 2_147_483_647
_BIGINT_MAX = 2**62


@dataclass(frozen=True)
class _IntRule:
    minimum: int
    maximum: int


# What a regulator may change, with the allowed range. Caps must be positive (a zero cap would forbid every
# contract); waiting periods and allowances may be zero (a 0 % markup, renewal only when no hour remains).
EDITABLE_INTEGERS: Mapping[str, _IntRule] = {
    "max_service_months": _IntRule(1, 120),
    "max_paid_hours": _IntRule(1, _INT_MAX),
    "non_subject_max_charge_fen": _IntRule(1, _BIGINT_MAX),
    "earliest_charge_days_before_start": _IntRule(0, _SMALLINT_MAX),
    "renewal_max_remaining_hours": _IntRule(0, _INT_MAX),
    "unpaid_contract_lapse_days": _IntRule(1, 365),
    "guidance_markup_percent": _IntRule(0, 100),
    "lesson_auto_confirm_working_days": _IntRule(1, _SMALLINT_MAX),
    "refund_answer_working_days": _IntRule(1, _SMALLINT_MAX),
    "refund_payout_before_start_working_days": _IntRule(1, _SMALLINT_MAX),
    "refund_payout_after_start_working_days": _IntRule(1, _SMALLINT_MAX),
    "closure_notice_days": _IntRule(0, _SMALLINT_MAX),
    "reserve_ratio_percent": _IntRule(0, 100),
    "reserve_minimum_fen": _IntRule(0, _BIGINT_MAX),
}
EDITABLE_BOOLEANS = frozenset({"anti_splitting", "risk_reserve_allowed"})
EDITABLE_FIELDS = frozenset(EDITABLE_INTEGERS) | EDITABLE_BOOLEANS | {"release_cadence", "risk_thresholds"}
# Every field a version carries over from the previous one.
_COPIED_FIELDS = tuple(sorted(EDITABLE_FIELDS))


def ensure_jurisdiction(*, code: str, name: str, parent: Jurisdiction | None = None) -> Jurisdiction:
    """The jurisdiction with this code; on first sight, with policy version 1 (national defaults) and the
    default guidance prices."""
    with transaction.atomic():
        jurisdiction, _ = Jurisdiction.objects.get_or_create(
            code=code, defaults={"name": name, "parent": parent}
        )
        jurisdiction = Jurisdiction.objects.select_for_update().get(pk=jurisdiction.pk)
        if not Policy.objects.filter(jurisdiction=jurisdiction).exists():
            policy = Policy.objects.create(
                jurisdiction=jurisdiction,
                version=1,
                effective_from=clock.now(),
                change_note="国家默认规则 national defaults",
            )
            _write_guidance_prices(policy, DEFAULT_GUIDANCE_PRICES_FEN)
    return jurisdiction


def publish_policy(
    *,
    jurisdiction: Jurisdiction,
    changes: Mapping[str, Any],
    changed_by: User | None,
    note: str,
    guidance_prices: Mapping[tuple[str, str], int] | None = None,
) -> Policy:
    """Write version N+1, effective now: the current version's values with ``changes`` applied, and its
    guidance prices with ``guidance_prices`` replacing the given (band, mode) pairs."""
    cleaned = _validated_changes(changes)
    new_prices = _validated_guidance_prices(guidance_prices or {})
    if not cleaned and not new_prices:
        raise RuleViolation("policy_change", "没有任何变更 the change changes nothing", field="changes")
    with transaction.atomic():
        # One publisher at a time per jurisdiction; the unique (jurisdiction, version) key backs this up.
        Jurisdiction.objects.select_for_update().filter(pk=jurisdiction.pk).get()
        previous = policy_selectors.current_policy(jurisdiction)
        values = {name: getattr(previous, name) for name in _COPIED_FIELDS}
        if "risk_thresholds" in cleaned:
            cleaned["risk_thresholds"] = {**previous.risk_thresholds, **cleaned["risk_thresholds"]}
        values.update(cleaned)
        policy = Policy.objects.create(
            jurisdiction=jurisdiction,
            version=previous.version + 1,
            effective_from=clock.now(),
            created_by=changed_by,
            change_note=note[:500],
            **values,
        )
        _write_guidance_prices(policy, {**policy_selectors.guidance_prices(previous), **new_prices})
    return policy


def _write_guidance_prices(policy: Policy, prices: Mapping[tuple[str, str], int]) -> None:
    GuidancePrice.objects.bulk_create(
        GuidancePrice(policy=policy, class_size_band=band, mode=mode, price_per_lesson_fen=fen)
        for (band, mode), fen in sorted(prices.items())
    )


def _invalid(field: str, message_zh: str, message_en: str, **details: Any) -> RuleViolation:
    return RuleViolation("policy_change", f"{message_zh} {message_en}", field=field, **details)


def _validated_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    cleaned: dict[str, Any] = {}
    for name, value in changes.items():
        if name not in EDITABLE_FIELDS:
            raise _invalid(name, f"未知的政策项 {name}", f"unknown policy field {name!r}")
        if name in EDITABLE_INTEGERS:
            rule = EDITABLE_INTEGERS[name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise _invalid(name, f"{name} 必须是整数", f"{name} must be an integer, got {value!r}")
            if not rule.minimum <= value <= rule.maximum:
                raise _invalid(
                    name,
                    f"{name} 必须在 {rule.minimum} 到 {rule.maximum} 之间",
                    f"{name} must be between {rule.minimum} and {rule.maximum}, got {value}",
                    limit=rule.minimum if value < rule.minimum else rule.maximum,
                    requested=value,
                )
        elif name in EDITABLE_BOOLEANS:
            if not isinstance(value, bool):
                raise _invalid(name, f"{name} 必须是是/否", f"{name} must be true or false, got {value!r}")
        elif name == "release_cadence":
            if value not in ReleaseCadence.values:
                raise _invalid(
                    name,
                    f"拨付周期只能是 {ReleaseCadence.values}",
                    f"release_cadence must be one of {ReleaseCadence.values}, got {value!r}",
                )
        elif name == "risk_thresholds":
            value = _validated_thresholds(value)
        cleaned[name] = value
    return cleaned


def _validated_thresholds(value: Any) -> dict[str, int]:
    known = default_risk_thresholds()
    if not isinstance(value, Mapping):
        raise _invalid("risk_thresholds", "预警阈值必须是映射", "risk_thresholds must be a mapping")
    for key, threshold in value.items():
        if key not in known:
            raise _invalid(
                "risk_thresholds",
                f"未知的预警阈值 {key}",
                f"unknown risk threshold {key!r} (details.known lists the thresholds a policy can set)",
                key=key,
                known=sorted(known),
            )
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
            raise _invalid(
                "risk_thresholds",
                f"预警阈值 {key} 必须是非负整数",
                f"risk threshold {key} must be a non-negative integer, got {threshold!r}",
            )
    return dict(value)


def _validated_guidance_prices(prices: Mapping[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    cleaned: dict[tuple[str, str], int] = {}
    for key, fen in prices.items():
        band, mode = key
        if band not in ClassSizeBand.values or mode not in TeachingMode.values:
            raise _invalid(
                "guidance_prices",
                f"未知的班型或授课方式 {band}/{mode}",
                f"unknown class-size band or mode {band}/{mode}",
            )
        if isinstance(fen, bool) or not isinstance(fen, int) or not 0 < fen < _BIGINT_MAX:
            raise _invalid(
                "guidance_prices",
                f"指导价必须是正整数（分）{band}/{mode}",
                f"a guidance price must be a positive integer of fen, got {fen!r} for {band}/{mode}",
            )
        cleaned[(str(band), str(mode))] = fen
    return cleaned
