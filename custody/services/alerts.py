"""Risk alerts (风险预警): the scan that raises them, their handling workflow, and their notifications.

A scan reads each rule's figures for every institution in scope with a few grouped queries (one per table,
whatever the number of institutions), compares them with the thresholds of the jurisdiction's current
policy (``Policy.risk_thresholds``, merged over ``DEFAULT_THRESHOLDS``), and writes what fired:

Each rule: the figure (unit); the yellow and red keys (defaults); when it fires.

- ``custody_below_preset``: custody cash, posted (fen); ``custody_balance_below_fen`` (0 = off) /
  ``custody_balance_below_red_fen`` (0 = off); figure **below** the threshold, while anything is owed.
- ``custody_below_owed``: owed − (custody cash + money in clearing) (fen); ``custody_shortfall_fen`` (1) /
  ``custody_shortfall_red_fen`` (1); figure at or above the threshold (as all the rules below).
- ``outflow_day``: payouts instructed today and not failed (fen); ``outflow_per_day_fen`` (1,000,000 yuan)
  / ``outflow_per_day_red_fen`` (2,000,000 yuan).
- ``outflow_week``: the same over the last 7 days (fen); ``outflow_per_week_fen`` (2,000,000 yuan) /
  ``outflow_per_week_red_fen`` (4,000,000 yuan).
- ``refund_claims_spike``: parents' refund claims in 7 days (count); ``refund_claims_per_week`` (20) /
  ``refund_claims_per_week_red`` (50).
- ``consumption_spike``: lesson value recorded in 7 days as a percentage of the weekly average of the 28
  days before (percent); ``consumption_spike_factor_percent`` (300) / ``consumption_spike_red_percent``
  (500); only when the 28 days had lessons and the 7 days reach ``consumption_spike_min_fen`` (10,000 yuan).
- ``unconfirmed_lessons``: lessons awaiting confirmation (count); ``unconfirmed_lessons`` (200) /
  ``unconfirmed_lessons_red`` (500).
- ``disputed_lessons``: disputed lessons (count); ``disputed_lessons`` (20) / ``disputed_lessons_red`` (50).
- ``idle_with_funds``: whole days since the last lesson was recorded (if none ever, since the first payment),
  while prepaid money is held (days); ``idle_days_with_funds`` (14) / ``idle_days_with_funds_red`` (30).
- ``over_cap_attempts``: charges refused by a charging cap in 7 days (count, ``ChargeRefusal``);
  ``over_cap_attempts_per_week`` (1) / ``over_cap_attempts_per_week_red`` (5).
- ``reserve_shortfall``: the latest reserve check's shortfall (fen); ``reserve_shortfall_fen`` (1) /
  ``reserve_shortfall_red_fen`` (1).

"Owed" is Σ ``prepaid:c`` + ``payable:i`` + Σ ``refund_payable:c`` (posted): money missing is red from the
first fen unless a jurisdiction raises the red threshold to use a yellow band. A threshold of 0 or less turns
a level off. Red is checked first; an institution gets one alert per rule and window at the highest level
reached. Custody rules apply to bank-custody institutions, the reserve rule to risk-reserve ones; closed
institutions are not scanned.

Windows: "today" is the local (Asia/Shanghai) day up to the scan's moment (label ``2024-03-04``); "7 days" is
the 7×24 hours before it (label: the ISO week of the scan, ``2024-W10``); standing conditions are labelled
``ongoing``. One alert per (institution, rule, window) stays open until a regulator resolves it; a later scan
marks it seen again or escalates it to red, or, when the condition is gone from its window, marks it cleared
(``cleared_at``; back to empty if it returns), so a regulator sees which open alerts are still live.
Business time comes from ``ledger.clock``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import partial
from typing import Any

from django.contrib.auth.models import User
from django.db import connection, transaction
from django.db.models import Count, F, Max, Min, OuterRef, Q, Subquery, Sum

from custody import rules
from custody.errors import IllegalTransition, RuleViolation
from custody.models import (
    AlertAction,
    AlertEvent,
    AlertLevel,
    AlertRule,
    AlertState,
    ChargeRefusal,
    Contract,
    Institution,
    InstitutionState,
    Jurisdiction,
    Lesson,
    LessonState,
    Payment,
    PayoutInstruction,
    PayoutState,
    Policy,
    Refund,
    RefundReason,
    ReserveCheck,
    RiskAlert,
    SupervisionMode,
)
from custody.models.policy import default_risk_thresholds
from custody.notify import AlertNotice, Notifier, configured_notifiers
from custody.services.calendar import SHANGHAI, local_date
from ledger import clock

# One list of thresholds and defaults, shared with the policy service (which accepts exactly these keys).
DEFAULT_THRESHOLDS: dict[str, int] = default_risk_thresholds()

# The charging caps whose refusals count as attempted over-cap charges.
CAP_RULES = frozenset(
    {
        rules.MAX_SERVICE_MONTHS,
        rules.MAX_PAID_HOURS,
        rules.NON_SUBJECT_MAX_CHARGE,
        rules.ANTI_SPLITTING_HOURS,
        rules.ANTI_SPLITTING_PERIOD,
        rules.EARLIEST_CHARGE,
        rules.RENEWAL_MAX_REMAINING_HOURS,
        rules.LIST_PRICE,
        rules.GUIDANCE_PRICE,
    }
)

DAY, WEEK, ONGOING = "day", "week", "ongoing"
WEEK_SPAN = timedelta(days=7)
BASELINE_SPAN = timedelta(days=28)
UNRESOLVED = (AlertState.OPEN, AlertState.ACKNOWLEDGED, AlertState.INVESTIGATING)
_SCAN_LOCK_ID = 0x5C4A_7A1E  # one risk scan writes at a time


@dataclass(frozen=True)
class RuleSpec:
    rule: AlertRule
    unit: str  # fen, count, days, percent
    yellow_key: str
    red_key: str
    window: str  # day, week, ongoing
    below: bool = False  # fires when the figure is below the threshold (else at or above it)

    @property
    def comparison(self) -> str:
        return "<" if self.below else "≥"


SPECS: dict[str, RuleSpec] = {
    spec.rule: spec
    for spec in (
        RuleSpec(
            AlertRule.CUSTODY_BELOW_PRESET,
            "fen",
            "custody_balance_below_fen",
            "custody_balance_below_red_fen",
            ONGOING,
            below=True,
        ),
        RuleSpec(
            AlertRule.CUSTODY_BELOW_OWED, "fen", "custody_shortfall_fen", "custody_shortfall_red_fen", ONGOING
        ),
        RuleSpec(AlertRule.OUTFLOW_DAY, "fen", "outflow_per_day_fen", "outflow_per_day_red_fen", DAY),
        RuleSpec(AlertRule.OUTFLOW_WEEK, "fen", "outflow_per_week_fen", "outflow_per_week_red_fen", WEEK),
        RuleSpec(
            AlertRule.REFUND_CLAIMS_SPIKE,
            "count",
            "refund_claims_per_week",
            "refund_claims_per_week_red",
            WEEK,
        ),
        RuleSpec(
            AlertRule.CONSUMPTION_SPIKE,
            "percent",
            "consumption_spike_factor_percent",
            "consumption_spike_red_percent",
            WEEK,
        ),
        RuleSpec(
            AlertRule.UNCONFIRMED_LESSONS, "count", "unconfirmed_lessons", "unconfirmed_lessons_red", ONGOING
        ),
        RuleSpec(AlertRule.DISPUTED_LESSONS, "count", "disputed_lessons", "disputed_lessons_red", ONGOING),
        RuleSpec(
            AlertRule.IDLE_WITH_FUNDS, "days", "idle_days_with_funds", "idle_days_with_funds_red", ONGOING
        ),
        RuleSpec(
            AlertRule.OVER_CAP_ATTEMPTS,
            "count",
            "over_cap_attempts_per_week",
            "over_cap_attempts_per_week_red",
            WEEK,
        ),
        RuleSpec(
            AlertRule.RESERVE_SHORTFALL, "fen", "reserve_shortfall_fen", "reserve_shortfall_red_fen", ONGOING
        ),
    )
}


def level_reached(spec: RuleSpec, value: int, limits: Mapping[str, int]) -> tuple[str, int] | None:
    """The highest level ``value`` reaches under ``limits`` and that level's threshold, or None."""
    for level, key in ((AlertLevel.RED, spec.red_key), (AlertLevel.YELLOW, spec.yellow_key)):
        threshold = int(limits[key])
        if threshold > 0 and (value < threshold if spec.below else value >= threshold):
            return level, threshold
    return None


# --- the scan -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """A rule that fired for one institution, before it is written."""

    institution_id: int
    rule: str
    level: str
    window: str
    value: int
    threshold: int
    evidence: dict[str, Any]


@dataclass(frozen=True)
class Windows:
    now: datetime
    today: date
    day_start: datetime
    week_start: datetime
    baseline_start: datetime

    @classmethod
    def at(cls, now: datetime) -> Windows:
        today = local_date(now)
        week_start = now - WEEK_SPAN
        return cls(
            now=now,
            today=today,
            day_start=datetime.combine(today, time.min, tzinfo=SHANGHAI),
            week_start=week_start,
            baseline_start=week_start - BASELINE_SPAN,
        )

    def label(self, kind: str) -> str:
        if kind == DAY:
            return self.today.isoformat()
        if kind == WEEK:
            year, week, _ = self.today.isocalendar()
            return f"{year}-W{week:02d}"
        return ONGOING

    def span(self, kind: str) -> dict[str, str | None]:
        start = {DAY: self.day_start, WEEK: self.week_start}.get(kind)
        return {"from": _local(start), "to": _local(self.now)} if start else {}


def _local(moment: datetime | None) -> str | None:
    """A moment as Shanghai wall-clock time with its offset, as regulators read it."""
    return moment.astimezone(SHANGHAI).isoformat() if moment is not None else None


@dataclass
class ScanResult:
    raised: list[RiskAlert] = field(default_factory=list)
    escalated: list[RiskAlert] = field(default_factory=list)
    seen_again: int = 0
    cleared: list[RiskAlert] = field(default_factory=list)
    recurred: list[RiskAlert] = field(default_factory=list)
    institutions: int = 0

    @property
    def findings(self) -> int:
        return len(self.raised) + len(self.escalated) + self.seen_again


@dataclass(frozen=True)
class _Scope:
    institutions: dict[int, tuple[str, int, str]]  # pk -> (name, jurisdiction_id, supervision_mode)
    jurisdiction_id: int | None

    def q(self, path: str = "") -> Q:
        """Rows of institutions in the scope's jurisdiction (the rows of other institutions are dropped)."""
        if self.jurisdiction_id is None:
            return Q()
        return Q(**{f"{path}institution__jurisdiction_id": self.jurisdiction_id})


def run_risk_scan(
    *,
    now: datetime | None = None,
    jurisdiction: Jurisdiction | None = None,
    notifiers: Sequence[Notifier] | None = None,
) -> ScanResult:
    """Scan every institution not closed (of one jurisdiction, or all), raise or escalate what fired,
    mark cleared the open alerts whose condition is gone, and notify after commit. Safe to re-run: an
    unresolved alert is never raised twice."""
    windows = Windows.at(now or clock.now())
    institutions = Institution.objects.exclude(state=InstitutionState.CLOSED)
    if jurisdiction is not None:
        institutions = institutions.filter(jurisdiction=jurisdiction)
    scope = _Scope(
        institutions={
            pk: (name, jurisdiction_id, mode)
            for pk, name, jurisdiction_id, mode in institutions.values_list(
                "pk", "name", "jurisdiction_id", "supervision_mode"
            )
        },
        jurisdiction_id=jurisdiction.pk if jurisdiction is not None else None,
    )
    policies = _current_policies({j for _, j, _ in scope.institutions.values()})
    findings = list(_evaluate(scope, policies, windows))
    result = _persist(findings, windows, policies, scope)
    result.institutions = len(scope.institutions)
    # After commit: the alerts raised or escalated now, and any earlier delivery that failed.
    transaction.on_commit(partial(deliver_notifications, notifiers=notifiers))
    return result


def _current_policies(jurisdiction_ids: Iterable[int]) -> dict[int, tuple[int, dict[str, int]]]:
    """Jurisdiction -> (current policy version, thresholds over the defaults)."""
    newest: dict[int, tuple[int, dict[str, int]]] = {}
    for jurisdiction_id, version, thresholds in (
        Policy.objects.filter(jurisdiction_id__in=set(jurisdiction_ids))
        .order_by("jurisdiction_id", "-version")
        .values_list("jurisdiction_id", "version", "risk_thresholds")
    ):
        if jurisdiction_id not in newest:
            newest[jurisdiction_id] = (version, {**DEFAULT_THRESHOLDS, **(thresholds or {})})
    return newest


def _grouped(rows: Iterable[tuple[Any, ...]]) -> dict[int, tuple[Any, ...]]:
    return {row[0]: row[1:] for row in rows}


def _evaluate(
    scope: _Scope, policies: Mapping[int, tuple[int, dict[str, int]]], w: Windows
) -> Iterator[Finding]:
    if not scope.institutions:
        return
    figures = _figures(scope, w)
    for pk, (_name, jurisdiction_id, mode) in scope.institutions.items():
        _, limits = policies.get(jurisdiction_id, (0, DEFAULT_THRESHOLDS))
        for rule, value, evidence in _institution_figures(pk, mode, figures, limits, w):
            spec = SPECS[rule]
            reached = level_reached(spec, value, limits)
            if reached is None:
                continue
            level, threshold = reached
            yield Finding(
                institution_id=pk,
                rule=rule,
                level=level,
                window=w.label(spec.window),
                value=value,
                threshold=threshold,
                evidence={
                    **evidence,
                    "window": {"label": w.label(spec.window), **w.span(spec.window)},
                    "thresholds": {"yellow": int(limits[spec.yellow_key]), "red": int(limits[spec.red_key])},
                    "threshold_keys": {"yellow": spec.yellow_key, "red": spec.red_key},
                    "comparison": spec.comparison,
                    "scanned_at": _local(w.now),
                },
            )


@dataclass
class _Figures:
    money: dict[int, tuple[Any, ...]]
    contracts: dict[int, tuple[Any, ...]]
    clearing: dict[int, tuple[Any, ...]]
    lessons: dict[int, tuple[Any, ...]]
    outflow: dict[int, tuple[Any, ...]]
    claims: dict[int, tuple[Any, ...]]
    refusals: dict[int, dict[str, int]]
    reserve: dict[int, tuple[Any, ...]]


def _figures(scope: _Scope, w: Windows) -> _Figures:
    """Every figure of every rule, one grouped query per table."""
    ids = list(scope.institutions)
    money = _grouped(
        Institution.objects.filter(pk__in=ids).values_list(
            "pk",
            F("cash_account__debits_posted") - F("cash_account__credits_posted"),
            F("payable_account__credits_posted") - F("payable_account__debits_posted"),
        )
    )
    contracts = _grouped(
        Contract.objects.filter(scope.q(), prepaid_account__isnull=False)
        .values("institution_id")
        .annotate(
            prepaid=Sum(F("prepaid_account__credits_posted") - F("prepaid_account__debits_posted")),
            refund=Sum(F("refund_account__credits_posted") - F("refund_account__debits_posted")),
            first_paid=Min("paid_at"),
        )
        .values_list("institution_id", "prepaid", "refund", "first_paid")
    )
    clearing = _grouped(
        Payment.objects.filter(scope.q("contract__"), settlement_entry__isnull=True)
        .values("contract__institution_id")
        .annotate(total=Sum("amount_fen"), n=Count("pk"))
        .values_list("contract__institution_id", "total", "n")
    )
    counted = ~Q(state=LessonState.VOIDED)
    in_week = Q(recorded_at__gte=w.week_start, recorded_at__lte=w.now) & counted
    in_baseline = Q(recorded_at__gte=w.baseline_start, recorded_at__lt=w.week_start) & counted
    lessons = _grouped(
        Lesson.objects.filter(scope.q())
        .values("institution_id")
        .annotate(
            pending=Count("pk", filter=Q(state=LessonState.PENDING)),
            disputed=Count("pk", filter=Q(state=LessonState.DISPUTED)),
            week_fen=Sum("amount_fen", filter=in_week),
            week_n=Count("pk", filter=in_week),
            baseline_fen=Sum("amount_fen", filter=in_baseline),
            baseline_n=Count("pk", filter=in_baseline),
            last_recorded=Max("recorded_at", filter=Q(recorded_at__lte=w.now)),
        )
        .values_list(
            "institution_id",
            "pending",
            "disputed",
            "week_fen",
            "week_n",
            "baseline_fen",
            "baseline_n",
            "last_recorded",
        )
    )
    today = Q(instructed_at__gte=w.day_start)
    outflow = _grouped(
        PayoutInstruction.objects.filter(scope.q(), instructed_at__gte=w.week_start, instructed_at__lte=w.now)
        .exclude(state=PayoutState.FAILED)
        .values("institution_id")
        .annotate(
            day_fen=Sum("amount_fen", filter=today),
            day_n=Count("pk", filter=today),
            week_fen=Sum("amount_fen"),
            week_n=Count("pk"),
        )
        .values_list("institution_id", "day_fen", "day_n", "week_fen", "week_n")
    )
    claims = _grouped(
        Refund.objects.filter(
            scope.q("contract__"),
            reason=RefundReason.PARENT_CLAIM,
            claimed_at__gte=w.week_start,
            claimed_at__lte=w.now,
        )
        .values("contract__institution_id")
        .annotate(n=Count("pk"))
        .values_list("contract__institution_id", "n")
    )
    refusals: dict[int, dict[str, int]] = defaultdict(dict)
    for pk, rule, n in (
        ChargeRefusal.objects.filter(
            scope.q(), rule__in=CAP_RULES, occurred_at__gte=w.week_start, occurred_at__lte=w.now
        )
        .values("institution_id", "rule")
        .annotate(n=Count("pk"))
        .values_list("institution_id", "rule", "n")
    ):
        refusals[pk][rule] = n
    reserve = _grouped(
        ReserveCheck.objects.filter(
            scope.q(),
            institution__supervision_mode=SupervisionMode.RISK_RESERVE,
            on_date=_latest_check_date(w.today),
        ).values_list(
            "institution_id",
            "on_date",
            "required_fen",
            "reserve_fen",
            "shortfall_fen",
            "unconsumed_prepaid_fen",
        )
    )
    return _Figures(money, contracts, clearing, lessons, outflow, claims, dict(refusals), reserve)


def _latest_check_date(today: date) -> Subquery:
    return Subquery(
        ReserveCheck.objects.filter(institution_id=OuterRef("institution_id"), on_date__lte=today)
        .order_by("-on_date")
        .values("on_date")[:1]
    )


def _institution_figures(
    pk: int, mode: str, f: _Figures, limits: Mapping[str, int], w: Windows
) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """(rule, figure, evidence) for each rule that applies to this institution."""
    cash, payable = (int(v or 0) for v in f.money.get(pk, (0, 0)))
    prepaid, refund_payable, first_paid = f.contracts.get(pk, (0, 0, None))
    prepaid, refund_payable = int(prepaid or 0), int(refund_payable or 0)
    in_clearing, clearing_n = (int(v or 0) for v in f.clearing.get(pk, (0, 0)))
    owed = prepaid + payable + refund_payable
    if mode == SupervisionMode.CUSTODY:
        money = {
            "custody_cash_fen": cash,
            "in_clearing_fen": in_clearing,
            "payments_in_clearing": clearing_n,
            "prepaid_fen": prepaid,
            "payable_fen": payable,
            "refund_payable_fen": refund_payable,
            "owed_fen": owed,
        }
        if owed > 0:
            yield AlertRule.CUSTODY_BELOW_PRESET, cash, money
        yield (
            AlertRule.CUSTODY_BELOW_OWED,
            owed - cash - in_clearing,
            {
                **money,
                "shortfall_fen": owed - cash - in_clearing,
            },
        )

    day_fen, day_n, week_fen, week_n = (int(v or 0) for v in f.outflow.get(pk, (0, 0, 0, 0)))
    yield AlertRule.OUTFLOW_DAY, day_fen, {"outflow_fen": day_fen, "payouts": day_n}
    yield AlertRule.OUTFLOW_WEEK, week_fen, {"outflow_fen": week_fen, "payouts": week_n}

    (claims,) = f.claims.get(pk, (0,))
    yield AlertRule.REFUND_CLAIMS_SPIKE, int(claims), {"refund_claims": int(claims)}

    pending, disputed, lesson_week_fen, lesson_week_n, baseline_fen, baseline_n, last_recorded = (
        f.lessons.get(pk, (0, 0, 0, 0, 0, 0, None))
    )
    lesson_week_fen, baseline_fen = int(lesson_week_fen or 0), int(baseline_fen or 0)
    if baseline_fen > 0 and lesson_week_fen >= int(limits["consumption_spike_min_fen"]):
        # Percent of the weekly average of the 28 days before: week × 100 / (baseline / 4), floored; the
        # threshold compares the exact ratio (floor(x) ≥ n ⟺ x ≥ n for a whole n).
        percent = lesson_week_fen * 400 // baseline_fen
        yield (
            AlertRule.CONSUMPTION_SPIKE,
            percent,
            {
                "week_lesson_fen": lesson_week_fen,
                "week_lessons": int(lesson_week_n or 0),
                "baseline_28_days_fen": baseline_fen,
                "baseline_28_days_lessons": int(baseline_n or 0),
                "baseline_weekly_average_fen": baseline_fen // 4,
                "minimum_week_fen": int(limits["consumption_spike_min_fen"]),
                "percent_of_average": percent,
            },
        )
    yield AlertRule.UNCONFIRMED_LESSONS, int(pending), {"unconfirmed_lessons": int(pending)}
    yield AlertRule.DISPUTED_LESSONS, int(disputed), {"disputed_lessons": int(disputed)}

    since = last_recorded or first_paid
    if prepaid > 0 and since is not None:
        idle_days = (w.now - since) // timedelta(days=1)
        yield (
            AlertRule.IDLE_WITH_FUNDS,
            idle_days,
            {
                "prepaid_fen": prepaid,
                "last_lesson_recorded_at": _local(last_recorded),
                "first_payment_at": _local(first_paid),
                "idle_days": idle_days,
            },
        )

    refusals = f.refusals.get(pk, {})
    yield (
        AlertRule.OVER_CAP_ATTEMPTS,
        sum(refusals.values()),
        {
            "refused_charges": sum(refusals.values()),
            "by_rule": dict(sorted(refusals.items())),
        },
    )

    if mode == SupervisionMode.RISK_RESERVE and pk in f.reserve:
        on_date, required, reserve, shortfall, unconsumed = f.reserve[pk]
        yield (
            AlertRule.RESERVE_SHORTFALL,
            int(shortfall),
            {
                "checked_on": on_date.isoformat(),
                "required_fen": required,
                "reserve_fen": reserve,
                "shortfall_fen": shortfall,
                "unconsumed_prepaid_fen": unconsumed,
            },
        )


def _message(spec: RuleSpec, level: str, value: int, threshold: int) -> str:
    label = AlertRule(spec.rule).label
    level_label = AlertLevel(level).label
    figures = f"{_figure(value, spec.unit)} {spec.comparison} {_figure(threshold, spec.unit)}"
    return f"{level_label}：{label}（{figures}）"[:500]


def _figure(value: int, unit: str) -> str:
    if unit == "fen":
        sign = "-" if value < 0 else ""
        return f"{sign}{abs(value) // 100:,}.{abs(value) % 100:02d} 元"
    return {"count": f"{value} 笔", "days": f"{value} 天", "percent": f"{value}%"}.get(unit, str(value))


def _lock_scan() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_SCAN_LOCK_ID])


def _persist(
    findings: list[Finding],
    w: Windows,
    policies: Mapping[int, tuple[int, dict[str, int]]],
    scope: _Scope,
) -> ScanResult:
    """Write what the scan found: raise new alerts, mark open ones seen again or escalate them, and mark
    cleared the open alerts of the scan's current windows whose condition it no longer found (or back, if a
    cleared one is found again). Every change but a plain "seen again" leaves an ``AlertEvent``."""
    result = ScanResult()
    jurisdiction_of = dict(
        Institution.objects.filter(pk__in={f.institution_id for f in findings}).values_list(
            "pk", "jurisdiction_id"
        )
    )
    with transaction.atomic():
        _lock_scan()
        open_alerts = RiskAlert.objects.filter(state__in=UNRESOLVED)
        if scope.jurisdiction_id is not None:
            open_alerts = open_alerts.filter(jurisdiction_id=scope.jurisdiction_id)
        unresolved = {
            (a.institution_id, a.rule, a.window): a
            for a in open_alerts
            if a.institution_id in scope.institutions
        }
        new: list[RiskAlert] = []
        seen: list[RiskAlert] = []
        escalated: list[RiskAlert] = []
        recurred: list[RiskAlert] = []
        for finding in findings:
            spec = SPECS[finding.rule]
            alert = unresolved.pop((finding.institution_id, finding.rule, finding.window), None)
            if alert is None:
                jurisdiction_id = jurisdiction_of[finding.institution_id]
                new.append(
                    RiskAlert(
                        institution_id=finding.institution_id,
                        jurisdiction_id=jurisdiction_id,
                        rule=finding.rule,
                        level=finding.level,
                        window=finding.window,
                        value=finding.value,
                        threshold=finding.threshold,
                        unit=spec.unit,
                        message=_message(spec, finding.level, finding.value, finding.threshold),
                        evidence=finding.evidence,
                        latest_evidence=finding.evidence,
                        policy_version=policies.get(jurisdiction_id, (0, {}))[0],
                        raised_at=w.now,
                        last_seen_at=w.now,
                    )
                )
                continue
            alert.last_seen_at = w.now
            alert.seen_count += 1
            alert.latest_evidence = finding.evidence
            if alert.cleared_at is not None:
                alert.cleared_at = None
                recurred.append(alert)
            if finding.level == AlertLevel.RED and alert.level == AlertLevel.YELLOW:
                alert.level = AlertLevel.RED
                alert.value, alert.threshold = finding.value, finding.threshold
                alert.evidence = finding.evidence
                alert.message = _message(spec, finding.level, finding.value, finding.threshold)
                alert.escalated_at = w.now
                escalated.append(alert)
            else:
                seen.append(alert)
        # What is left was not found again. Only an alert of a window the scan looked at (today, this week,
        # ongoing) can have cleared; an earlier day or week is simply over.
        cleared = [
            alert
            for alert in unresolved.values()
            if alert.cleared_at is None and alert.window == w.label(SPECS[alert.rule].window)
        ]
        for alert in cleared:
            alert.cleared_at = w.now
        created = RiskAlert.objects.bulk_create(new, batch_size=1000)
        RiskAlert.objects.bulk_update(
            escalated,
            [
                "level",
                "value",
                "threshold",
                "evidence",
                "latest_evidence",
                "message",
                "escalated_at",
                "last_seen_at",
                "seen_count",
                "cleared_at",
            ],
            batch_size=1000,
        )
        # What every alert seen again shares is one plain UPDATE; only the evidence differs per alert (a
        # bulk_update is a CASE per field over every alert, which cost most of the scan's writing).
        RiskAlert.objects.filter(pk__in=[a.pk for a in seen]).update(
            last_seen_at=w.now, seen_count=F("seen_count") + 1
        )
        RiskAlert.objects.bulk_update(seen, ["latest_evidence"], batch_size=1000)
        # cleared_at changes on few alerts: its own update, not a CASE over every alert seen again.
        RiskAlert.objects.bulk_update(
            [a for a in recurred if a not in escalated] + cleared, ["cleared_at"], batch_size=1000
        )
        events: list[tuple[RiskAlert, str, dict[str, Any]]] = [
            (a, AlertAction.RAISED, {"level": a.level}) for a in created
        ]
        events += [(a, AlertAction.RECURRED, {"level": a.level}) for a in recurred]
        events += [(a, AlertAction.ESCALATED, {"level": a.level}) for a in escalated]
        events += [
            (a, AlertAction.CLEARED, {"last_seen_at": _local(a.last_seen_at), "level": a.level})
            for a in cleared
        ]
        AlertEvent.objects.bulk_create(
            [AlertEvent(alert=a, at=w.now, action=action, details=details) for a, action, details in events],
            batch_size=1000,
        )
    result.raised, result.escalated, result.seen_again = created, escalated, len(seen)
    result.cleared, result.recurred = cleared, recurred
    return result


# --- notifications ------------------------------------------------------------------------------------------


def _notice(alert: RiskAlert) -> AlertNotice:
    return AlertNotice(
        alert_id=alert.pk,
        jurisdiction_id=alert.jurisdiction_id,
        jurisdiction_code=alert.jurisdiction.code,
        institution_id=alert.institution_id,
        institution_name=alert.institution.name,
        rule=alert.rule,
        rule_label=AlertRule(alert.rule).label,
        level=alert.level,
        level_label=AlertLevel(alert.level).label,
        window=alert.window,
        value=alert.value,
        threshold=alert.threshold,
        unit=alert.unit,
        message=alert.message,
        raised_at=alert.escalated_at or alert.raised_at,
        escalated=alert.escalated_at is not None,
    )


def deliver_notifications(
    *, alert_ids: Sequence[int] | None = None, notifiers: Sequence[Notifier] | None = None
) -> int:
    """Send each unresolved alert (those named, or all) through each channel that has not yet delivered it
    at its current level. A channel's success or failure is recorded as an ``AlertEvent``; failures are
    retried by the next call (each scan calls this). Returns the number of deliveries made.

    A channel that writes to the database (``transactional``: the inbox) sends all its messages and records
    them in one transaction, each send in a savepoint, so a message and its record exist together or not at
    all. Other channels call their gateway outside any transaction (no network call holds a transaction
    open) and their records are written after; a crash in between re-sends those on the next call
    (at-least-once)."""
    channels = list(notifiers) if notifiers is not None else configured_notifiers()
    alerts = RiskAlert.objects.filter(state__in=UNRESOLVED).select_related("institution", "jurisdiction")
    if alert_ids is not None:
        alerts = alerts.filter(pk__in=list(alert_ids))
    delivered_before = {
        (alert_id, details.get("channel"), details.get("level"))
        for alert_id, details in AlertEvent.objects.filter(
            alert__in=alerts, action=AlertAction.NOTIFIED
        ).values_list("alert_id", "details")
    }
    owed: dict[str, list[RiskAlert]] = defaultdict(list)
    for alert in alerts.order_by("pk"):
        for channel in channels:
            if (alert.pk, channel.name, alert.level) not in delivered_before:
                owed[channel.name].append(alert)
    notices: dict[int, AlertNotice] = {}
    sent = 0
    for channel in channels:
        due = owed.get(channel.name, [])
        if not due:
            continue
        if getattr(channel, "transactional", False):
            with transaction.atomic():
                events = _send_all(channel, due, notices, savepoints=True)
                AlertEvent.objects.bulk_create(events)
        else:
            events = _send_all(channel, due, notices, savepoints=False)
            AlertEvent.objects.bulk_create(events)
        sent += sum(1 for event in events if event.action == AlertAction.NOTIFIED)
    return sent


def _send_all(
    channel: Notifier, alerts: list[RiskAlert], notices: dict[int, AlertNotice], *, savepoints: bool
) -> list[AlertEvent]:
    events = []
    for alert in alerts:
        notice = notices.get(alert.pk) or notices.setdefault(alert.pk, _notice(alert))
        details: dict[str, Any] = {"channel": channel.name, "level": alert.level}
        try:
            if savepoints:
                with transaction.atomic():
                    details["recipients"] = channel.send(notice)
            else:
                details["recipients"] = channel.send(notice)
            action = AlertAction.NOTIFIED
        except Exception as exc:  # noqa: BLE001 - any channel's failure is recorded and retried
            details["error"] = f"{type(exc).__name__}: {exc}"[:500]
            action = AlertAction.NOTIFY_FAILED
        events.append(AlertEvent(alert=alert, at=clock.now(), action=action, details=details))
    return events


# --- the handling workflow ----------------------------------------------------------------------------------

ALERT_TRANSITIONS: Mapping[str, frozenset[str]] = {
    AlertState.OPEN: frozenset({AlertState.ACKNOWLEDGED, AlertState.INVESTIGATING, AlertState.RESOLVED}),
    AlertState.ACKNOWLEDGED: frozenset({AlertState.INVESTIGATING, AlertState.RESOLVED}),
    AlertState.INVESTIGATING: frozenset({AlertState.RESOLVED}),
    AlertState.RESOLVED: frozenset(),
}
_ACTION_OF = {
    AlertState.ACKNOWLEDGED: AlertAction.ACKNOWLEDGED,
    AlertState.INVESTIGATING: AlertAction.INVESTIGATING,
    AlertState.RESOLVED: AlertAction.RESOLVED,
}


def transition_alert(
    *, alert: RiskAlert, to_state: AlertState | str, by: User | None, note: str = ""
) -> RiskAlert:
    """The one place an alert's state changes: open → acknowledged → investigating → resolved (steps may
    be skipped forwards, never back); resolving needs a note saying how it was handled."""
    target = AlertState(to_state)
    note = note.strip()
    if target == AlertState.RESOLVED and not note:
        raise RuleViolation(
            "resolution_note_required",
            "处置预警须填写处置说明 resolving an alert needs a note saying how it was handled",
            field="note",
        )
    now = clock.now()
    user = by if by is not None and by.is_authenticated else None
    with transaction.atomic():
        locked = RiskAlert.objects.select_for_update().get(pk=alert.pk)
        if target not in ALERT_TRANSITIONS[locked.state]:
            raise IllegalTransition("alert", locked.state, target)
        locked.state = target
        changed = ["state"]
        if target == AlertState.ACKNOWLEDGED:
            locked.acknowledged_at, locked.acknowledged_by = now, user
            changed += ["acknowledged_at", "acknowledged_by"]
        elif target == AlertState.INVESTIGATING:
            locked.investigation_started_at, locked.investigated_by = now, user
            changed += ["investigation_started_at", "investigated_by"]
        else:
            locked.resolved_at, locked.resolved_by, locked.resolution_note = now, user, note
            changed += ["resolved_at", "resolved_by", "resolution_note"]
        locked.save(update_fields=changed)
        AlertEvent.objects.create(alert=locked, at=now, action=_ACTION_OF[target], actor=user, note=note)
    for name in changed:
        setattr(alert, name, getattr(locked, name))
    return alert


def acknowledge_alert(*, alert: RiskAlert, by: User | None, note: str = "") -> RiskAlert:
    return transition_alert(alert=alert, to_state=AlertState.ACKNOWLEDGED, by=by, note=note)


def investigate_alert(*, alert: RiskAlert, by: User | None, note: str = "") -> RiskAlert:
    return transition_alert(alert=alert, to_state=AlertState.INVESTIGATING, by=by, note=note)


def resolve_alert(*, alert: RiskAlert, by: User | None, note: str) -> RiskAlert:
    return transition_alert(alert=alert, to_state=AlertState.RESOLVED, by=by, note=note)


def mark_inbox_read(*, message_ids: Sequence[int], by: User | None) -> int:
    """Mark inbox messages read (those already read keep their first reader); returns how many changed."""
    from custody.models import InboxMessage

    user = by if by is not None and by.is_authenticated else None
    return InboxMessage.objects.filter(pk__in=list(message_ids), read_at__isnull=True).update(
        read_at=clock.now(), read_by=user
    )


# --- attempted over-cap charges -----------------------------------------------------------------------------


def record_charge_refusal(*, institution: Institution, violation: RuleViolation) -> ChargeRefusal | None:
    """Count a charge refused by a charging cap (other refusals are not over-cap attempts: None). Call it
    after the refusing transaction rolled back, e.g. through ``charge_refusals_recorded``."""
    if violation.rule not in CAP_RULES:
        return None
    details = json.loads(json.dumps(violation.details, default=str, ensure_ascii=False))
    return ChargeRefusal.objects.create(
        institution=institution, rule=violation.rule, occurred_at=clock.now(), details=details
    )


@contextmanager
def charge_refusals_recorded(*, institution: Institution) -> Iterator[None]:
    """Wrap a charge (``sign_contract``): a cap's ``RuleViolation`` is recorded, then raised unchanged.
    Use it outside any transaction that the refusal rolls back, or the record rolls back with it."""
    try:
        yield
    except RuleViolation as exc:
        record_charge_refusal(institution=institution, violation=exc)
        raise
