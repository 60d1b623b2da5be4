"""培训机构 Institutions: their own balances, courses and prices, contracts, lessons (one by one and in
bulk), disputes, refund answers, releases and payouts. Everything is scoped to the staff member's own
institution; what each staff role may do is in custody/api/permissions.py.
"""

from __future__ import annotations

import re
from typing import Any, cast

import django_filters
from django.db.models import QuerySet
from django.http import Http404
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
    MethodPermissionsMixin,
    own_or_404,
    validated,
)
from custody.api.idempotency import idempotent
from custody.api.money import MoneyField, money_json
from custody.api.outputs import (
    ContractOutput,
    CourseOutput,
    InstitutionMoneyOutput,
    LessonOutput,
    PayoutOutput,
    RefundOutput,
)
from custody.api.permissions import (
    IsInstitutionFinance,
    IsInstitutionManager,
    IsInstitutionStaff,
    IsInstitutionTeacher,
)
from custody.api.views.parents import ContractFilter, LessonFilter, RefundFilter
from custody.models import (
    ClassSizeBand,
    ConfirmedBy,
    Contract,
    Course,
    Institution,
    Lesson,
    PayoutInstruction,
    PayoutKind,
    PayoutState,
    Refund,
    TeachingMode,
    TrainingCategory,
)
from custody.selectors.holdings import institutions_with_money, with_money
from custody.services.courses import publish_course
from custody.services.lessons import MAX_LESSON_HOURS, NewLesson, record_lessons, resolve_dispute
from custody.services.refunds import answer_refund

MAX_BULK_LESSONS = 5000
LESSON_KEY_PATTERN = r"^[!-~]{1,120}$"
_LESSON_KEY = re.compile(LESSON_KEY_PATTERN)


class InstitutionProfileView(ApiView):
    """本机构 The institution with its custody balances."""

    permission_classes = (IsInstitutionStaff,)

    @extend_schema(responses={200: InstitutionMoneyOutput})
    def get(self, request: Request) -> Response:
        institution = (
            institutions_with_money(Institution.objects.filter(pk=self.institution_id))
            .select_related("jurisdiction")
            .first()
        )
        if institution is None:
            raise Http404
        return Response(InstitutionMoneyOutput(institution).data)


class InstitutionCoursesView(MethodPermissionsMixin, ApiListView):
    """课程与价格 The institution's courses; POST publishes one (within the guidance price cap)."""

    permission_classes = (IsInstitutionStaff,)
    method_permissions = {"GET": (IsInstitutionStaff,), "POST": (IsInstitutionManager,)}
    serializer_class = CourseOutput
    filterset_fields = ["subject", "category", "mode", "class_size_band", "published"]
    ordering_fields = ["id", "starts_on", "price_per_hour_fen"]

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200)
        subject = serializers.CharField(max_length=50)
        category = serializers.ChoiceField(choices=TrainingCategory.choices)
        class_size_band = serializers.ChoiceField(choices=ClassSizeBand.choices)
        mode = serializers.ChoiceField(choices=TeachingMode.choices)
        price_per_hour = MoneyField()
        starts_on = serializers.DateField()

    def get_queryset(self) -> QuerySet[Course]:
        return Course.objects.filter(institution_id=self.institution_id).select_related("institution")

    @extend_schema(request=InputSerializer, responses={201: CourseOutput})
    @idempotent("course.publish")
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request)
        institution = Institution.objects.get(pk=self.institution_id)
        course = publish_course(institution=institution, **data)
        self.audit(
            target=course, after={"name": course.name, "price_per_hour_fen": course.price_per_hour_fen}
        )
        return Response(CourseOutput(course).data, status=status.HTTP_201_CREATED)


def _contracts(institution_id: int) -> QuerySet[Contract]:
    return with_money(
        Contract.objects.filter(institution_id=institution_id).select_related(
            "institution", "course", "policy"
        )
    )


class InstitutionContractsView(ApiListView):
    """合同 The institution's contracts, with their money."""

    permission_classes = (IsInstitutionStaff,)
    serializer_class = ContractOutput
    filterset_class = ContractFilter
    ordering_fields = ["id", "signed_at", "amount_fen"]

    def get_queryset(self) -> QuerySet[Contract]:
        return _contracts(self.institution_id)


class InstitutionContractDetailView(ApiDetailView):
    """一份合同 One of the institution's contracts, with its money."""

    permission_classes = (IsInstitutionStaff,)
    serializer_class = ContractOutput

    def get_queryset(self) -> QuerySet[Contract]:
        return _contracts(self.institution_id)


class LessonInput(serializers.Serializer):
    contract = serializers.IntegerField(min_value=1, max_value=MAX_ID)
    held_at = serializers.DateTimeField()
    hours = serializers.IntegerField(min_value=1, max_value=MAX_LESSON_HOURS, default=1)
    key = serializers.RegexField(
        LESSON_KEY_PATTERN,
        help_text="机构自己的课时编号（幂等）the institution's own id of the lesson (idempotent)",
    )


class LessonListField(serializers.ListField):
    """A list of ``LessonInput`` validated row by row as DRF would, but a row in the plain shape (integers
    for ``contract`` and ``hours`` in range, a ``key`` matching its pattern, ``held_at`` an ISO 8601 string)
    skips DRF's per-field machinery (a bulk request has thousands of rows). Any other row goes through
    ``LessonInput`` itself, so it is accepted, converted or refused with exactly DRF's result and messages."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(child=LessonInput(), **kwargs)
        self._held_at = serializers.DateTimeField()

    def run_child_validation(self, data: list[Any]) -> list[Any]:
        held: dict[str, Any] = {}  # a batch's lessons mostly share a few times: each string parsed once
        plain: list[Any] = [self._plain(item, held) for item in data]
        if all(row is not None for row in plain):
            return plain
        result: list[Any] = []
        errors: dict[int, Any] = {}
        for index, (item, row) in enumerate(zip(data, plain, strict=True)):
            if row is None:
                try:
                    row = self.child.run_validation(item)
                except serializers.ValidationError as error:
                    errors[index] = error.detail
                    continue
            result.append(row)
        if errors:
            raise serializers.ValidationError(cast(Any, errors))  # keyed by row index, as in DRF
        return result

    def _plain(self, item: Any, held: dict[str, Any]) -> dict[str, Any] | None:
        if type(item) is not dict:
            return None
        contract, hours, key, held_at = (
            item.get("contract"),
            item.get("hours", 1),
            item.get("key"),
            item.get("held_at"),
        )
        if type(contract) is not int or not 1 <= contract <= MAX_ID:
            return None
        if type(hours) is not int or not 1 <= hours <= MAX_LESSON_HOURS:
            return None
        if type(key) is not str or not _LESSON_KEY.fullmatch(key) or type(held_at) is not str:
            return None
        if held_at not in held:
            try:
                held[held_at] = self._held_at.to_internal_value(held_at)
            except serializers.ValidationError:
                held[held_at] = None
        if held[held_at] is None:
            return None
        return {"contract": contract, "held_at": held[held_at], "hours": hours, "key": key}


def _new_lessons(institution_id: int, rows: list[dict]) -> list[NewLesson]:
    """Build the service's input; a contract that is not the institution's is a field error."""
    wanted = {row["contract"] for row in rows}
    contracts = {c.pk: c for c in Contract.objects.filter(pk__in=wanted, institution_id=institution_id)}
    missing = sorted(wanted - contracts.keys())
    if missing:
        raise serializers.ValidationError(
            {"contract": [f"合同不存在或不属于本机构 contract {missing[0]} is not found or not yours"]}
        )
    return [
        NewLesson(
            contract=contracts[row["contract"]],
            held_at=row["held_at"],
            hours=row["hours"],
            # Namespaced by institution: two institutions' own ids never collide.
            idempotency_key=f"i{institution_id}:{row['key']}",
        )
        for row in rows
    ]


class InstitutionLessonsView(MethodPermissionsMixin, ApiListView):
    """课时 The institution's lessons (filter ``state=disputed`` for disputes); POST records one."""

    permission_classes = (IsInstitutionStaff,)
    method_permissions = {"GET": (IsInstitutionStaff,), "POST": (IsInstitutionTeacher,)}
    serializer_class = LessonOutput
    filterset_class = LessonFilter
    ordering_fields = ["id", "held_at", "recorded_at"]

    def get_queryset(self) -> QuerySet[Lesson]:
        return Lesson.objects.filter(institution_id=self.institution_id)

    @extend_schema(request=LessonInput, responses={201: LessonOutput})
    @idempotent("lesson.record")
    def post(self, request: Request) -> Response:
        data = validated(LessonInput, request)
        institution_id = self.institution_id
        (lesson,) = record_lessons(lessons=_new_lessons(institution_id, [data]), recorded_by=self.user)
        self.audit(target=lesson)
        return Response(LessonOutput(lesson).data, status=status.HTTP_201_CREATED)


class InstitutionLessonBulkView(ApiView):
    """批量登记课时 Record up to 5,000 lessons at once: all or none (a rule broken by one refuses the batch).
    Lessons whose ``key`` was recorded before are returned as they are."""

    permission_classes = (IsInstitutionTeacher,)

    class InputSerializer(serializers.Serializer):
        lessons = LessonListField(min_length=1, max_length=MAX_BULK_LESSONS)

    class OutputSerializer(serializers.Serializer):
        class Row(serializers.Serializer):
            id = serializers.IntegerField()
            key = serializers.CharField()
            contract = serializers.IntegerField()
            state = serializers.CharField()
            amount = MoneyField(min_fen=0)

        recorded = serializers.IntegerField()
        lessons = Row(many=True)

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer})
    @idempotent("lesson.record_bulk")
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request)
        institution_id = self.institution_id
        lessons = record_lessons(lessons=_new_lessons(institution_id, data["lessons"]), recorded_by=self.user)
        self.audit(target_type="lesson", details={"count": len(lessons)})
        return Response(bulk_lessons_json(institution_id, lessons), status=201)


def bulk_lessons_json(institution_id: int, lessons: list[Lesson]) -> dict[str, Any]:
    """The bulk answer, in exactly ``InstitutionLessonBulkView.OutputSerializer``'s shape (a test checks both
    agree), rendered without a serializer per row."""
    prefix = len(f"i{institution_id}:")
    rows = [
        {
            "id": lesson.pk,
            "key": lesson.idempotency_key[prefix:],
            "contract": lesson.contract_id,
            "state": str(lesson.state),
            "amount": money_json(lesson.amount_fen),
        }
        for lesson in lessons
    ]
    return {"recorded": len(rows), "lessons": rows}


class InstitutionLessonResolveView(ApiView):
    """处理异议 Resolve a disputed lesson: ``release`` confirms it, otherwise the dispute is upheld and the
    lesson voided (its hours go back to the contract)."""

    permission_classes = (IsInstitutionTeacher,)

    class InputSerializer(serializers.Serializer):
        release = serializers.BooleanField()
        note = serializers.CharField(max_length=500)

    @extend_schema(request=InputSerializer, responses={200: LessonOutput})
    @idempotent("lesson.resolve")
    def post(self, request: Request, pk: int) -> Response:
        data = validated(self.InputSerializer, request)
        lesson = own_or_404(Lesson.objects.filter(institution_id=self.institution_id), pk)
        lesson = resolve_dispute(
            lesson=lesson, release=data["release"], note=data["note"], by=ConfirmedBy.INSTITUTION
        )
        self.audit(target=lesson, details={"release": data["release"]})
        return Response(LessonOutput(lesson).data)


class InstitutionRefundsView(ApiListView):
    """退费申请 Refund claims on the institution's contracts."""

    permission_classes = (IsInstitutionStaff,)
    serializer_class = RefundOutput
    filterset_class = RefundFilter
    ordering_fields = ["id", "claimed_at", "answer_due"]

    def get_queryset(self) -> QuerySet[Refund]:
        return Refund.objects.filter(contract__institution_id=self.institution_id).select_related("contract")


class InstitutionRefundAnswerView(ApiView):
    """答复退费 Approve (the unconsumed value goes back to the parent) or reject with a reason."""

    permission_classes = (IsInstitutionFinance,)

    class InputSerializer(serializers.Serializer):
        approve = serializers.BooleanField()
        reason = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)

    @extend_schema(request=InputSerializer, responses={200: RefundOutput})
    @idempotent("refund.answer")
    def post(self, request: Request, pk: int) -> Response:
        data = validated(self.InputSerializer, request)
        refund = own_or_404(
            Refund.objects.filter(contract__institution_id=self.institution_id).select_related("contract"),
            pk,
        )
        refund = answer_refund(refund=refund, approve=data["approve"], reason=data["reason"])
        self.audit(target=refund, institution_id=self.institution_id, details={"approve": data["approve"]})
        return Response(RefundOutput(refund).data)


class PayoutFilter(django_filters.FilterSet):
    kind = django_filters.ChoiceFilter(choices=PayoutKind.choices)
    state = django_filters.ChoiceFilter(choices=PayoutState.choices)
    instructed_after = IsoDateTimeFilter(field_name="instructed_at", lookup_expr="gte")
    instructed_before = IsoDateTimeFilter(field_name="instructed_at", lookup_expr="lt")

    class Meta:
        model = PayoutInstruction
        fields = ["kind", "state", "instructed_after", "instructed_before"]


class InstitutionPayoutsView(ApiListView):
    """拨付与退款划付 Release payouts to the institution and refund payouts to its parents, with their bank
    status."""

    permission_classes = (IsInstitutionStaff,)
    serializer_class = PayoutOutput
    filterset_class = PayoutFilter
    ordering_fields = ["id", "instructed_at", "amount_fen"]

    def get_queryset(self) -> QuerySet[PayoutInstruction]:
        return PayoutInstruction.objects.filter(institution_id=self.institution_id)
