"""Contracts (培训合同): signing under every rule of the policy in force, and the contract state machine.

``sign_contract`` gathers what the rules need under locks (the institution share-locked, so it is not frozen
or closed meanwhile; the student locked, so two signings for one student are serialised and the
anti-splitting sum cannot be raced), in one prepared statement (``lock_signing_context``), calls
``custody.rules.check_signing``, writes the contract pinned to the policy version, and opens its two ledger
accounts: ``prepaid:c{pk}`` (liability: paid, not yet earned or refunded) and ``refund_payable:c{pk}``
(liability: approved refunds awaiting the bank). ``transition_contract`` changes one contract's state
(``activate_paid_contract`` is its one-statement form for a payment callback that holds the row locked;
``cancel_unpaid_contract`` and ``lapse_unpaid_contracts`` end orders never paid; the bulk flows use
``_bulk``), always along this table:

    awaiting_payment → active | cancelled
    active → completed | refunded
    completed, refunded, cancelled: final
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta

from django.db import connection, transaction
from moneyed import Money

from custody import rules
from custody.errors import IllegalTransition, RuleViolation
from custody.models import CancelReason, Contract, ContractState, Course, Policy, Student, TrainingCategory
from custody.selectors import contracts as contract_selectors
from custody.selectors._prepared import RowWrite, insert_of, write_rows
from custody.selectors.policy import lock_signing_context
from custody.services._bulk import reserve_ids, update_states
from custody.services.calendar import local_date
from ledger import clock
from ledger.backends import new_account_insert
from ledger.models import Account, AccountType
from ledger.money import to_minor
from ledger.services import NewAccount, new_accounts

CONTRACT_TRANSITIONS: Mapping[str, frozenset[str]] = {
    ContractState.AWAITING_PAYMENT: frozenset({ContractState.ACTIVE, ContractState.CANCELLED}),
    ContractState.ACTIVE: frozenset({ContractState.COMPLETED, ContractState.REFUNDED}),
    ContractState.COMPLETED: frozenset(),
    ContractState.REFUNDED: frozenset(),
    ContractState.CANCELLED: frozenset(),
}
FINAL_STATES = frozenset(state for state, targets in CONTRACT_TRANSITIONS.items() if not targets)


def prepaid_account_code(contract: Contract) -> str:
    return f"prepaid:c{contract.pk}"


def refund_account_code(contract: Contract) -> str:
    return f"refund_payable:c{contract.pk}"


def contract_number(signed_on: date, pk: int) -> str:
    """``HT`` + signing date + the primary key: unique because the key is, readable on a bank slip."""
    return f"HT{signed_on:%Y%m%d}{pk:08d}"


def sign_contract(
    *,
    course: Course,
    student: Student,
    paid_hours: int,
    gift_hours: int = 0,
    amount: Money,
    service_starts_on: date,
    service_ends_on: date,
    renews: Contract | None = None,
) -> Contract:
    """A contract awaiting payment, or ``RuleViolation`` naming the first rule it breaks."""
    if amount.currency.code != "CNY":
        raise RuleViolation(
            "currency", f"合同须以人民币计价 contracts are in CNY, got {amount.currency.code}", field="amount"
        )
    amount_fen = to_minor(amount)
    now = clock.now()
    # No use_generic_plans(): this transaction's statements take scalar parameters, so PostgreSQL settles on
    # their generic plans by itself after five calls on a connection.
    with transaction.atomic():
        context = lock_signing_context(course_id=course.pk, student_id=student.pk)
        course, institution = context.course, context.course.institution
        renewed = Contract.objects.get(pk=renews.pk) if renews is not None else None
        open_hours, open_latest = contract_selectors.open_contracts_summary(
            student_id=student.pk, institution_id=institution.pk, subject=course.subject
        )
        today = local_date(now)
        rules.check_signing(
            rules.SigningRequest(
                policy=context.policy,
                institution=institution,
                course=course,
                student=student,
                today=today,
                paid_hours=paid_hours,
                gift_hours=gift_hours,
                amount_fen=amount_fen,
                service_starts_on=service_starts_on,
                service_ends_on=service_ends_on,
                renews=renewed,
                guidance_price_fen=(
                    context.guidance_price_fen if course.category == TrainingCategory.SUBJECT else None
                ),
                open_unconsumed_hours=open_hours,
                open_latest_end=open_latest,
            )
        )
        # The keys are drawn first (on PostgreSQL by the context's statement), so the number and both accounts
        # are known before anything is written, and the accounts and the contract are one statement.
        pk = context.new_contract_id or reserve_ids(Contract, 1)[0]
        number = contract_number(today, pk)
        prepaid, refund = new_accounts(
            accounts=[
                NewAccount(
                    code=f"prepaid:c{pk}",
                    type=AccountType.LIABILITY,
                    limit="debits_must_not_exceed_credits",
                    name=f"{number} 预收费 prepaid",
                ),
                NewAccount(
                    code=f"refund_payable:c{pk}",
                    type=AccountType.LIABILITY,
                    limit="debits_must_not_exceed_credits",
                    name=f"{number} 应退费 refund payable",
                ),
            ],
            ids=context.new_account_ids or reserve_ids(Account, 2),
        )
        contract = Contract(
            id=pk,
            number=number,
            institution=institution,
            course=course,
            student=student,  # the caller's instance, with the personal data it has
            guardian_id=context.guardian_id,
            policy=context.policy,
            subject=course.subject,
            paid_hours=paid_hours,
            gift_hours=gift_hours,
            amount_fen=amount_fen,
            service_starts_on=service_starts_on,
            service_ends_on=service_ends_on,
            renews=renewed,
            state=ContractState.AWAITING_PAYMENT,
            signed_at=now,
            prepaid_account=prepaid,
            refund_account=refund,
        )
        write_rows(
            *(RowWrite(*new_account_insert(account), inserted=account) for account in (prepaid, refund)),
            insert_of(contract),
        )
    return contract


def activate_paid_contract(
    *, contract: Contract, paid_at: datetime, payer_account: str, together_with: Sequence[RowWrite] = ()
) -> None:
    """awaiting_payment → active, for a contract its payment callback holds locked: records who paid and
    when (``transition_contract`` would lock and read the row again). The callback passes its own rows in
    ``together_with`` (the payment, the callback log): on PostgreSQL all of them are one statement
    (``write_rows``). ``contract`` is updated in place."""
    target = ContractState.ACTIVE
    if target not in CONTRACT_TRANSITIONS[contract.state]:
        raise IllegalTransition("contract", contract.state, target)
    fields = Contract._meta
    activation = RowWrite(
        "UPDATE custody_contract SET state = %s, paid_at = %s, payer_account = %s "
        "WHERE id = %s AND state = %s RETURNING id",
        [
            target.value,
            fields.get_field("paid_at").get_db_prep_save(paid_at, connection),
            fields.get_field("payer_account").get_db_prep_save(payer_account, connection),
            contract.pk,
            contract.state,
        ],
    )
    changed, *_ = write_rows(activation, *together_with)
    if changed is None:
        raise RuntimeError(f"contract {contract.number} changed state while locked")
    contract.state, contract.paid_at, contract.payer_account = target, paid_at, payer_account


def transition_contract(*, contract: Contract, to_state: ContractState) -> Contract:
    """Move the contract to ``to_state`` or raise ``IllegalTransition`` (a repeat is illegal too, never a
    silent no-op). Records ``paid_at`` on activation and ``ended_at`` on reaching a final state.

    The row is locked while checked; ``contract`` is updated in place and returned.
    """
    target = ContractState(to_state)
    with transaction.atomic():
        locked = Contract.objects.select_for_update().get(pk=contract.pk)
        if target not in CONTRACT_TRANSITIONS[locked.state]:
            raise IllegalTransition("contract", locked.state, target)
        locked.state = target
        changed = ["state"]
        if target == ContractState.ACTIVE and locked.paid_at is None:
            locked.paid_at = clock.now()
            changed.append("paid_at")
        if target in FINAL_STATES:
            locked.ended_at = clock.now()
            changed.append("ended_at")
        locked.save(update_fields=changed)
    for name in changed:
        setattr(contract, name, getattr(locked, name))
    return contract


def unpaid_lapses_at(contract: Contract) -> datetime:
    """When an order still awaiting payment is cancelled (the policy it was signed under says how long)."""
    return contract.signed_at + timedelta(days=contract.policy.unpaid_contract_lapse_days)


def cancel_unpaid_contract(*, contract: Contract) -> Contract:
    """The parent withdraws an order before paying for it (awaiting_payment → cancelled). Nothing was paid, so
    no money moves; a paid contract ends by a refund claim instead. ``contract`` is updated in place."""
    now = clock.now()
    with transaction.atomic():
        locked = Contract.objects.select_for_update().get(pk=contract.pk)
        if locked.state != ContractState.AWAITING_PAYMENT:
            state = ContractState(locked.state)
            raise RuleViolation(
                "cancel_unpaid_only",
                f"合同状态为{state.label}，只有待支付的合同可以取消；已付款的合同请申请退费 "
                "only a contract awaiting payment can be cancelled; claim a refund for a paid one",
                state=locked.state,
            )
        cancel_unpaid_orders([locked.pk], reason=CancelReason.PARENT, now=now)
    contract.state, contract.ended_at = ContractState.CANCELLED, now
    contract.cancel_reason = CancelReason.PARENT
    return contract


def lapse_unpaid_contracts(*, now: datetime | None = None) -> int:
    """Cancel every order left unpaid past its policy's window (逾期未付款自动取消), so it no longer counts
    against the anti-splitting sum; a payment arriving later is refused. Returns how many lapsed.

    Safe to run twice and against a payment callback: the update's own ``state`` guard leaves an order that
    was paid meanwhile alone (PostgreSQL re-checks it on the row a concurrent payment committed)."""
    moment = now or clock.now()
    policies_by_window: dict[int, list[int]] = defaultdict(list)
    for policy_id, days in Policy.objects.values_list("pk", "unpaid_contract_lapse_days"):
        policies_by_window[days].append(policy_id)
    lapsed = 0
    for days, policy_ids in sorted(policies_by_window.items()):
        with transaction.atomic():
            due = list(
                Contract.objects.filter(
                    state=ContractState.AWAITING_PAYMENT,
                    signed_at__lte=moment - timedelta(days=days),
                    policy_id__in=policy_ids,
                ).values_list("pk", flat=True)
            )
            lapsed += cancel_unpaid_orders(due, reason=CancelReason.UNPAID, now=moment)
    return lapsed


def cancel_unpaid_orders(contract_ids: Sequence[int], *, reason: CancelReason, now: datetime) -> int:
    """awaiting_payment → cancelled for these contracts, saying why; any other state is left alone (the
    update's guard). Returns how many changed."""
    if ContractState.CANCELLED not in CONTRACT_TRANSITIONS[ContractState.AWAITING_PAYMENT]:
        raise RuntimeError("awaiting_payment → cancelled is not a contract transition")
    return update_states(
        "custody_contract",
        contract_ids,
        from_states=[ContractState.AWAITING_PAYMENT],
        to_state=ContractState.CANCELLED,
        extra={"ended_at": now, "cancel_reason": reason.value},
    )
