"""``custody.services.policy``: version 1 with the national defaults, validated changes written as new
versions, guidance prices copied or replaced, and the selectors that find the version in force."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import User

from custody.errors import NotFound, RuleViolation
from custody.models import GuidancePrice, Jurisdiction, Policy
from custody.selectors.policy import current_policy, guidance_price_fen, guidance_prices, policy_at
from custody.services.policy import DEFAULT_GUIDANCE_PRICES_FEN, ensure_jurisdiction, publish_policy
from ledger import clock

pytestmark = pytest.mark.django_db

SHANGHAI = ZoneInfo("Asia/Shanghai")


def test_ensure_jurisdiction_writes_version_1_with_the_national_defaults() -> None:
    moment = datetime(2026, 11, 1, 9, tzinfo=SHANGHAI)
    with clock.frozen_at(moment):
        jurisdiction = ensure_jurisdiction(code="330106", name="西湖区")
    policy = current_policy(jurisdiction)
    assert (policy.version, policy.effective_from) == (1, moment)
    assert (policy.max_service_months, policy.max_paid_hours, policy.non_subject_max_charge_fen) == (
        3,
        60,
        500_000,
    )
    assert (policy.earliest_charge_days_before_start, policy.renewal_max_remaining_hours) == (30, 20)
    assert (policy.guidance_markup_percent, policy.lesson_auto_confirm_working_days) == (10, 15)
    assert policy.anti_splitting is True and policy.risk_reserve_allowed is False
    assert guidance_prices(policy) == {
        ("small", "offline"): 8000,
        ("medium", "offline"): 6000,
        ("large", "offline"): 4000,
        ("small", "online"): 2000,
        ("medium", "online"): 2000,
        ("large", "online"): 2000,
    }


def test_ensure_jurisdiction_is_idempotent_and_keeps_a_parent() -> None:
    city = ensure_jurisdiction(code="3301", name="杭州市")
    district = ensure_jurisdiction(code="330106", name="西湖区", parent=city)
    again = ensure_jurisdiction(code="330106", name="西湖区")
    assert again == district and again.parent == city
    assert Policy.objects.filter(jurisdiction=district).count() == 1
    assert GuidancePrice.objects.filter(policy__jurisdiction=district).count() == len(
        DEFAULT_GUIDANCE_PRICES_FEN
    )


def test_publish_policy_writes_the_next_version_effective_now_and_keeps_the_old_one(
    jurisdiction: Jurisdiction,
) -> None:
    regulator = User.objects.create_user("regulator")
    moment = datetime(2026, 12, 1, 8, tzinfo=SHANGHAI)
    with clock.frozen_at(moment):
        v2 = publish_policy(
            jurisdiction=jurisdiction,
            changes={
                "max_paid_hours": 40,
                "lesson_auto_confirm_working_days": 7,
                "release_cadence": "weekly",
            },
            changed_by=regulator,
            note="本地细则 local rules",
        )
    v1 = Policy.objects.get(jurisdiction=jurisdiction, version=1)
    assert (v2.version, v2.effective_from, v2.created_by, v2.change_note) == (
        2,
        moment,
        regulator,
        "本地细则 local rules",
    )
    assert (v2.max_paid_hours, v2.lesson_auto_confirm_working_days, v2.release_cadence) == (40, 7, "weekly")
    assert (v1.max_paid_hours, v1.lesson_auto_confirm_working_days, v1.release_cadence) == (60, 15, "daily")
    # Everything not changed is carried over.
    assert (v2.max_service_months, v2.non_subject_max_charge_fen, v2.reserve_minimum_fen) == (
        3,
        500_000,
        10_000_000,
    )
    assert current_policy(jurisdiction) == v2


def test_guidance_prices_are_copied_unless_replaced(jurisdiction: Jurisdiction) -> None:
    v2 = publish_policy(
        jurisdiction=jurisdiction,
        changes={},
        changed_by=None,
        note="指导价 guidance",
        guidance_prices={("medium", "offline"): 6500, ("small", "online"): 1800},
    )
    prices = guidance_prices(v2)
    assert prices[("medium", "offline")] == 6500
    assert prices[("small", "online")] == 1800
    assert prices[("small", "offline")] == 8000
    assert len(prices) == 6
    v1 = Policy.objects.get(jurisdiction=jurisdiction, version=1)
    assert guidance_price_fen(v1, class_size_band="medium", mode="offline") == 6000
    v3 = publish_policy(
        jurisdiction=jurisdiction, changes={"guidance_markup_percent": 5}, changed_by=None, note=""
    )
    assert guidance_prices(v3) == prices


def test_risk_thresholds_are_merged_into_the_current_ones(jurisdiction: Jurisdiction) -> None:
    v2 = publish_policy(
        jurisdiction=jurisdiction,
        changes={"risk_thresholds": {"outflow_per_day_fen": 50_000_000}},
        changed_by=None,
        note="",
    )
    assert v2.risk_thresholds["outflow_per_day_fen"] == 50_000_000
    assert v2.risk_thresholds["idle_days_with_funds"] == 14


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"max_paid_hourz": 40}, "max_paid_hourz"),
        ({"version": 9}, "version"),
        ({"effective_from": "2020-01-01"}, "effective_from"),
        ({"max_paid_hours": 0}, "max_paid_hours"),
        ({"max_paid_hours": -5}, "max_paid_hours"),
        ({"max_paid_hours": "60"}, "max_paid_hours"),
        ({"max_paid_hours": 60.0}, "max_paid_hours"),
        ({"max_paid_hours": True}, "max_paid_hours"),
        ({"non_subject_max_charge_fen": 0}, "non_subject_max_charge_fen"),
        ({"max_service_months": 0}, "max_service_months"),
        ({"guidance_markup_percent": 101}, "guidance_markup_percent"),
        ({"earliest_charge_days_before_start": -1}, "earliest_charge_days_before_start"),
        ({"lesson_auto_confirm_working_days": 40_000}, "lesson_auto_confirm_working_days"),
        ({"anti_splitting": 0}, "anti_splitting"),
        ({"release_cadence": "monthly"}, "release_cadence"),
        ({"risk_thresholds": {"made_up": 1}}, "risk_thresholds"),
        ({"risk_thresholds": {"disputed_lessons": -1}}, "risk_thresholds"),
        ({"risk_thresholds": [1, 2]}, "risk_thresholds"),
    ],
)
def test_publish_policy_refuses_unknown_fields_and_bad_values(
    jurisdiction: Jurisdiction, changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(RuleViolation) as refused:
        publish_policy(jurisdiction=jurisdiction, changes=changes, changed_by=None, note="")
    assert (refused.value.rule, refused.value.field) == ("policy_change", field)
    assert Policy.objects.filter(jurisdiction=jurisdiction).count() == 1


def test_a_range_error_names_the_limit(jurisdiction: Jurisdiction) -> None:
    with pytest.raises(RuleViolation) as refused:
        publish_policy(
            jurisdiction=jurisdiction, changes={"guidance_markup_percent": 101}, changed_by=None, note=""
        )
    assert (refused.value.details["limit"], refused.value.details["requested"]) == (100, 101)


@pytest.mark.parametrize(
    "prices",
    [
        {("tiny", "offline"): 100},
        {("small", "hybrid"): 100},
        {("small", "offline"): 0},
        {("small", "offline"): "1"},
    ],
)
def test_publish_policy_refuses_bad_guidance_prices(
    jurisdiction: Jurisdiction, prices: dict[Any, Any]
) -> None:
    with pytest.raises(RuleViolation) as refused:
        publish_policy(
            jurisdiction=jurisdiction, changes={}, changed_by=None, note="", guidance_prices=prices
        )
    assert refused.value.field == "guidance_prices"


def test_publish_policy_refuses_an_empty_change(jurisdiction: Jurisdiction) -> None:
    with pytest.raises(RuleViolation) as refused:
        publish_policy(jurisdiction=jurisdiction, changes={}, changed_by=None, note="")
    assert refused.value.rule == "policy_change"


def test_zero_is_allowed_where_it_means_something(jurisdiction: Jurisdiction) -> None:
    v2 = publish_policy(
        jurisdiction=jurisdiction,
        changes={"guidance_markup_percent": 0, "renewal_max_remaining_hours": 0, "closure_notice_days": 0},
        changed_by=None,
        note="",
    )
    assert (v2.guidance_markup_percent, v2.renewal_max_remaining_hours, v2.closure_notice_days) == (0, 0, 0)


def test_policy_at_finds_the_version_in_force_at_a_moment(jurisdiction: Jurisdiction) -> None:
    v1 = current_policy(jurisdiction)
    later = v1.effective_from + timedelta(days=10)
    with clock.frozen_at(later):
        v2 = publish_policy(
            jurisdiction=jurisdiction, changes={"max_paid_hours": 50}, changed_by=None, note=""
        )
    assert policy_at(jurisdiction, later - timedelta(seconds=1)) == v1
    assert policy_at(jurisdiction, later) == v2
    with pytest.raises(NotFound):
        policy_at(jurisdiction, v1.effective_from - timedelta(seconds=1))


def test_current_policy_of_a_jurisdiction_without_one_is_not_found() -> None:
    bare = Jurisdiction.objects.create(code="000000", name="无政策")
    with pytest.raises(NotFound):
        current_policy(bare)


def test_every_risk_threshold_the_alert_scan_reads_can_be_set(jurisdiction: Jurisdiction) -> None:
    from custody.services.alerts import DEFAULT_THRESHOLDS

    changes = {key: value + 1 for key, value in DEFAULT_THRESHOLDS.items()}  # red keys included

    v2 = publish_policy(
        jurisdiction=jurisdiction, changes={"risk_thresholds": changes}, changed_by=None, note=""
    )

    assert v2.risk_thresholds == changes
    assert "outflow_per_day_red_fen" in changes and "reserve_shortfall_red_fen" in changes


def test_a_threshold_added_to_the_defaults_is_accepted_and_unknown_ones_are_named(
    jurisdiction: Jurisdiction, monkeypatch: pytest.MonkeyPatch
) -> None:
    from custody.services import policy as policy_service

    defaults = policy_service.default_risk_thresholds()
    monkeypatch.setattr(policy_service, "default_risk_thresholds", lambda: {**defaults, "new_rule_red": 9})

    v2 = publish_policy(
        jurisdiction=jurisdiction, changes={"risk_thresholds": {"new_rule_red": 3}}, changed_by=None, note=""
    )
    assert v2.risk_thresholds["new_rule_red"] == 3

    with pytest.raises(RuleViolation) as refused:
        publish_policy(
            jurisdiction=jurisdiction,
            changes={"risk_thresholds": {"new_rule_redd": 3}},
            changed_by=None,
            note="",
        )
    error = refused.value
    assert (error.rule, error.field, error.details["key"]) == (
        "policy_change",
        "risk_thresholds",
        "new_rule_redd",
    )
    assert (
        "未知的预警阈值 new_rule_redd" in error.message
        and "unknown risk threshold 'new_rule_redd'" in error.message
    )
    assert "new_rule_red" in error.details["known"] and "disputed_lessons_red" in error.details["known"]
