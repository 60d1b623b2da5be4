"""家长 Parents: browse whitelisted institutions and courses, sign and follow contracts (payments, balances
held / consumed / refunded, a verifiable statement), confirm or dispute lessons, claim refunds.

Every query is scoped to the parent's own guardian: another family's contract, lesson or refund is 404.
"""

from __future__ import annotations

from typing import Any

import django_filters
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from custody.api.base import (
    MAX_ID,
    ApiDetailView,
    ApiListView,
    ApiView,
    IsoDateTimeFilter,
    own_or_404,
    own_or_field_error,
    validated,
)
from custody.api.idempotency import idempotent
from custody.api.money import MoneyField, SignedMoneyField, money_json
from custody.api.outputs import (
    ContractOutput,
    CourseOutput,
    LessonOutput,
    PaymentOutput,
    RefundOutput,
    StudentOutput,
)
from custody.api.permissions import IsParent
from custody.errors import RuleViolation
from custody.models import (
    Contract,
    ContractState,
    Course,
    Guardian,
    Institution,
    InstitutionState,
    Lesson,
    LessonState,
    Refund,
    RefundState,
    Student,
    TrainingCategory,
)
from custody.selectors.holdings import Holdings, holdings_of_guardian, with_money
from custody.selectors.statements import contract_statement
from custody.services.alerts import record_charge_refusal
from custody.services.contracts import cancel_unpaid_contract, sign_contract
from custody.services.lessons import confirm_lesson, dispute_lesson
from custody.services.people import add_student
from custody.services.refunds import claim_refund


def _contracts(guardian_id: int) -> QuerySet[Contract]:
    return with_money(
        Contract.objects.filter(guardian_id=guardian_id).select_related("institution", "course", "policy")
    )


# --- browsing -----------------------------------------------------------------------------------------------


class InstitutionFilter(django_filters.FilterSet):
    jurisdiction = django_filters.CharFilter(field_name="jurisdiction__code", max_length=32)
    category = django_filters.ChoiceFilter(choices=TrainingCategory.choices)
    name = django_filters.CharFilter(field_name="name", lookup_expr="icontains", max_length=100)

    class Meta:
        model = Institution
        fields = ["jurisdiction", "category", "name"]


class ParentInstitutionsView(ApiListView):
    """白名单机构 Whitelisted, active institutions a parent may sign with."""

    permission_classes = (IsParent,)
    filterset_class = InstitutionFilter
    ordering_fields = ["id", "name"]

    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        name = serializers.CharField()
        licence_number = serializers.CharField()
        jurisdiction = serializers.CharField(source="jurisdiction.code")
        jurisdiction_name = serializers.CharField(source="jurisdiction.name")
        category = serializers.CharField()
        supervision_mode = serializers.CharField()
        custody_bank_name = serializers.CharField()

    serializer_class = OutputSerializer

    def get_queryset(self) -> QuerySet[Institution]:
        return Institution.objects.filter(whitelisted=True, state=InstitutionState.ACTIVE).select_related(
            "jurisdiction"
        )


class CourseFilter(django_filters.FilterSet):
    institution = django_filters.NumberFilter(field_name="institution_id", min_value=1, max_value=MAX_ID)
    subject = django_filters.CharFilter(max_length=50)
    category = django_filters.ChoiceFilter(choices=TrainingCategory.choices)

    class Meta:
        model = Course
        fields = ["institution", "subject", "category", "mode", "class_size_band"]


class ParentCoursesView(ApiListView):
    """已公示课程与价格 Published courses and prices of whitelisted, active institutions."""

    permission_classes = (IsParent,)
    filterset_class = CourseFilter
    ordering_fields = ["id", "price_per_hour_fen", "starts_on"]
    serializer_class = CourseOutput

    def get_queryset(self) -> QuerySet[Course]:
        return Course.objects.filter(
            published=True, institution__whitelisted=True, institution__state=InstitutionState.ACTIVE
        ).select_related("institution")


# --- students -----------------------------------------------------------------------------------------------


class ParentStudentsView(ApiListView):
    """我的孩子 The parent's students; POST adds one."""

    permission_classes = (IsParent,)
    serializer_class = StudentOutput
    filterset_fields = ["grade"]

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=50)
        id_number = serializers.CharField(max_length=18, min_length=18)
        grade = serializers.CharField(max_length=20, required=False, default="", allow_blank=True)

    def get_queryset(self) -> QuerySet[Student]:
        return Student.objects.filter(guardian_id=self.guardian_id)

    @extend_schema(request=InputSerializer, responses={201: StudentOutput})
    @idempotent("student.add")
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request)
        guardian = Guardian.objects.get(pk=self.guardian_id)
        student = add_student(guardian=guardian, **data)
        self.audit(target=student)
        return Response(StudentOutput(student).data, status=status.HTTP_201_CREATED)


# --- contracts ----------------------------------------------------------------------------------------------


class ContractFilter(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(choices=ContractState.choices)
    student = django_filters.NumberFilter(field_name="student_id", min_value=1, max_value=MAX_ID)
    institution = django_filters.NumberFilter(field_name="institution_id", min_value=1, max_value=MAX_ID)

    class Meta:
        model = Contract
        fields = ["state", "student", "institution", "subject"]


class ParentContractsView(ApiListView):
    """我的合同 Contracts with payment status and money held / consumed / refunded; POST signs one."""

    permission_classes = (IsParent,)
    serializer_class = ContractOutput
    filterset_class = ContractFilter
    ordering_fields = ["id", "signed_at", "amount_fen"]

    class InputSerializer(serializers.Serializer):
        course = serializers.IntegerField(min_value=1, max_value=MAX_ID)
        student = serializers.IntegerField(min_value=1, max_value=MAX_ID)
        paid_hours = serializers.IntegerField(min_value=1, max_value=10_000)
        gift_hours = serializers.IntegerField(min_value=0, max_value=10_000, default=0)
        amount = MoneyField()
        service_starts_on = serializers.DateField()
        service_ends_on = serializers.DateField()
        renews = serializers.IntegerField(min_value=1, max_value=MAX_ID, required=False, allow_null=True)

    def get_queryset(self) -> QuerySet[Contract]:
        return _contracts(self.guardian_id)

    def after_refusal(self, exc: Exception) -> None:
        """A charge refused by a charging cap counts towards the institution's over-cap alert."""
        course = getattr(self, "_course", None)
        if isinstance(exc, RuleViolation) and course is not None:
            record_charge_refusal(institution=course.institution, violation=exc)

    @extend_schema(request=InputSerializer, responses={201: ContractOutput})
    @idempotent("contract.sign")
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request)
        guardian_id = self.guardian_id
        student = own_or_field_error(
            Student.objects.filter(guardian_id=guardian_id), data["student"], "student"
        )
        course = own_or_field_error(
            Course.objects.filter(published=True, institution__whitelisted=True).select_related(
                "institution"
            ),
            data["course"],
            "course",
        )
        self._course = course
        renews = None
        if data.get("renews") is not None:
            renews = own_or_field_error(
                Contract.objects.filter(guardian_id=guardian_id), data["renews"], "renews"
            )
        contract = sign_contract(
            course=course,
            student=student,
            paid_hours=data["paid_hours"],
            gift_hours=data["gift_hours"],
            amount=data["amount"],
            service_starts_on=data["service_starts_on"],
            service_ends_on=data["service_ends_on"],
            renews=renews,
        )
        self.audit(target=contract, details={"number": contract.number, "amount_fen": contract.amount_fen})
        return Response(ContractOutput(_contracts(guardian_id).get(pk=contract.pk)).data, status=201)


class ParentContractDetailView(ApiDetailView):
    """一份合同 One contract, with its payments."""

    permission_classes = (IsParent,)

    class OutputSerializer(ContractOutput):
        payments = PaymentOutput(many=True)

    serializer_class = OutputSerializer

    def get_queryset(self) -> QuerySet[Contract]:
        return _contracts(self.guardian_id).prefetch_related("payments")


class ParentContractCancelView(ApiView):
    """取消未付款合同 Withdraw an order before paying it (nothing was paid, so no money moves). A paid
    contract is ended by a refund claim instead."""

    permission_classes = (IsParent,)

    @extend_schema(request=None, responses={200: ContractOutput})
    @idempotent("contract.cancel")
    def post(self, request: Request, pk: int) -> Response:
        contract = own_or_404(Contract.objects.filter(guardian_id=self.guardian_id), pk)
        cancel_unpaid_contract(contract=contract)
        self.audit(target=contract)
        return Response(ContractOutput(_contracts(self.guardian_id).get(pk=pk)).data)


class StatementLineOutput(serializers.Serializer):
    posting_id = serializers.IntegerField()
    entry_id = serializers.IntegerField()
    posted_at = serializers.DateTimeField()
    kind = serializers.CharField()
    debit = MoneyField(min_fen=0)
    credit = MoneyField(min_fen=0)
    balance = SignedMoneyField()


class AccountStatementOutput(serializers.Serializer):
    account = serializers.CharField(source="account_code")
    opening = SignedMoneyField()
    closing = SignedMoneyField()
    lines = StatementLineOutput(many=True)


class LiabilityProofOutput(serializers.Serializer):
    checkpoint_id = serializers.IntegerField()
    amount = MoneyField(
        source="amount_fen", min_fen=0, help_text="检查点签名的本合同应付额 what the checkpoint signed"
    )
    group = serializers.CharField(help_text="机构分组 the institution's group in the tree")
    group_total = MoneyField(source="group_total_fen", min_fen=0)
    total = MoneyField(source="total_fen", min_fen=0)
    key_id = serializers.CharField()
    public_key = serializers.CharField(help_text="平台公钥（hex）the platform's Ed25519 public key")
    checkpoint = serializers.DictField(help_text="检查点文件 the checkpoint file, as ledger.verify reads it")
    proof = serializers.DictField(help_text="负债包含证明 the liability inclusion proof")
    verify_command = serializers.CharField()


class ParentContractStatementView(ApiView):
    """可验证对账单 Every posting on the contract's accounts, and the signed proof that what custody owes
    on it is counted among the platform's liabilities (once a custody checkpoint has signed it)."""

    permission_classes = (IsParent,)

    class OutputSerializer(serializers.Serializer):
        contract = serializers.IntegerField(source="contract.pk")
        number = serializers.CharField(source="contract.number")
        prepaid = AccountStatementOutput(allow_null=True)
        refund_payable = AccountStatementOutput(source="refund", allow_null=True)
        liability_proof = LiabilityProofOutput(allow_null=True)

    @extend_schema(responses={200: OutputSerializer})
    def get(self, request: Request, pk: int) -> Response:
        contract = own_or_404(Contract.objects.filter(guardian_id=self.guardian_id), pk)
        return Response(self.OutputSerializer(contract_statement(contract)).data)


class ParentBalanceView(ApiView):
    """我的余额 What custody holds for the parent, over all their contracts (held = paid − consumed −
    refunded)."""

    permission_classes = (IsParent,)

    class OutputSerializer(serializers.Serializer):
        contracts = serializers.IntegerField()
        paid = MoneyField(source="paid_fen", min_fen=0)
        held = MoneyField(source="held_fen", min_fen=0)
        pending_confirmation = MoneyField(source="pending_fen", min_fen=0)
        consumed = SignedMoneyField(source="consumed_fen")
        refunded = MoneyField(source="refunded_fen", min_fen=0)
        refund_paid = MoneyField(source="refund_paid_fen", min_fen=0)

    @extend_schema(responses={200: OutputSerializer})
    def get(self, request: Request) -> Response:
        # The API's hottest read: rendered directly, in exactly the OutputSerializer's shape (a test checks
        # both agree), without instantiating a serializer per request.
        return Response(balance_json(holdings_of_guardian(self.guardian_id)))


def balance_json(holdings: Holdings) -> dict[str, Any]:
    return {
        "contracts": holdings.contracts,
        "paid": money_json(holdings.paid_fen),
        "held": money_json(holdings.held_fen),
        "pending_confirmation": money_json(holdings.pending_fen),
        "consumed": money_json(holdings.consumed_fen),
        "refunded": money_json(holdings.refunded_fen),
        "refund_paid": money_json(holdings.refund_paid_fen),
    }


# --- lessons ------------------------------------------------------------------------------------------------


class LessonFilter(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(choices=LessonState.choices)
    contract = django_filters.NumberFilter(field_name="contract_id", min_value=1, max_value=MAX_ID)
    held_after = IsoDateTimeFilter(field_name="held_at", lookup_expr="gte")
    held_before = IsoDateTimeFilter(field_name="held_at", lookup_expr="lt")

    class Meta:
        model = Lesson
        fields = ["state", "contract", "held_after", "held_before"]


class ParentLessonsView(ApiListView):
    """课时 Lessons of the parent's contracts: pending ones await confirmation or dispute."""

    permission_classes = (IsParent,)
    serializer_class = LessonOutput
    filterset_class = LessonFilter
    ordering_fields = ["id", "held_at", "confirm_deadline"]

    def get_queryset(self) -> QuerySet[Lesson]:
        return Lesson.objects.filter(contract__guardian_id=self.guardian_id)


class ParentLessonConfirmView(ApiView):
    """确认课时 Confirm a lesson: its value is released to the institution."""

    permission_classes = (IsParent,)

    @extend_schema(request=None, responses={200: LessonOutput})
    @idempotent("lesson.confirm")
    def post(self, request: Request, pk: int) -> Response:
        lesson = own_or_404(Lesson.objects.filter(contract__guardian_id=self.guardian_id), pk)
        lesson = confirm_lesson(lesson=lesson)
        self.audit(target=lesson)
        return Response(LessonOutput(lesson).data)


class ParentLessonDisputeView(ApiView):
    """异议 Dispute a lesson: it stays held and no longer confirms itself by silence."""

    permission_classes = (IsParent,)

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=500)

    @extend_schema(request=InputSerializer, responses={200: LessonOutput})
    @idempotent("lesson.dispute")
    def post(self, request: Request, pk: int) -> Response:
        data = validated(self.InputSerializer, request)
        lesson = own_or_404(Lesson.objects.filter(contract__guardian_id=self.guardian_id), pk)
        lesson = dispute_lesson(lesson=lesson, reason=data["reason"])
        self.audit(target=lesson)
        return Response(LessonOutput(lesson).data)


# --- refunds ------------------------------------------------------------------------------------------------


class RefundFilter(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(choices=RefundState.choices)
    contract = django_filters.NumberFilter(field_name="contract_id", min_value=1, max_value=MAX_ID)

    class Meta:
        model = Refund
        fields = ["state", "contract", "reason"]


class ParentRefundsView(ApiListView):
    """退费 The parent's refunds; POST claims one for a contract."""

    permission_classes = (IsParent,)
    serializer_class = RefundOutput
    filterset_class = RefundFilter
    ordering_fields = ["id", "claimed_at"]

    class InputSerializer(serializers.Serializer):
        contract = serializers.IntegerField(min_value=1, max_value=MAX_ID)
        note = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)

    def get_queryset(self) -> QuerySet[Refund]:
        return Refund.objects.filter(contract__guardian_id=self.guardian_id).select_related("contract")

    @extend_schema(request=InputSerializer, responses={201: RefundOutput})
    @idempotent("refund.claim")
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request)
        contract = own_or_field_error(
            Contract.objects.filter(guardian_id=self.guardian_id), data["contract"], "contract"
        )
        refund = claim_refund(
            contract=contract,
            note=data["note"],
            idempotency_key=f"api:g{self.guardian_id}:{request.headers['Idempotency-Key']}"[:200],
        )
        self.audit(target=refund, institution_id=contract.institution_id)
        return Response(RefundOutput(refund).data, status=status.HTTP_201_CREATED)
