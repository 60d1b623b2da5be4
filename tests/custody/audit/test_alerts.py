"""Risk alerts: every rule fires at its threshold and not one unit on the safe side of it, at yellow and at
red; one unresolved alert per (institution, rule, window); the handling workflow; notifications through the
inbox and the SMS and WeChat adapters (fake clients); and the scan's cost does not grow with the number of
institutions (set-based queries).

Business time is frozen at Monday 2024-03-04 10:00 Shanghai (tests/custody/flows/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from custody.errors import IllegalTransition, RuleViolation
from custody.models import (
    AlertAction,
    AlertLevel,
    AlertRule,
    AlertState,
    ChargeRefusal,
    Contract,
    GuidancePrice,
    InboxMessage,
    Institution,
    Jurisdiction,
    Lesson,
    Policy,
    RiskAlert,
)
from custody.selectors.policy import current_policy
from custody.services.alerts import (
    SPECS,
    UNRESOLVED,
    acknowledge_alert,
    charge_refusals_recorded,
    deliver_notifications,
    investigate_alert,
    mark_inbox_read,
    record_charge_refusal,
    resolve_alert,
    run_risk_scan,
)
from custody.services.lessons import confirm_lesson, dispute_lesson
from custody.services.payouts import record_payout_result, run_release_payouts
from custody.services.policy import publish_policy
from custody.services.refunds import claim_refund
from custody.services.reserve import check_reserves
from ledger import clock
from ledger.models import Account
from tests.custody.audit.fakes import FakeSmsClient, FakeWechatClient
from tests.custody.conftest import ContractFactory, CourseFactory, InstitutionFactory
from tests.custody.flows.conftest import NOW

pytestmark = pytest.mark.django_db


def set_thresholds(jurisdiction: Jurisdiction, **values: int) -> Policy:
    """The next policy version with these risk thresholds (and the same guidance prices).

    Written directly as a new version (``publish_policy`` accepts the same keys, every one of
    ``default_risk_thresholds()``, but also needs a regulator's change note and checks each value)."""
    current = current_policy(jurisdiction)
    prices = list(current.guidance_prices.all())
    current.pk = None
    current._state.adding = True
    current.version += 1
    current.risk_thresholds = {**current.risk_thresholds, **values}
    current.save()
    GuidancePrice.objects.bulk_create(
        GuidancePrice(
            policy=current,
            class_size_band=p.class_size_band,
            mode=p.mode,
            price_per_lesson_fen=p.price_per_lesson_fen,
        )
        for p in prices
    )
    return current


def scan(**kwargs: Any) -> dict[str, RiskAlert]:
    run_risk_scan(notifiers=[], **kwargs)
    return {a.rule: a for a in RiskAlert.objects.filter(state__in=UNRESOLVED)}


def assert_fires_exactly_at(jurisdiction: Jurisdiction, rule: str, figure: int, **scan_at: Any) -> RiskAlert:
    """With the figure fixed, move the thresholds over it: one unit on the safe side nothing fires; at the
    threshold a yellow alert with exactly these figures; then red the same way, escalating that alert."""
    spec = SPECS[rule]
    at, safe = (figure + 1, figure) if spec.below else (figure, figure + 1)
    set_thresholds(jurisdiction, **{spec.yellow_key: safe, spec.red_key: 0})
    assert rule not in scan(**scan_at), f"{rule} fired one unit on the safe side of its yellow threshold"
    set_thresholds(jurisdiction, **{spec.yellow_key: at})
    alert = scan(**scan_at)[rule]
    assert (alert.level, alert.value, alert.threshold) == (AlertLevel.YELLOW, figure, at)
    assert alert.evidence["thresholds"] == {"yellow": at, "red": 0}
    set_thresholds(jurisdiction, **{spec.red_key: safe})
    again = scan(**scan_at)[rule]
    assert (again.pk, again.level, again.seen_count) == (alert.pk, AlertLevel.YELLOW, 2)
    set_thresholds(jurisdiction, **{spec.red_key: at})
    red = scan(**scan_at)[rule]
    assert (red.pk, red.level, red.threshold) == (alert.pk, AlertLevel.RED, at)
    assert list(red.events.values_list("action", flat=True).order_by("pk")) == [
        AlertAction.RAISED,
        AlertAction.ESCALATED,
    ]
    return red


# --- each rule at its threshold -----------------------------------------------------------------------------


def test_custody_balance_below_the_preset(jurisdiction: Jurisdiction, paid_contract: Contract) -> None:
    alert = assert_fires_exactly_at(jurisdiction, AlertRule.CUSTODY_BELOW_PRESET, 160_000)
    assert alert.evidence["custody_cash_fen"] == 160_000
    assert alert.evidence["owed_fen"] == 160_000
    assert alert.window == "ongoing"


def test_custody_balance_below_what_is_owed(jurisdiction: Jurisdiction, paid_contract: Contract) -> None:
    assert AlertRule.CUSTODY_BELOW_OWED not in scan()  # the books hold: nothing missing
    # 2.50 yuan disappears from the custody account's books (only the verifier would see how).
    Account.objects.filter(code=f"custody_cash:i{paid_contract.institution_id}").update(
        debits_posted=160_000 - 250
    )
    alert = assert_fires_exactly_at(jurisdiction, AlertRule.CUSTODY_BELOW_OWED, 250)
    assert {k: alert.evidence[k] for k in ("custody_cash_fen", "owed_fen", "shortfall_fen")} == {
        "custody_cash_fen": 159_750,
        "owed_fen": 160_000,
        "shortfall_fen": 250,
    }


def test_missing_money_is_red_from_the_first_fen_by_default(paid_contract: Contract) -> None:
    Account.objects.filter(code=f"custody_cash:i{paid_contract.institution_id}").update(
        debits_posted=160_000 - 1
    )
    alert = scan()[AlertRule.CUSTODY_BELOW_OWED]
    assert (alert.level, alert.value, alert.threshold) == (AlertLevel.RED, 1, 1)


@pytest.fixture
def released(paid_contract: Contract, record: Callable[..., list[Lesson]]) -> Contract:
    """Two confirmed lessons (160.00 yuan) instructed to the institution in today's release run."""
    for lesson in record(paid_contract, 2):
        confirm_lesson(lesson=lesson)
    [payout] = run_release_payouts()
    assert payout.amount_fen == 16_000
    return paid_contract


def test_outflow_in_a_day_and_in_seven_days(jurisdiction: Jurisdiction, released: Contract) -> None:
    day = assert_fires_exactly_at(jurisdiction, AlertRule.OUTFLOW_DAY, 16_000)
    assert (day.window, day.evidence["payouts"]) == ("2024-03-04", 1)
    week = assert_fires_exactly_at(jurisdiction, AlertRule.OUTFLOW_WEEK, 16_000)
    assert week.window == "2024-W10"
    # The next day is a new day's window; the payout still counts in the 7 days.
    later = scan(now=NOW + timedelta(days=1))
    assert later[AlertRule.OUTFLOW_WEEK].pk == week.pk
    assert RiskAlert.objects.filter(rule=AlertRule.OUTFLOW_DAY).count() == 1


def test_a_failed_payout_is_no_outflow(jurisdiction: Jurisdiction, released: Contract) -> None:
    set_thresholds(jurisdiction, outflow_per_day_fen=1, outflow_per_week_fen=1)
    payout = released.institution.payouts.get()
    record_payout_result(reference=payout.reference, executed=False, reason="账户冻结 account frozen")
    alerts = scan()
    assert AlertRule.OUTFLOW_DAY not in alerts and AlertRule.OUTFLOW_WEEK not in alerts


def test_refund_claims_spiking(
    jurisdiction: Jurisdiction,
    make_contract: ContractFactory,
    make_student: Callable[..., Any],
    pay: Callable[[Contract], Contract],
) -> None:
    for n in range(2):
        claim_refund(contract=pay(make_contract(student=make_student())), idempotency_key=f"claim-{n}")
    alert = assert_fires_exactly_at(jurisdiction, AlertRule.REFUND_CLAIMS_SPIKE, 2)
    assert alert.evidence["refund_claims"] == 2
    # Claims older than 7 days no longer count: the next week's window raises nothing.
    scan(now=NOW + timedelta(days=7, seconds=1))
    assert list(
        RiskAlert.objects.filter(rule=AlertRule.REFUND_CLAIMS_SPIKE).values_list("window", flat=True)
    ) == ["2024-W10"]


def test_lesson_consumption_spiking(
    jurisdiction: Jurisdiction, paid_contract: Contract, record: Callable[..., list[Lesson]]
) -> None:
    with clock.frozen_at(NOW - timedelta(days=20)):
        record(paid_contract, 1)  # 80.00 in the 28 days before the week: 20.00 a week on average
    record(paid_contract, 1)  # 80.00 this week: 400 % of the average
    set_thresholds(jurisdiction, consumption_spike_min_fen=8_001)
    set_thresholds(jurisdiction, consumption_spike_factor_percent=1, consumption_spike_red_percent=0)
    assert AlertRule.CONSUMPTION_SPIKE not in scan()  # below the minimum weekly value: not a spike
    set_thresholds(jurisdiction, consumption_spike_min_fen=8_000)
    alert = assert_fires_exactly_at(jurisdiction, AlertRule.CONSUMPTION_SPIKE, 400)
    assert {
        k: alert.evidence[k] for k in ("week_lesson_fen", "baseline_28_days_fen", "percent_of_average")
    } == {
        "week_lesson_fen": 8_000,
        "baseline_28_days_fen": 8_000,
        "percent_of_average": 400,
    }


def test_many_unconfirmed_lessons(
    jurisdiction: Jurisdiction, paid_contract: Contract, record: Callable[..., list[Lesson]]
) -> None:
    record(paid_contract, 3)
    assert_fires_exactly_at(jurisdiction, AlertRule.UNCONFIRMED_LESSONS, 3)


def test_many_disputed_lessons(
    jurisdiction: Jurisdiction, paid_contract: Contract, record: Callable[..., list[Lesson]]
) -> None:
    for lesson in record(paid_contract, 2):
        dispute_lesson(lesson=lesson, reason="老师未到 the teacher did not come")
    alert = assert_fires_exactly_at(jurisdiction, AlertRule.DISPUTED_LESSONS, 2)
    assert alert.evidence["disputed_lessons"] == 2


def test_no_lessons_while_holding_funds(
    jurisdiction: Jurisdiction, paid_contract: Contract, record: Callable[..., list[Lesson]]
) -> None:
    last = NOW - timedelta(days=20)
    with clock.frozen_at(last):
        [lesson] = record(paid_contract, 1)
    alert = assert_fires_exactly_at(jurisdiction, AlertRule.IDLE_WITH_FUNDS, 20)
    assert alert.evidence["last_lesson_recorded_at"] == lesson.recorded_at.isoformat()
    assert alert.evidence["prepaid_fen"] == 160_000


def test_idle_days_count_from_the_last_lesson_to_the_second(
    jurisdiction: Jurisdiction, paid_contract: Contract, record: Callable[..., list[Lesson]]
) -> None:
    with clock.frozen_at(NOW - timedelta(days=14)):
        record(paid_contract, 1)
    set_thresholds(jurisdiction, idle_days_with_funds=14, idle_days_with_funds_red=0)
    assert AlertRule.IDLE_WITH_FUNDS not in scan(now=NOW - timedelta(microseconds=1))
    assert scan(now=NOW)[AlertRule.IDLE_WITH_FUNDS].value == 14


def test_no_lesson_ever_counts_from_the_first_payment_and_no_funds_means_no_alert(
    jurisdiction: Jurisdiction, paid_contract: Contract, make_contract: ContractFactory
) -> None:
    set_thresholds(jurisdiction, idle_days_with_funds=14, idle_days_with_funds_red=0)
    assert AlertRule.IDLE_WITH_FUNDS not in scan(now=NOW + timedelta(days=14) - timedelta(seconds=1))
    assert scan(now=NOW + timedelta(days=14))[AlertRule.IDLE_WITH_FUNDS].evidence["first_payment_at"]


def test_attempted_over_cap_charges(
    jurisdiction: Jurisdiction, institution: Institution, make_contract: ContractFactory
) -> None:
    for hours in (61, 70):
        with pytest.raises(RuleViolation), charge_refusals_recorded(institution=institution):
            make_contract(paid_hours=hours)
    # A refusal that is not a charging cap is not an over-cap attempt.
    assert record_charge_refusal(institution=institution, violation=RuleViolation("currency", "x")) is None
    assert list(ChargeRefusal.objects.values_list("rule", flat=True)) == ["max_paid_hours"] * 2
    alert = assert_fires_exactly_at(jurisdiction, AlertRule.OVER_CAP_ATTEMPTS, 2)
    assert alert.evidence["by_rule"] == {"max_paid_hours": 2}


def test_reserve_below_the_requirement(
    jurisdiction: Jurisdiction, make_institution: InstitutionFactory
) -> None:
    publish_policy(
        jurisdiction=jurisdiction,
        changes={"risk_reserve_allowed": True, "reserve_minimum_fen": 10_000},
        changed_by=None,
        note="允许风险保证金 allow the risk-reserve mode",
    )
    reserve_institution = make_institution(name="自贡风险保证金机构", supervision_mode="risk_reserve")
    [check] = check_reserves()
    assert (check.institution_id, check.shortfall_fen) == (reserve_institution.pk, 10_000)
    alert = assert_fires_exactly_at(jurisdiction, AlertRule.RESERVE_SHORTFALL, 10_000)
    assert alert.evidence["required_fen"] == 10_000 and alert.evidence["reserve_fen"] == 0
    assert AlertRule.CUSTODY_BELOW_OWED not in scan()  # custody rules do not apply to reserve mode


# --- one alert per institution, rule and window; the workflow ---------------------------------------------


@pytest.fixture
def alert(
    jurisdiction: Jurisdiction, paid_contract: Contract, record: Callable[..., list[Lesson]]
) -> RiskAlert:
    record(paid_contract, 3)
    set_thresholds(jurisdiction, unconfirmed_lessons=3)
    return scan()[AlertRule.UNCONFIRMED_LESSONS]


def test_an_unresolved_alert_is_never_raised_twice_and_a_resolved_one_can_be_raised_again(
    alert: RiskAlert, django_user_model: Any
) -> None:
    for _ in range(3):
        scan()
    assert RiskAlert.objects.count() == 1
    alert.refresh_from_db()
    assert alert.seen_count == 4
    regulator = django_user_model.objects.create_user(username="regulator")
    resolve_alert(alert=alert, by=regulator, note="机构已补录确认 the institution chased the confirmations")
    fresh = scan()[AlertRule.UNCONFIRMED_LESSONS]
    assert fresh.pk != alert.pk and fresh.state == AlertState.OPEN
    assert RiskAlert.objects.count() == 2


def test_an_open_alert_whose_condition_is_gone_is_marked_cleared_and_back_when_it_returns(
    alert: RiskAlert, paid_contract: Contract, record: Callable[..., list[Lesson]]
) -> None:
    confirm_lesson(lesson=paid_contract.lessons.filter(state="pending").first())
    later = clock.now() + timedelta(hours=1)
    assert AlertRule.UNCONFIRMED_LESSONS in scan(now=later)  # still unresolved: a regulator closes it
    alert.refresh_from_db()
    assert (alert.cleared_at, alert.state, alert.seen_count) == (later, AlertState.OPEN, 1)
    scan(now=later + timedelta(hours=1))
    alert.refresh_from_db()
    assert alert.cleared_at == later  # the first scan that found it gone, not the latest
    record(paid_contract, 1)
    back = scan(now=later + timedelta(hours=2))[AlertRule.UNCONFIRMED_LESSONS]
    assert (back.pk, back.cleared_at, back.seen_count) == (alert.pk, None, 2)
    events = list(back.events.order_by("pk").values_list("action", "details"))
    assert [action for action, _ in events] == [
        AlertAction.RAISED,
        AlertAction.CLEARED,
        AlertAction.RECURRED,
    ]
    assert events[1][1]["level"] == AlertLevel.YELLOW and events[1][1]["last_seen_at"]


def test_a_day_that_is_over_is_not_cleared_and_a_scan_of_another_jurisdiction_clears_nothing(
    jurisdiction: Jurisdiction, released: Contract
) -> None:
    set_thresholds(jurisdiction, outflow_per_day_fen=1, outflow_per_day_red_fen=0)
    day = scan(now=NOW)[AlertRule.OUTFLOW_DAY]
    elsewhere = Jurisdiction.objects.create(code="other-district", name="另一区 another district")
    run_risk_scan(notifiers=[], jurisdiction=elsewhere, now=NOW + timedelta(hours=1))
    run_risk_scan(notifiers=[], now=NOW + timedelta(days=1))
    day.refresh_from_db()
    assert day.state == AlertState.OPEN and day.cleared_at is None
    assert list(day.events.values_list("action", flat=True)) == [AlertAction.RAISED]


def test_the_database_refuses_a_second_unresolved_alert(alert: RiskAlert) -> None:
    from django.db import IntegrityError, transaction

    duplicate = RiskAlert.objects.get(pk=alert.pk)
    duplicate.pk = None
    duplicate._state.adding = True
    with pytest.raises(IntegrityError), transaction.atomic():
        duplicate.save()


def test_the_handling_workflow(alert: RiskAlert, django_user_model: Any) -> None:
    regulator = django_user_model.objects.create_user(username="regulator")
    acknowledge_alert(alert=alert, by=regulator)
    with pytest.raises(IllegalTransition, match="acknowledged"):
        acknowledge_alert(alert=alert, by=regulator)
    investigate_alert(alert=alert, by=regulator, note="约谈机构 meeting the institution")
    with pytest.raises(IllegalTransition):
        acknowledge_alert(alert=alert, by=regulator)
    with pytest.raises(RuleViolation, match="note"):
        resolve_alert(alert=alert, by=regulator, note="  ")
    resolve_alert(alert=alert, by=regulator, note="已督促家长确认 parents reminded to confirm")
    alert.refresh_from_db()
    assert alert.state == AlertState.RESOLVED
    assert (alert.acknowledged_by, alert.investigated_by, alert.resolved_by) == (regulator,) * 3
    assert alert.resolution_note == "已督促家长确认 parents reminded to confirm"
    with pytest.raises(IllegalTransition):
        investigate_alert(alert=alert, by=regulator)
    assert list(alert.events.order_by("pk").values_list("action", "note")) == [
        (AlertAction.RAISED, ""),
        (AlertAction.ACKNOWLEDGED, ""),
        (AlertAction.INVESTIGATING, "约谈机构 meeting the institution"),
        (AlertAction.RESOLVED, "已督促家长确认 parents reminded to confirm"),
    ]


def test_an_open_alert_may_be_resolved_at_once_with_a_note(alert: RiskAlert) -> None:
    resolve_alert(alert=alert, by=None, note="误报 a false alarm: the lessons were confirmed offline")
    assert RiskAlert.objects.get(pk=alert.pk).state == AlertState.RESOLVED


# --- notifications ------------------------------------------------------------------------------------------


@pytest.fixture
def channels(settings: Any, jurisdiction: Jurisdiction) -> Iterator[None]:
    FakeSmsClient.sent, FakeWechatClient.sent, FakeSmsClient.failing = [], [], False
    settings.CUSTODY_ALERT_CHANNELS = {
        "sms": {
            "client": "tests.custody.audit.fakes.FakeSmsClient",
            "template": "SMS_ALERT_1",
            "recipients": {jurisdiction.code: ["13800000001", "13800000002"]},
        },
        "wechat": {
            "client": "tests.custody.audit.fakes.FakeWechatClient",
            "template": "tmpl-risk",
            "recipients": {jurisdiction.code: ["o-regulator-1"], "999999": ["o-elsewhere"]},
        },
    }
    yield
    FakeSmsClient.failing = False


def test_a_new_alert_goes_to_the_inbox_sms_and_wechat_after_commit(
    channels: None,
    jurisdiction: Jurisdiction,
    paid_contract: Contract,
    record: Callable[..., list[Lesson]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    record(paid_contract, 3)
    set_thresholds(jurisdiction, unconfirmed_lessons=3)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        run_risk_scan()
        assert InboxMessage.objects.count() == 0  # nothing is sent before the alert is committed
    assert len(callbacks) == 1
    [message] = InboxMessage.objects.all()
    assert message.jurisdiction == jurisdiction and message.subject.startswith("【黄色预警 yellow】")
    assert "启明学科培训中心" in message.subject and "3 笔/件 items" in message.body
    assert [m["phone"] for m in FakeSmsClient.sent] == ["13800000001", "13800000002"]
    assert FakeSmsClient.sent[0]["params"] == {
        "level": "黄色预警",
        "institution": "启明学科培训中心",
        "rule": "待确认课时过多",
        "alert": str(message.alert_id),
    }
    assert [m["openid"] for m in FakeWechatClient.sent] == ["o-regulator-1"]
    # The same condition seen again sends nothing; escalating to red sends once more.
    with django_capture_on_commit_callbacks(execute=True):
        run_risk_scan()
    assert (InboxMessage.objects.count(), len(FakeSmsClient.sent)) == (1, 2)
    set_thresholds(jurisdiction, unconfirmed_lessons_red=3)
    with django_capture_on_commit_callbacks(execute=True):
        run_risk_scan()
    assert InboxMessage.objects.count() == 2
    assert InboxMessage.objects.order_by("-pk")[0].subject.startswith("【升级为红色预警 red】")
    assert len(FakeSmsClient.sent) == 4 and len(FakeWechatClient.sent) == 2
    assert mark_inbox_read(message_ids=[message.pk], by=None) == 1
    assert mark_inbox_read(message_ids=[message.pk], by=None) == 0


def test_a_failed_channel_is_recorded_and_retried_without_repeating_the_others(
    channels: None, alert: RiskAlert, django_capture_on_commit_callbacks: Any
) -> None:
    FakeSmsClient.failing = True
    deliver_notifications()
    failed = alert.events.get(action=AlertAction.NOTIFY_FAILED)
    assert failed.details["channel"] == "sms" and "gateway timed out" in failed.details["error"]
    assert sorted(
        alert.events.filter(action=AlertAction.NOTIFIED).values_list("details__channel", flat=True)
    ) == [
        "inbox",
        "wechat",
    ]
    FakeSmsClient.failing = False
    with django_capture_on_commit_callbacks(execute=True):
        run_risk_scan()  # the scan retries what failed
    assert len(FakeSmsClient.sent) == 2
    assert InboxMessage.objects.count() == 1 and len(FakeWechatClient.sent) == 1


def test_an_unknown_or_unconfigured_channel_is_a_clear_error(settings: Any, alert: RiskAlert) -> None:
    from custody.notify import NotificationUnavailable, configured_notifiers

    settings.CUSTODY_ALERT_CHANNELS = {"sms": {"template": "SMS_1"}}
    with pytest.raises(NotificationUnavailable, match="no client configured"):
        configured_notifiers()
    settings.CUSTODY_ALERT_CHANNELS = {"fax": {}}
    with pytest.raises(NotificationUnavailable, match="unknown notification channel"):
        configured_notifiers()


# --- set-based ----------------------------------------------------------------------------------------------


def test_the_scan_costs_the_same_number_of_queries_for_two_or_six_institutions(
    make_institution: InstitutionFactory,
    make_course: CourseFactory,
    make_contract: ContractFactory,
    make_student: Callable[..., Any],
    pay: Callable[[Contract], Contract],
    record: Callable[..., list[Lesson]],
) -> None:
    def add_institution() -> None:
        contract = pay(
            make_contract(course=make_course(institution=make_institution()), student=make_student())
        )
        record(contract, 1)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            run_risk_scan(notifiers=[])
        return len(captured)

    for _ in range(2):
        add_institution()
    few = queries()
    for _ in range(4):
        add_institution()
    assert queries() == few
    assert Institution.objects.count() == 7  # the fixture course's institution, and six more
