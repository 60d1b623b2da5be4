"""Output serializers shared by several roles' views (a contract looks the same to its parent, its
institution and its regulator, except for personal data, which only the parent sees unmasked)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from custody import pii
from custody.api.money import MoneyField, SignedMoneyField
from custody.models import Contract, ContractState
from custody.services.contracts import unpaid_lapses_at


class CourseOutput(serializers.Serializer):
    id = serializers.IntegerField()
    institution = serializers.IntegerField(source="institution_id")
    institution_name = serializers.CharField(source="institution.name")
    name = serializers.CharField()
    subject = serializers.CharField()
    category = serializers.CharField()
    class_size_band = serializers.CharField()
    mode = serializers.CharField()
    price_per_hour = MoneyField(source="price_per_hour_fen")
    starts_on = serializers.DateField()
    published = serializers.BooleanField()


class ContractOutput(serializers.Serializer):
    """A contract with its hours and, from the ledger, its money (custody/selectors/holdings.py)."""

    id = serializers.IntegerField()
    number = serializers.CharField(
        help_text="合同号，也是付款参考号 contract number, also the payment reference"
    )
    state = serializers.CharField()
    institution = serializers.IntegerField(source="institution_id")
    institution_name = serializers.CharField(source="institution.name")
    course = serializers.IntegerField(source="course_id")
    course_name = serializers.CharField(source="course.name")
    student = serializers.IntegerField(source="student_id")
    subject = serializers.CharField()
    policy_version = serializers.IntegerField(source="policy.version")
    paid_hours = serializers.IntegerField()
    gift_hours = serializers.IntegerField()
    hours_consumed = serializers.IntegerField()
    hours_pending = serializers.IntegerField()
    paid_hours_refunded = serializers.IntegerField()
    remaining_hours = serializers.IntegerField()
    amount = MoneyField(source="amount_fen")
    service_starts_on = serializers.DateField()
    service_ends_on = serializers.DateField()
    signed_at = serializers.DateTimeField()
    paid_at = serializers.DateTimeField(allow_null=True)
    ended_at = serializers.DateTimeField(allow_null=True)
    cancel_reason = serializers.CharField(
        help_text="取消原因 why it was cancelled: parent, unpaid (not paid in time), closure; blank otherwise"
    )
    lapses_at = serializers.SerializerMethodField(
        help_text="未付款将于此时自动取消 when the order is cancelled if still unpaid (null once paid)"
    )
    paid = MoneyField(source="paid_fen", help_text="已付 paid in")
    held = MoneyField(
        source="held_fen", help_text="托管中（含待确认课时）held, incl. lessons awaiting confirmation"
    )
    pending_confirmation = MoneyField(
        source="pending_fen", help_text="待确认课时 lessons awaiting confirmation"
    )
    consumed = SignedMoneyField(source="consumed_fen", help_text="已消课并拨付 released to the institution")
    refunded = MoneyField(source="refunded_fen", help_text="已批准退费 refunds approved")
    refund_paid = MoneyField(source="refund_paid_fen", help_text="银行已退回 refunds paid back by the bank")

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_lapses_at(self, contract: Contract) -> str | None:
        if contract.state != ContractState.AWAITING_PAYMENT:
            return None
        return serializers.DateTimeField().to_representation(unpaid_lapses_at(contract))


class LessonOutput(serializers.Serializer):
    id = serializers.IntegerField()
    contract = serializers.IntegerField(source="contract_id")
    institution = serializers.IntegerField(source="institution_id")
    key = serializers.CharField(source="idempotency_key")
    held_at = serializers.DateTimeField()
    hours = serializers.IntegerField()
    paid_hours = serializers.IntegerField()
    amount = MoneyField(source="amount_fen", min_fen=0)
    state = serializers.CharField()
    recorded_at = serializers.DateTimeField()
    confirm_deadline = serializers.DateTimeField()
    confirmed_at = serializers.DateTimeField(allow_null=True)
    confirmed_by = serializers.CharField()
    disputed_at = serializers.DateTimeField(allow_null=True)
    dispute_reason = serializers.CharField()
    resolved_at = serializers.DateTimeField(allow_null=True)
    resolution_note = serializers.CharField()


class RefundOutput(serializers.Serializer):
    id = serializers.IntegerField()
    contract = serializers.IntegerField(source="contract_id")
    contract_number = serializers.CharField(source="contract.number")
    reason = serializers.CharField()
    state = serializers.CharField()
    claimed_at = serializers.DateTimeField()
    claim_note = serializers.CharField()
    answer_due = serializers.DateTimeField(allow_null=True)
    answered_at = serializers.DateTimeField(allow_null=True)
    approved_by = serializers.CharField()
    rejection_reason = serializers.CharField()
    paid_hours = serializers.IntegerField()
    amount = MoneyField(source="amount_fen", min_fen=0)
    payout_due = serializers.DateField(allow_null=True)
    paid_at = serializers.DateTimeField(allow_null=True)


class PayoutOutput(serializers.Serializer):
    """A bank instruction. The destination account is shown masked."""

    id = serializers.IntegerField()
    reference = serializers.CharField()
    institution = serializers.IntegerField(source="institution_id")
    kind = serializers.CharField()
    state = serializers.CharField()
    amount = MoneyField(source="amount_fen")
    destination_account = serializers.SerializerMethodField()
    refund = serializers.IntegerField(source="refund_id", allow_null=True)
    instructed_at = serializers.DateTimeField()
    executed_at = serializers.DateTimeField(allow_null=True)
    bank_reference = serializers.CharField()
    failure_reason = serializers.CharField()

    def get_destination_account(self, obj: Any) -> str:
        return pii.mask(obj.destination_account or "")


class InstitutionMoneyOutput(serializers.Serializer):
    """An institution with its custody balances (``holdings.institutions_with_money``)."""

    id = serializers.IntegerField()
    name = serializers.CharField()
    licence_number = serializers.CharField()
    jurisdiction = serializers.CharField(source="jurisdiction.code")
    category = serializers.CharField()
    supervision_mode = serializers.CharField()
    state = serializers.CharField()
    state_reason = serializers.CharField()
    whitelisted = serializers.BooleanField()
    custody_bank_name = serializers.CharField()
    custody_account_number = serializers.CharField()
    custody_cash = MoneyField(source="cash_fen", min_fen=0, help_text="托管账户余额 custody cash (posted)")
    payouts_in_flight = MoneyField(
        source="cash_pending_out_fen",
        min_fen=0,
        help_text="已指令未执行的划付 payouts instructed, not executed",
    )
    payable = MoneyField(source="payable_fen", min_fen=0, help_text="已确认待拨付 released, not yet paid out")
    prepaid = MoneyField(source="prepaid_fen", min_fen=0, help_text="家长预付未消课 Σ prepaid:c")
    refund_payable = MoneyField(
        source="refund_payable_fen", min_fen=0, help_text="已批准待退 Σ refund_payable:c"
    )
    reserve = MoneyField(
        source="reserve_fen",
        min_fen=0,
        help_text="风险保证金 reserve at the bank (risk-reserve mode; else 0)",
    )


class PaymentOutput(serializers.Serializer):
    id = serializers.IntegerField()
    contract = serializers.IntegerField(source="contract_id")
    channel = serializers.CharField()
    transaction_id = serializers.CharField()
    amount = MoneyField(source="amount_fen")
    paid_at = serializers.DateTimeField()
    received_at = serializers.DateTimeField()
    settled_at = serializers.DateTimeField(allow_null=True)


class StudentOutput(serializers.Serializer):
    """For the student's own parent: the name in full, the ID number masked."""

    id = serializers.IntegerField()
    name = serializers.CharField()
    id_number = serializers.SerializerMethodField()
    grade = serializers.CharField()

    def get_id_number(self, obj: Any) -> str:
        return pii.mask(obj.id_number or "", keep_start=4, keep_end=2)
