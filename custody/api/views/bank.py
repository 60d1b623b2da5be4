"""托管银行 The custody bank's operators (token with TOTP): the supervised accounts held at their bank with
their balances, payments into them, payout and refund instructions and their results, the settlement of
WeChat Pay / Alipay payments into custody, and daily statement uploads.

Payment confirmations come as signed callbacks (callbacks.py), not through an operator's session. The
operator endpoints here are authenticated as a ``BankOperator`` whose token was issued after a TOTP check,
and scoped to institutions whose ``custody_bank_name`` is the operator's bank: another bank's instruction is
404. Each result is idempotent twice over: by ``Idempotency-Key``, and by the payout's own state (the same
answer again changes nothing; the opposite answer is 409).
"""

from __future__ import annotations

import django_filters
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from custody.api.base import MAX_ID, ApiListView, ApiView, validated
from custody.api.defaults import NoFormatOverrideNegotiation
from custody.api.idempotency import idempotent
from custody.api.money import MoneyField, SignedMoneyField
from custody.api.outputs import InstitutionMoneyOutput, PaymentOutput, PayoutOutput
from custody.api.permissions import IsBankOperator
from custody.api.views.institutions import PayoutFilter
from custody.errors import NotFound
from custody.models import Institution, Payment, PayoutInstruction
from custody.selectors.access import institutions_in_scope
from custody.selectors.holdings import institutions_with_money
from custody.services.payments import settle_payments
from custody.services.payouts import record_payout_result
from reconciliation.formats import detect_format, parse_statement
from reconciliation.models import BankStatement
from reconciliation.services.imports import file_digest, store_statement

SETTLING_CHANNELS = (("wechat", "微信支付 WeChat Pay"), ("alipay", "支付宝 Alipay"))


class BankAccountsView(ApiListView):
    """监管账户 The supervised accounts held at this bank, with their ledger balances."""

    permission_classes = (IsBankOperator,)
    serializer_class = InstitutionMoneyOutput
    filterset_fields = ["state", "custody_account_number"]
    ordering_fields = ["id", "name", "cash_fen"]

    def get_queryset(self) -> QuerySet[Institution]:
        return institutions_with_money(institutions_in_scope(self.actor)).select_related("jurisdiction")


class PaymentFilter(django_filters.FilterSet):
    channel = django_filters.ChoiceFilter(choices=(("bank", "bank"), *SETTLING_CHANNELS))
    settled = django_filters.BooleanFilter(field_name="settled_at", lookup_expr="isnull", exclude=True)
    institution = django_filters.NumberFilter(
        field_name="contract__institution_id", min_value=1, max_value=MAX_ID
    )
    transaction_id = django_filters.CharFilter(max_length=64)

    class Meta:
        model = Payment
        fields = ["channel", "settled", "institution", "transaction_id"]


class BankPaymentsView(ApiListView):
    """到账 Payments confirmed into the supervised accounts at this bank (``settled=false``: still in
    clearing)."""

    permission_classes = (IsBankOperator,)
    serializer_class = PaymentOutput
    filterset_class = PaymentFilter
    ordering_fields = ["id", "paid_at", "amount_fen"]

    def get_queryset(self) -> QuerySet[Payment]:
        return Payment.objects.filter(contract__institution__in=institutions_in_scope(self.actor))


class BankPayoutsView(ApiListView):
    """划付指令 Instructions to execute (``state=instructed``) and their history."""

    permission_classes = (IsBankOperator,)
    serializer_class = PayoutOutput
    filterset_class = PayoutFilter
    ordering_fields = ["id", "instructed_at", "amount_fen"]

    def get_queryset(self) -> QuerySet[PayoutInstruction]:
        return PayoutInstruction.objects.filter(institution__in=institutions_in_scope(self.actor))


class BankPayoutResultView(ApiView):
    """执行结果 The bank's answer to one instruction: executed (the hold is posted, a refund is paid) or
    failed with a reason (the money is owed again and a later run instructs it anew)."""

    permission_classes = (IsBankOperator,)

    class InputSerializer(serializers.Serializer):
        executed = serializers.BooleanField()
        bank_reference = serializers.CharField(max_length=64, required=False, default="", allow_blank=True)
        reason = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)

    @extend_schema(request=InputSerializer, responses={200: PayoutOutput})
    @idempotent("payout.result")
    def post(self, request: Request, reference: str) -> Response:
        data = validated(self.InputSerializer, request)
        payouts = PayoutInstruction.objects.filter(institution__in=institutions_in_scope(self.actor))
        found = payouts.filter(reference=reference).first()
        if found is None:
            raise NotFound(f"没有指令 {reference} no payout instruction {reference}", field="reference")
        before = {"state": found.state}
        payout = record_payout_result(reference=reference, **data)
        self.audit(target=payout, before=before, after={"state": payout.state})
        return Response(PayoutOutput(payout).data)


class BankSettlementView(ApiView):
    """渠道结算到账 WeChat Pay / Alipay payments have settled into the supervised accounts (T+1): move them
    out of clearing into custody. All named payments must be of accounts at this bank; repeating a settled
    one changes nothing."""

    permission_classes = (IsBankOperator,)

    class InputSerializer(serializers.Serializer):
        channel = serializers.ChoiceField(choices=SETTLING_CHANNELS)
        transaction_ids = serializers.ListField(
            child=serializers.RegexField(r"^[!-~]{1,64}$"), min_length=1, max_length=5000
        )

    class OutputSerializer(serializers.Serializer):
        settled = serializers.IntegerField()
        payments = PaymentOutput(many=True)

    @extend_schema(request=InputSerializer, responses={200: OutputSerializer})
    @idempotent("payment.settle")
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request)
        wanted = set(data["transaction_ids"])
        ours = set(
            Payment.objects.filter(
                channel=data["channel"],
                transaction_id__in=wanted,
                contract__institution__in=institutions_in_scope(self.actor),
            ).values_list("transaction_id", flat=True)
        )
        if ours != wanted:
            missing = len(wanted - ours)
            raise NotFound(
                f"{missing}笔交易不存在或不属于本行 {missing} payment(s) not found at this bank",
                field="transaction_ids",
            )
        payments = settle_payments(channel=data["channel"], transaction_ids=sorted(wanted))
        self.audit(target_type="payment", details={"channel": data["channel"], "count": len(payments)})
        return Response(self.OutputSerializer({"settled": len(payments), "payments": payments}).data)


class StatementOutput(serializers.Serializer):
    id = serializers.IntegerField()
    institution = serializers.IntegerField(source="institution_id")
    account_number = serializers.CharField()
    format = serializers.CharField()
    statement_id = serializers.CharField()
    sequence = serializers.IntegerField(allow_null=True)
    period_start = serializers.DateField()
    period_end = serializers.DateField()
    opening_balance = SignedMoneyField(source="opening_balance_fen")
    closing_balance = SignedMoneyField(source="closing_balance_fen")
    credits = MoneyField(source="credits_fen", min_fen=0)
    debits = MoneyField(source="debits_fen", min_fen=0)
    line_count = serializers.IntegerField()
    file_sha256 = serializers.CharField()
    imported_at = serializers.DateTimeField()


class BankStatementsView(ApiListView):
    """对账单 Statements of the supervised accounts at this bank; POST uploads one file (CSV / XLSX as
    Chinese banks send them, ISO 20022 camt.053, or MT940; the format is found from the bytes). The file is
    checked (balances add up, serials unique, it continues the account's previous statement) and imported
    for reconciliation (reconciliation/services/imports.py); the same file twice is the first import."""

    permission_classes = (IsBankOperator,)
    serializer_class = StatementOutput
    filterset_fields = ["account_number", "format", "statement_id"]
    content_negotiation_class = NoFormatOverrideNegotiation  # "format" is the filter above
    ordering_fields = ["id", "period_end"]
    parser_classes = (MultiPartParser,)

    class InputSerializer(serializers.Serializer):
        file = serializers.FileField(allow_empty_file=False)

    def get_queryset(self) -> QuerySet[BankStatement]:
        return BankStatement.objects.filter(institution__in=institutions_in_scope(self.actor))

    @extend_schema(
        request={"multipart/form-data": InputSerializer},
        responses={201: StatementOutput, 200: StatementOutput},
    )
    @idempotent("statement.upload")
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request)
        upload = data["file"]
        content, filename = upload.read(), upload.name or ""
        parsed = parse_statement(content, filename=filename)
        if (
            not institutions_in_scope(self.actor)
            .filter(custody_account_number=parsed.account_number)
            .exists()
        ):
            raise NotFound(
                "该账户不是本行托管的监管账户 the account is not a supervised account held at this bank",
                field="file",
            )
        result = store_statement(
            header=parsed,
            lines=parsed.lines,
            format=detect_format(content, filename),
            file_sha256=file_digest(content),
            filename=filename[:200],
            imported_by=self.user,
        )
        statement = result.statement
        self.audit(
            target=statement, institution_id=statement.institution_id, details={"created": result.created}
        )
        return Response(StatementOutput(statement).data, status=201 if result.created else 200)


__all__ = [
    "BankAccountsView",
    "BankPaymentsView",
    "BankPayoutResultView",
    "BankPayoutsView",
    "BankSettlementView",
    "BankStatementsView",
]
