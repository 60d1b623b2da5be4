"""Reads about refunds (退费): what a refund would pay now, what is overdue, what a closure left unpaid."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from django.db.models import OuterRef, QuerySet, Subquery

from custody.models import (
    Closure,
    Contract,
    PayoutInstruction,
    PayoutState,
    Refund,
    RefundReason,
    RefundState,
)
from custody.selectors.lessons import paid_hours_taken
from custody.services._bulk import fetch_by_ids
from custody.services.calendar import local_today

OPEN_STATES = (RefundState.CLAIMED, RefundState.APPROVED, RefundState.INSTRUCTED)
UNPAID_STATES = (RefundState.APPROVED, RefundState.INSTRUCTED)


@dataclass(frozen=True)
class RefundQuote:
    """What a refund approved now would pay back.

    ``amount_fen`` is the contract's prepaid value neither released nor held by an unconfirmed lesson (the
    ``prepaid:c`` balance available); ``paid_hours`` the paid hours neither consumed, pending nor refunded.
    Both follow the unit price locked at purchase; gift hours are worth nothing. ``before_start``: nothing
    has been taken and the service has not started, so the refund is in full and due within 5 working days.
    """

    contract_id: int
    amount_fen: int
    paid_hours: int
    before_start: bool


def refund_quotes(contract_ids: Sequence[int], *, today: date | None = None) -> dict[int, RefundQuote]:
    day = today or local_today()
    ids = sorted(set(contract_ids))
    taken = paid_hours_taken(ids)
    quotes: dict[int, RefundQuote] = {}
    # Plain SQL over the id array: a closure quotes 500 contracts a batch, and the ORM's 500-placeholder IN
    # list cost more Python time to build and bind than the query took. The balance is a scalar subquery, an
    # index probe per contract at any size (a join was planned as a hash join over the whole account table).
    for pk, paid_hours, starts_on, available in fetch_by_ids(
        "SELECT c.id, c.paid_hours, c.service_starts_on, (SELECT a.credits_posted - a.debits_posted - "
        "a.debits_pending FROM ledger_account a WHERE a.id = c.prepaid_account_id) "
        "FROM custody_contract c WHERE c.id {ids}",
        ids,
    ):
        quotes[pk] = RefundQuote(
            contract_id=pk,
            amount_fen=available or 0,
            paid_hours=max(0, paid_hours - taken[pk]),
            before_start=taken[pk] == 0 and day < starts_on,
        )
    return quotes


def refund_quote(contract: Contract, *, today: date | None = None) -> RefundQuote:
    return refund_quotes([contract.pk], today=today)[contract.pk]


def open_refund(contract: Contract) -> Refund | None:
    return Refund.objects.filter(contract=contract, state__in=OPEN_STATES).first()


def overdue_refunds(*, today: date | None = None) -> QuerySet[Refund]:
    """Approved refunds whose payout deadline (5 or 10 working days) has passed unpaid: an alert each."""
    return (
        Refund.objects.filter(state__in=UNPAID_STATES, payout_due__lt=today or local_today())
        .select_related("contract")
        .order_by("payout_due", "pk")
    )


def unanswered_refunds() -> QuerySet[Refund]:
    """Claims still waiting for the institution's answer, soonest deadline first."""
    return Refund.objects.filter(state=RefundState.CLAIMED).order_by("answer_due", "pk")


@dataclass(frozen=True)
class ClosureShortfall:
    """A closure refund of a risk-reserve institution that the reserve could not fully cover."""

    refund_id: int
    contract_id: int
    refund_fen: int
    covered_fen: int

    @property
    def shortfall_fen(self) -> int:
        return self.refund_fen - self.covered_fen


def closure_shortfalls(closure: Closure) -> list[ClosureShortfall]:
    """Per contract: the closure refund, what the reserve paid towards it, and the shortfall (still owed in
    ``refund_payable:c``, a claim against the institution). Only refunds with a shortfall are listed."""
    live_payout = PayoutInstruction.objects.filter(
        refund=OuterRef("pk"), state__in=(PayoutState.INSTRUCTED, PayoutState.EXECUTED)
    ).values("amount_fen")[:1]
    rows = (
        Refund.objects.filter(contract__institution_id=closure.institution_id, reason=RefundReason.CLOSURE)
        .order_by("pk")
        .values_list("pk", "contract_id", "amount_fen", Subquery(live_payout))
    )
    found = [
        ClosureShortfall(refund_id=pk, contract_id=cid, refund_fen=amount, covered_fen=covered or 0)
        for pk, cid, amount, covered in rows
    ]
    return [s for s in found if s.shortfall_fen > 0]
