"""A regulator's overview of a jurisdiction (辖区概览): institutions by state, money in custody and what it
owes, lessons and refunds waiting, unresolved risk alerts. A handful of grouped queries over the institutions
in scope."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import Count, F, Q, QuerySet, Sum

from custody.models import (
    AlertLevel,
    AlertState,
    Contract,
    ContractState,
    Institution,
    Lesson,
    LessonState,
    Payment,
    Refund,
    RefundState,
    RiskAlert,
    SupervisionMode,
)
from custody.selectors.holdings import institutions_with_money
from custody.services.calendar import local_today


@dataclass(frozen=True)
class Overview:
    institutions: int
    institutions_by_state: dict[str, int] = field(default_factory=dict)
    custody_cash_fen: int = 0
    in_clearing_fen: int = 0
    payable_fen: int = 0
    prepaid_fen: int = 0
    refund_payable_fen: int = 0
    # The totals above split by supervision mode. Custody cash answers only for the bank-custody
    # institutions' liabilities (invariant 3); a risk-reserve institution holds its parents' money itself
    # and keeps a reserve at the bank instead.
    custody_owed_fen: int = 0
    reserve_mode_institutions: int = 0
    reserve_mode_owed_fen: int = 0
    reserve_cash_fen: int = 0
    active_contracts: int = 0
    lessons_pending: int = 0
    lessons_disputed: int = 0
    refunds_claimed: int = 0
    refunds_unpaid: int = 0
    refunds_overdue: int = 0
    alerts_red: int = 0
    alerts_yellow: int = 0


def overview(institutions: QuerySet[Institution]) -> Overview:
    by_state = dict(institutions.order_by().values("state").annotate(n=Count("pk")).values_list("state", "n"))
    owed = F("prepaid_fen") + F("payable_fen") + F("refund_payable_fen")
    reserve_mode = Q(supervision_mode=SupervisionMode.RISK_RESERVE)
    money = institutions_with_money(institutions).aggregate(
        cash=Sum("cash_fen"),
        payable=Sum("payable_fen"),
        prepaid=Sum("prepaid_fen"),
        refund=Sum("refund_payable_fen"),
        custody_owed=Sum(owed, filter=~reserve_mode),
        reserve_mode_institutions=Count("pk", filter=reserve_mode),
        reserve_mode_owed=Sum(owed, filter=reserve_mode),
        reserve_cash=Sum("reserve_fen", filter=reserve_mode),
    )
    ids = institutions.values("pk")
    lessons = dict(
        Lesson.objects.filter(institution_id__in=ids, state__in=(LessonState.PENDING, LessonState.DISPUTED))
        .order_by()
        .values("state")
        .annotate(n=Count("pk"))
        .values_list("state", "n")
    )
    refunds = Refund.objects.filter(contract__institution_id__in=ids)
    unpaid = (RefundState.APPROVED, RefundState.INSTRUCTED)
    alerts = dict(
        RiskAlert.objects.filter(institution_id__in=ids)
        .exclude(state=AlertState.RESOLVED)
        .order_by()
        .values("level")
        .annotate(n=Count("pk"))
        .values_list("level", "n")
    )
    return Overview(
        institutions=sum(by_state.values()),
        institutions_by_state=by_state,
        custody_cash_fen=int(money["cash"] or 0),
        in_clearing_fen=int(
            Payment.objects.filter(contract__institution_id__in=ids, settlement_entry__isnull=True).aggregate(
                total=Sum("amount_fen")
            )["total"]
            or 0
        ),
        payable_fen=int(money["payable"] or 0),
        prepaid_fen=int(money["prepaid"] or 0),
        refund_payable_fen=int(money["refund"] or 0),
        custody_owed_fen=int(money["custody_owed"] or 0),
        reserve_mode_institutions=int(money["reserve_mode_institutions"] or 0),
        reserve_mode_owed_fen=int(money["reserve_mode_owed"] or 0),
        reserve_cash_fen=int(money["reserve_cash"] or 0),
        active_contracts=Contract.objects.filter(institution_id__in=ids, state=ContractState.ACTIVE).count(),
        lessons_pending=lessons.get(LessonState.PENDING, 0),
        lessons_disputed=lessons.get(LessonState.DISPUTED, 0),
        refunds_claimed=refunds.filter(state=RefundState.CLAIMED).count(),
        refunds_unpaid=refunds.filter(state__in=unpaid).count(),
        refunds_overdue=refunds.filter(state__in=unpaid, payout_due__lt=local_today()).count(),
        alerts_red=alerts.get(AlertLevel.RED, 0),
        alerts_yellow=alerts.get(AlertLevel.YELLOW, 0),
    )
