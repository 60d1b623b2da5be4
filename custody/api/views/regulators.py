"""监管部门 Regulators, scoped to their jurisdiction and the jurisdictions under it: overview, institutions
and balances, policy, freeze / unfreeze / closure, disputes, refunds, manual corrections under four eyes,
alerts, the audit trail and ledger verification.

Every regulator request, reads included, is recorded in the audit trail (custody/api/audit.py).
"""

from __future__ import annotations

from typing import Any

import django_filters
from django.db.models import Q, QuerySet
from django.http import Http404
from drf_spectacular.utils import extend_schema, extend_schema_field
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
from custody.api.money import MoneyField
from custody.api.outputs import InstitutionMoneyOutput, LessonOutput, RefundOutput
from custody.api.permissions import IsRegulator
from custody.api.views.parents import LessonFilter, RefundFilter
from custody.models import (
    AlertLevel,
    AlertRule,
    AlertState,
    AuditEvent,
    AuditOutcome,
    ClassSizeBand,
    Closure,
    ClosureMode,
    ConfirmedBy,
    CorrectionProposal,
    CorrectionState,
    InboxMessage,
    Institution,
    InstitutionState,
    Jurisdiction,
    Lesson,
    LessonState,
    Policy,
    Refund,
    RefundState,
    RiskAlert,
    SupervisionMode,
    TeachingMode,
    TrainingCategory,
)
from custody.selectors.access import institutions_in_scope
from custody.selectors.audit import events_in
from custody.selectors.balances import custody_invariant
from custody.selectors.holdings import institutions_with_money
from custody.selectors.policy import current_policy, guidance_prices
from custody.selectors.supervision import overview
from custody.services.alerts import mark_inbox_read, transition_alert
from custody.services.calendar import local_today
from custody.services.closures import order_closure
from custody.services.corrections import (
    CorrectionLeg,
    approve_correction,
    propose_correction,
    reject_correction,
)
from custody.services.institutions import freeze_institution, unfreeze_institution
from custody.services.lessons import resolve_dispute
from custody.services.policy import EDITABLE_FIELDS, publish_policy
from ledger import verification
from ledger.money import to_minor


def _institutions(view: Any) -> QuerySet[Institution]:
    return institutions_in_scope(view.actor)


class RegulatorOverviewView(ApiView):
    """辖区概览 The jurisdiction at a glance."""

    permission_classes = (IsRegulator,)

    class OutputSerializer(serializers.Serializer):
        jurisdiction = serializers.CharField()
        institutions = serializers.IntegerField()
        institutions_by_state = serializers.DictField(child=serializers.IntegerField())
        custody_cash = MoneyField(source="custody_cash_fen", min_fen=0)
        in_clearing = MoneyField(source="in_clearing_fen", min_fen=0)
        payable = MoneyField(source="payable_fen", min_fen=0)
        prepaid = MoneyField(source="prepaid_fen", min_fen=0)
        refund_payable = MoneyField(source="refund_payable_fen", min_fen=0)
        custody_owed = MoneyField(
            source="custody_owed_fen",
            min_fen=0,
            help_text="银行托管机构的应付 owed by bank-custody institutions (custody cash answers for it)",
        )
        reserve_mode_institutions = serializers.IntegerField(
            help_text="风险保证金模式机构数 risk-reserve institutions"
        )
        reserve_mode_owed = MoneyField(
            source="reserve_mode_owed_fen",
            min_fen=0,
            help_text="风险保证金模式机构自管的应付 owed by risk-reserve institutions, held by themselves",
        )
        reserve_cash = MoneyField(
            source="reserve_cash_fen", min_fen=0, help_text="银行保证金 their reserves at the bank"
        )
        active_contracts = serializers.IntegerField()
        lessons_pending = serializers.IntegerField()
        lessons_disputed = serializers.IntegerField()
        refunds_claimed = serializers.IntegerField()
        refunds_unpaid = serializers.IntegerField()
        refunds_overdue = serializers.IntegerField()
        alerts_red = serializers.IntegerField(help_text="未处置的红色预警 unresolved red alerts")
        alerts_yellow = serializers.IntegerField(help_text="未处置的黄色预警 unresolved yellow alerts")

    @extend_schema(responses={200: OutputSerializer})
    def get(self, request: Request) -> Response:
        summary = overview(_institutions(self))
        code = Jurisdiction.objects.values_list("code", flat=True).get(pk=self.jurisdiction_id)
        return Response(self.OutputSerializer({"jurisdiction": code, **vars(summary)}).data)


class RegulatorInstitutionFilter(django_filters.FilterSet):
    jurisdiction = django_filters.CharFilter(field_name="jurisdiction__code", max_length=32)
    state = django_filters.ChoiceFilter(choices=InstitutionState.choices)
    category = django_filters.ChoiceFilter(choices=TrainingCategory.choices)
    supervision_mode = django_filters.ChoiceFilter(choices=SupervisionMode.choices)
    name = django_filters.CharFilter(field_name="name", lookup_expr="icontains", max_length=100)

    class Meta:
        model = Institution
        fields = ["jurisdiction", "state", "category", "supervision_mode", "whitelisted", "name"]


class RegulatorInstitutionsView(ApiListView):
    """机构与余额 Institutions of the jurisdiction with their custody balances."""

    permission_classes = (IsRegulator,)
    serializer_class = InstitutionMoneyOutput
    filterset_class = RegulatorInstitutionFilter
    ordering_fields = ["id", "name", "cash_fen", "prepaid_fen", "payable_fen"]

    def get_queryset(self) -> QuerySet[Institution]:
        return institutions_with_money(_institutions(self)).select_related("jurisdiction")


class InvariantOutput(serializers.Serializer):
    holds = serializers.BooleanField()
    custody_cash = MoneyField(source="cash_fen", min_fen=0)
    in_clearing = MoneyField(source="in_clearing_fen", min_fen=0)
    prepaid = MoneyField(source="prepaid_fen", min_fen=0)
    payable = MoneyField(source="payable_fen", min_fen=0)
    refund_payable = MoneyField(source="refund_payable_fen", min_fen=0)


class RegulatorInstitutionDetailView(ApiDetailView):
    """一家机构 One institution, with the custody invariant (cash + clearing = what it owes)."""

    permission_classes = (IsRegulator,)

    class OutputSerializer(InstitutionMoneyOutput):
        invariant = serializers.SerializerMethodField()

        @extend_schema_field(InvariantOutput)
        def get_invariant(self, obj: Institution) -> dict[str, Any]:
            return dict(InvariantOutput(custody_invariant(obj)).data)

    serializer_class = OutputSerializer

    def get_queryset(self) -> QuerySet[Institution]:
        return institutions_with_money(_institutions(self)).select_related("jurisdiction")


class ReasonInput(serializers.Serializer):
    reason = serializers.CharField(max_length=500)


class RegulatorFreezeView(ApiView):
    """冻结 Freeze an institution: no new contracts, payments, lessons or payouts until unfrozen."""

    permission_classes = (IsRegulator,)

    @extend_schema(request=ReasonInput, responses={200: InstitutionMoneyOutput})
    @idempotent("institution.freeze")
    def post(self, request: Request, pk: int) -> Response:
        data = validated(ReasonInput, request)
        institution = own_or_404(_institutions(self), pk)
        before = {"state": institution.state}
        freeze_institution(institution=institution, reason=data["reason"])
        self.audit(target=institution, before=before, after={"state": institution.state})
        return Response(_institution_out(self, pk))


class RegulatorUnfreezeView(ApiView):
    """解冻 Unfreeze an institution."""

    permission_classes = (IsRegulator,)

    @extend_schema(request=ReasonInput, responses={200: InstitutionMoneyOutput})
    @idempotent("institution.unfreeze")
    def post(self, request: Request, pk: int) -> Response:
        data = validated(ReasonInput, request)
        institution = own_or_404(_institutions(self), pk)
        before = {"state": institution.state}
        unfreeze_institution(institution=institution, reason=data["reason"])
        self.audit(target=institution, before=before, after={"state": institution.state})
        return Response(_institution_out(self, pk))


def _institution_out(view: Any, pk: int) -> dict[str, Any]:
    found = institutions_with_money(_institutions(view)).select_related("jurisdiction").get(pk=pk)
    return dict(InstitutionMoneyOutput(found).data)


class ClosureOutput(serializers.Serializer):
    id = serializers.IntegerField()
    institution = serializers.IntegerField(source="institution_id")
    institution_name = serializers.CharField(source="institution.name")
    mode = serializers.CharField()
    state = serializers.CharField()
    reason = serializers.CharField()
    ordered_at = serializers.DateTimeField()
    refunds_start_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    contracts_total = serializers.IntegerField()
    contracts_done = serializers.IntegerField()
    lessons_voided = serializers.IntegerField()
    refunded = MoneyField(source="refunded_fen", min_fen=0)


class RegulatorClosureOrderView(ApiView):
    """终止办学 Order a closure: planned (30 days' notice, refunds after) or abnormal (跑路: frozen at once,
    every contract's unconsumed value refunded through the custody bank)."""

    permission_classes = (IsRegulator,)

    class InputSerializer(serializers.Serializer):
        mode = serializers.ChoiceField(choices=ClosureMode.choices)
        reason = serializers.CharField(max_length=500)

    @extend_schema(request=InputSerializer, responses={201: ClosureOutput})
    @idempotent("institution.closure")
    def post(self, request: Request, pk: int) -> Response:
        data = validated(self.InputSerializer, request)
        institution = own_or_404(_institutions(self), pk)
        before = {"state": institution.state}
        closure = order_closure(
            institution=institution, mode=data["mode"], reason=data["reason"], ordered_by=self.user
        )
        self.audit(
            target=institution, before=before, after={"state": institution.state, "closure": closure.pk}
        )
        return Response(ClosureOutput(closure).data, status=status.HTTP_201_CREATED)


class RegulatorClosuresView(ApiListView):
    """停办进度 Closures and the progress of their refund runs."""

    permission_classes = (IsRegulator,)
    serializer_class = ClosureOutput
    filterset_fields = ["state", "mode"]
    ordering_fields = ["id", "ordered_at"]

    def get_queryset(self) -> QuerySet[Closure]:
        return Closure.objects.filter(institution__in=_institutions(self)).select_related("institution")


# --- policy -------------------------------------------------------------------------------------------------

_POLICY_FIELDS = sorted(EDITABLE_FIELDS)


class GuidancePriceItem(serializers.Serializer):
    class_size_band = serializers.ChoiceField(choices=ClassSizeBand.choices)
    mode = serializers.ChoiceField(choices=TeachingMode.choices)
    price = MoneyField(help_text="一节标准课的政府指导价 guidance price of one standard lesson")


class PolicyOutput(serializers.Serializer):
    jurisdiction = serializers.CharField(source="jurisdiction.code")
    version = serializers.IntegerField()
    effective_from = serializers.DateTimeField()
    change_note = serializers.CharField()
    max_service_months = serializers.IntegerField()
    max_paid_hours = serializers.IntegerField()
    non_subject_max_charge = MoneyField(source="non_subject_max_charge_fen")
    anti_splitting = serializers.BooleanField()
    earliest_charge_days_before_start = serializers.IntegerField()
    renewal_max_remaining_hours = serializers.IntegerField()
    unpaid_contract_lapse_days = serializers.IntegerField()
    guidance_markup_percent = serializers.IntegerField()
    lesson_auto_confirm_working_days = serializers.IntegerField()
    refund_answer_working_days = serializers.IntegerField()
    refund_payout_before_start_working_days = serializers.IntegerField()
    refund_payout_after_start_working_days = serializers.IntegerField()
    release_cadence = serializers.CharField()
    closure_notice_days = serializers.IntegerField()
    risk_reserve_allowed = serializers.BooleanField()
    reserve_ratio_percent = serializers.IntegerField()
    reserve_minimum = MoneyField(source="reserve_minimum_fen", min_fen=0)
    risk_thresholds = serializers.DictField(child=serializers.IntegerField())
    guidance_prices = serializers.SerializerMethodField()

    @extend_schema_field(GuidancePriceItem(many=True))
    def get_guidance_prices(self, policy: Policy) -> list[dict[str, Any]]:
        return [
            {"class_size_band": band, "mode": mode, "price": MoneyField().to_representation(fen)}
            for (band, mode), fen in sorted(guidance_prices(policy).items())
        ]


def _policy_values(policy: Policy) -> dict[str, Any]:
    values = {name: getattr(policy, name) for name in _POLICY_FIELDS}
    values["guidance_prices"] = {
        f"{band}/{mode}": fen for (band, mode), fen in guidance_prices(policy).items()
    }
    values["version"] = policy.version
    return values


class RegulatorPolicyView(ApiView):
    """监管政策 The policy in force in the regulator's own jurisdiction; POST publishes the next version
    (a contract keeps the version it was signed under). Amounts in ``changes`` are integers of fen, as the
    policy stores them (``non_subject_max_charge_fen``, ``reserve_minimum_fen``, ``risk_thresholds``)."""

    permission_classes = (IsRegulator,)

    class InputSerializer(serializers.Serializer):
        changes = serializers.DictField(
            required=False,
            default=dict,
            help_text=f"要修改的政策项 policy fields to change: {', '.join(_POLICY_FIELDS)}",
        )
        guidance_prices = serializers.ListField(
            child=GuidancePriceItem(), required=False, default=list, max_length=20
        )
        note = serializers.CharField(max_length=500)

    @extend_schema(responses={200: PolicyOutput})
    def get(self, request: Request) -> Response:
        policy = current_policy(Jurisdiction.objects.get(pk=self.jurisdiction_id))
        return Response(PolicyOutput(policy).data)

    @extend_schema(request=InputSerializer, responses={201: PolicyOutput})
    @idempotent("policy.publish")
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request)
        jurisdiction = Jurisdiction.objects.get(pk=self.jurisdiction_id)
        before = _policy_values(current_policy(jurisdiction))
        prices = {
            (item["class_size_band"], item["mode"]): to_minor(item["price"])
            for item in data["guidance_prices"]
        }
        policy = publish_policy(
            jurisdiction=jurisdiction,
            changes=data["changes"],
            changed_by=self.user,
            note=data["note"],
            guidance_prices=prices,
        )
        self.audit(
            target=policy, jurisdiction_id=jurisdiction.pk, before=before, after=_policy_values(policy)
        )
        return Response(PolicyOutput(policy).data, status=status.HTTP_201_CREATED)


class RegulatorPolicyVersionsView(ApiListView):
    """政策版本 Every version of the policies in scope, newest first."""

    permission_classes = (IsRegulator,)
    serializer_class = PolicyOutput
    filterset_fields = ["version"]
    ordering_fields = ["id", "version", "effective_from"]

    def get_queryset(self) -> QuerySet[Policy]:
        return Policy.objects.filter(jurisdiction_id__in=self.actor.jurisdiction_ids()).select_related(
            "jurisdiction"
        )


# --- disputes and refunds -----------------------------------------------------------------------------------


class RegulatorDisputesView(ApiListView):
    """异议课时 Disputed lessons in the jurisdiction (filter ``state`` for the others)."""

    permission_classes = (IsRegulator,)
    serializer_class = LessonOutput
    filterset_class = LessonFilter
    ordering_fields = ["id", "disputed_at", "held_at"]

    def get_queryset(self) -> QuerySet[Lesson]:
        lessons = Lesson.objects.filter(institution__in=_institutions(self))
        if "state" not in self.request.query_params:
            lessons = lessons.filter(state=LessonState.DISPUTED)
        return lessons


class RegulatorDisputeResolveView(ApiView):
    """裁定异议 Rule on a disputed lesson: ``release`` confirms it, otherwise it is voided."""

    permission_classes = (IsRegulator,)

    class InputSerializer(serializers.Serializer):
        release = serializers.BooleanField()
        note = serializers.CharField(max_length=500)

    @extend_schema(request=InputSerializer, responses={200: LessonOutput})
    @idempotent("lesson.rule")
    def post(self, request: Request, pk: int) -> Response:
        data = validated(self.InputSerializer, request)
        lesson = own_or_404(Lesson.objects.filter(institution__in=_institutions(self)), pk)
        lesson = resolve_dispute(
            lesson=lesson, release=data["release"], note=data["note"], by=ConfirmedBy.REGULATOR
        )
        self.audit(target=lesson, details={"release": data["release"]})
        return Response(LessonOutput(lesson).data)


class RegulatorRefundFilter(RefundFilter):
    overdue = django_filters.BooleanFilter(method="filter_overdue", label="past the payout deadline, unpaid")
    institution = django_filters.NumberFilter(
        field_name="contract__institution_id", min_value=1, max_value=MAX_ID
    )

    class Meta(RefundFilter.Meta):
        fields = [*RefundFilter.Meta.fields, "overdue", "institution"]

    def filter_overdue(self, queryset: QuerySet[Refund], name: str, value: bool) -> QuerySet[Refund]:
        late = Q(state__in=(RefundState.APPROVED, RefundState.INSTRUCTED), payout_due__lt=local_today())
        return queryset.filter(late) if value else queryset.exclude(late)


class RegulatorRefundsView(ApiListView):
    """退费 Refunds in the jurisdiction; ``overdue=true`` lists approved refunds past their payout deadline
    and not yet paid back."""

    permission_classes = (IsRegulator,)
    serializer_class = RefundOutput
    filterset_class = RegulatorRefundFilter
    ordering_fields = ["id", "claimed_at", "payout_due"]

    def get_queryset(self) -> QuerySet[Refund]:
        return Refund.objects.filter(contract__institution__in=_institutions(self)).select_related("contract")


# --- corrections --------------------------------------------------------------------------------------------


class CorrectionLegIO(serializers.Serializer):
    account = serializers.RegexField(r"^[a-z_]{1,40}:[ic][0-9]{1,18}$", help_text="账户代码 account code")
    side = serializers.ChoiceField(choices=[("debit", "借 debit"), ("credit", "贷 credit")])
    amount = MoneyField()


class CorrectionOutput(serializers.Serializer):
    id = serializers.IntegerField()
    jurisdiction = serializers.IntegerField(source="jurisdiction_id")
    institution = serializers.IntegerField(source="institution_id")
    reason = serializers.CharField()
    legs = serializers.SerializerMethodField()
    state = serializers.CharField()
    proposed_by = serializers.CharField(source="proposed_by.username")
    proposed_at = serializers.DateTimeField()
    decided_by = serializers.CharField(source="decided_by.username", allow_null=True, default=None)
    decided_at = serializers.DateTimeField(allow_null=True)
    decision_note = serializers.CharField()
    entry = serializers.IntegerField(source="entry_id", allow_null=True)

    @extend_schema_field(CorrectionLegIO(many=True))
    def get_legs(self, proposal: CorrectionProposal) -> list[dict[str, Any]]:
        return [
            {
                "account": leg["account"],
                "side": leg["side"],
                "amount": MoneyField().to_representation(leg["amount_fen"]),
            }
            for leg in proposal.legs
        ]


def _corrections(view: Any) -> QuerySet[CorrectionProposal]:
    return CorrectionProposal.objects.filter(
        jurisdiction_id__in=view.actor.jurisdiction_ids()
    ).select_related("proposed_by", "decided_by")


class CorrectionFilter(django_filters.FilterSet):
    # A plain number, not django-filter's default choice of every institution: an id outside the
    # jurisdiction must answer as one that does not exist (an empty page), not as a valid choice.
    institution = django_filters.NumberFilter(field_name="institution_id", min_value=1, max_value=MAX_ID)

    class Meta:
        model = CorrectionProposal
        fields = ["state", "institution"]


class RegulatorCorrectionsView(ApiListView):
    """人工调账 Correction proposals; POST proposes one (a second regulator must approve it)."""

    permission_classes = (IsRegulator,)
    serializer_class = CorrectionOutput
    filterset_class = CorrectionFilter
    ordering_fields = ["id", "proposed_at"]

    class InputSerializer(serializers.Serializer):
        institution = serializers.IntegerField(min_value=1, max_value=MAX_ID)
        reason = serializers.CharField(max_length=500)
        legs = serializers.ListField(child=CorrectionLegIO(), min_length=2, max_length=20)

    def get_queryset(self) -> QuerySet[CorrectionProposal]:
        return _corrections(self)

    @extend_schema(request=InputSerializer, responses={201: CorrectionOutput})
    @idempotent("correction.propose")
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request)
        institution = own_or_field_error(_institutions(self), data["institution"], "institution")
        proposal = propose_correction(
            institution=institution,
            proposed_by=self.user,
            reason=data["reason"],
            legs=[
                CorrectionLeg(leg["account"], leg["side"], to_minor(leg["amount"])) for leg in data["legs"]
            ],
        )
        self.audit(target=proposal, institution_id=institution.pk, after={"legs": proposal.legs})
        return Response(CorrectionOutput(proposal).data, status=status.HTTP_201_CREATED)


class NoteInput(serializers.Serializer):
    note = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)


class RegulatorCorrectionApproveView(ApiView):
    """复核通过 Approve a correction proposed by another regulator: its entry is posted."""

    permission_classes = (IsRegulator,)

    @extend_schema(request=NoteInput, responses={200: CorrectionOutput})
    @idempotent("correction.approve")
    def post(self, request: Request, pk: int) -> Response:
        data = validated(NoteInput, request)
        proposal = own_or_404(_corrections(self), pk)
        proposal = approve_correction(proposal=proposal, approved_by=self.user, note=data["note"])
        self.audit(
            target=proposal,
            institution_id=proposal.institution_id,
            before={"state": CorrectionState.PROPOSED},
            after={"state": proposal.state, "entry": proposal.entry_id},
        )
        return Response(CorrectionOutput(_corrections(self).get(pk=proposal.pk)).data)


class RegulatorCorrectionRejectView(ApiView):
    """驳回 Reject a correction (its proposer may withdraw it the same way)."""

    permission_classes = (IsRegulator,)

    class InputSerializer(serializers.Serializer):
        note = serializers.CharField(max_length=500)

    @extend_schema(request=InputSerializer, responses={200: CorrectionOutput})
    @idempotent("correction.reject")
    def post(self, request: Request, pk: int) -> Response:
        data = validated(self.InputSerializer, request)
        proposal = own_or_404(_corrections(self), pk)
        proposal = reject_correction(proposal=proposal, rejected_by=self.user, note=data["note"])
        self.audit(target=proposal, institution_id=proposal.institution_id, after={"state": proposal.state})
        return Response(CorrectionOutput(_corrections(self).get(pk=proposal.pk)).data)


# --- risk alerts and the inbox ----------------------------------------------------------------------------


class AlertFilter(django_filters.FilterSet):
    state = django_filters.MultipleChoiceFilter(choices=AlertState.choices)
    level = django_filters.ChoiceFilter(choices=AlertLevel.choices)
    rule = django_filters.ChoiceFilter(choices=AlertRule.choices)
    institution = django_filters.NumberFilter(field_name="institution_id", min_value=1, max_value=MAX_ID)
    raised_after = IsoDateTimeFilter(field_name="raised_at", lookup_expr="gte")

    class Meta:
        model = RiskAlert
        fields = ["state", "level", "rule", "institution", "window", "raised_after"]


class AlertOutput(serializers.Serializer):
    id = serializers.IntegerField()
    institution = serializers.IntegerField(source="institution_id")
    institution_name = serializers.CharField(source="institution.name")
    jurisdiction = serializers.IntegerField(source="jurisdiction_id")
    rule = serializers.CharField()
    level = serializers.CharField()
    window = serializers.CharField()
    state = serializers.CharField()
    value = serializers.IntegerField(help_text="比较的数值 the compared figure, in ``unit``")
    threshold = serializers.IntegerField()
    unit = serializers.CharField(help_text="fen, count, days or percent")
    message = serializers.CharField()
    evidence = serializers.JSONField()
    policy_version = serializers.IntegerField()
    raised_at = serializers.DateTimeField()
    last_seen_at = serializers.DateTimeField()
    seen_count = serializers.IntegerField()
    escalated_at = serializers.DateTimeField(allow_null=True)
    cleared_at = serializers.DateTimeField(
        allow_null=True,
        help_text="条件消除时间：最近的扫描已不再发现该情况（预警仍待监管人员处置） when a scan first found "
        "the condition gone; the alert stays open until a regulator resolves it",
    )
    acknowledged_at = serializers.DateTimeField(allow_null=True)
    investigation_started_at = serializers.DateTimeField(allow_null=True)
    resolved_at = serializers.DateTimeField(allow_null=True)
    resolution_note = serializers.CharField()


def _alerts(view: Any) -> QuerySet[RiskAlert]:
    return RiskAlert.objects.filter(jurisdiction_id__in=view.actor.jurisdiction_ids()).select_related(
        "institution"
    )


class RegulatorAlertsView(ApiListView):
    """风险预警 Risk alerts raised by the scans in the jurisdiction (all states; filter ``state``)."""

    permission_classes = (IsRegulator,)
    serializer_class = AlertOutput
    filterset_class = AlertFilter
    ordering_fields = ["id", "raised_at", "level", "value"]
    ordering = ["-raised_at", "-id"]

    def get_queryset(self) -> QuerySet[RiskAlert]:
        return _alerts(self)


class AlertEventOutput(serializers.Serializer):
    at = serializers.DateTimeField()
    action = serializers.CharField()
    actor = serializers.CharField(source="actor.username", allow_null=True, default=None)
    note = serializers.CharField()
    details = serializers.JSONField()


class RegulatorAlertDetailView(ApiDetailView):
    """一条预警 One alert with its handling history (raised, escalated, transitions, notifications)."""

    permission_classes = (IsRegulator,)

    class OutputSerializer(AlertOutput):
        history = serializers.SerializerMethodField()

        @extend_schema_field(AlertEventOutput(many=True))
        def get_history(self, alert: RiskAlert) -> list[dict[str, Any]]:
            history = alert.events.select_related("actor").order_by("at", "pk")
            return list(AlertEventOutput(history, many=True).data)

    serializer_class = OutputSerializer

    def get_queryset(self) -> QuerySet[RiskAlert]:
        return _alerts(self)


class _AlertTransitionView(ApiView):
    permission_classes = (IsRegulator,)
    target_state = ""

    class InputSerializer(serializers.Serializer):
        note = serializers.CharField(max_length=2000, required=False, default="", allow_blank=True)

    def transition(self, request: Request, pk: int) -> Response:
        data = validated(self.InputSerializer, request)
        alert = own_or_404(_alerts(self), pk)
        before = {"state": alert.state}
        alert = transition_alert(alert=alert, to_state=self.target_state, by=self.user, note=data["note"])
        self.audit(
            target=alert, institution_id=alert.institution_id, before=before, after={"state": alert.state}
        )
        return Response(AlertOutput(alert).data)


class RegulatorAlertAcknowledgeView(_AlertTransitionView):
    """确认预警 Acknowledge an alert."""

    target_state = AlertState.ACKNOWLEDGED

    @extend_schema(request=_AlertTransitionView.InputSerializer, responses={200: AlertOutput})
    @idempotent("alert.acknowledge")
    def post(self, request: Request, pk: int) -> Response:
        return self.transition(request, pk)


class RegulatorAlertInvestigateView(_AlertTransitionView):
    """开始核查 Start investigating an alert."""

    target_state = AlertState.INVESTIGATING

    @extend_schema(request=_AlertTransitionView.InputSerializer, responses={200: AlertOutput})
    @idempotent("alert.investigate")
    def post(self, request: Request, pk: int) -> Response:
        return self.transition(request, pk)


class RegulatorAlertResolveView(_AlertTransitionView):
    """处置完毕 Resolve an alert; the note saying how it was handled is required."""

    target_state = AlertState.RESOLVED

    class InputSerializer(serializers.Serializer):
        note = serializers.CharField(max_length=2000)

    @extend_schema(request=InputSerializer, responses={200: AlertOutput})
    @idempotent("alert.resolve")
    def post(self, request: Request, pk: int) -> Response:
        return self.transition(request, pk)


class InboxOutput(serializers.Serializer):
    id = serializers.IntegerField()
    institution = serializers.IntegerField(source="institution_id", allow_null=True)
    alert = serializers.IntegerField(source="alert_id", allow_null=True)
    subject = serializers.CharField()
    body = serializers.CharField()
    created_at = serializers.DateTimeField()
    read_at = serializers.DateTimeField(allow_null=True)


def _inbox(view: Any) -> QuerySet[InboxMessage]:
    return InboxMessage.objects.filter(jurisdiction_id__in=view.actor.jurisdiction_ids())


class RegulatorInboxView(ApiListView):
    """站内信 Messages to the jurisdiction's regulators (alerts raised and escalated); ``unread=true``."""

    permission_classes = (IsRegulator,)
    serializer_class = InboxOutput
    ordering_fields = ["id", "created_at"]
    ordering = ["-created_at", "-id"]

    class InboxFilter(django_filters.FilterSet):
        unread = django_filters.BooleanFilter(field_name="read_at", lookup_expr="isnull")
        alert = django_filters.NumberFilter(field_name="alert_id", min_value=1, max_value=MAX_ID)

        class Meta:
            model = InboxMessage
            fields = ["unread", "alert"]

    filterset_class = InboxFilter

    def get_queryset(self) -> QuerySet[InboxMessage]:
        return _inbox(self)


class RegulatorInboxReadView(ApiView):
    """已读 Mark messages read (those read before keep their first reader)."""

    permission_classes = (IsRegulator,)

    class InputSerializer(serializers.Serializer):
        ids = serializers.ListField(
            child=serializers.IntegerField(min_value=1, max_value=MAX_ID), min_length=1, max_length=500
        )

    class OutputSerializer(serializers.Serializer):
        marked = serializers.IntegerField()

    @extend_schema(request=InputSerializer, responses={200: OutputSerializer})
    @idempotent("inbox.read")
    def post(self, request: Request) -> Response:
        data = validated(self.InputSerializer, request)
        wanted = set(data["ids"])
        ours = set(_inbox(self).filter(pk__in=wanted).values_list("pk", flat=True))
        if ours != wanted:
            raise Http404
        marked = mark_inbox_read(message_ids=sorted(ours), by=self.user)
        self.audit(target_type="inboxmessage", details={"ids": sorted(ours)[:50], "marked": marked})
        return Response(self.OutputSerializer({"marked": marked}).data)


# --- audit, verification ----------------------------------------------------------------------------


class AuditFilter(django_filters.FilterSet):
    action = django_filters.CharFilter(max_length=100)
    action_prefix = django_filters.CharFilter(field_name="action", lookup_expr="startswith", max_length=100)
    actor = django_filters.CharFilter(field_name="actor_username", max_length=150)
    actor_role = django_filters.CharFilter(max_length=16)
    institution = django_filters.NumberFilter(field_name="institution_id", min_value=1, max_value=MAX_ID)
    target_type = django_filters.CharFilter(max_length=50)
    target_id = django_filters.CharFilter(max_length=64)
    outcome = django_filters.ChoiceFilter(choices=AuditOutcome.choices)
    occurred_after = IsoDateTimeFilter(field_name="occurred_at", lookup_expr="gte")
    occurred_before = IsoDateTimeFilter(field_name="occurred_at", lookup_expr="lt")

    class Meta:
        model = AuditEvent
        fields = [
            "action",
            "action_prefix",
            "actor",
            "actor_role",
            "institution",
            "target_type",
            "target_id",
            "outcome",
            "occurred_after",
            "occurred_before",
        ]


class AuditOutput(serializers.Serializer):
    id = serializers.IntegerField()
    occurred_at = serializers.DateTimeField()
    actor = serializers.CharField(source="actor_username")
    actor_role = serializers.CharField()
    action = serializers.CharField()
    method = serializers.CharField()
    path = serializers.CharField()
    status_code = serializers.IntegerField(allow_null=True)
    outcome = serializers.CharField()
    target_type = serializers.CharField()
    target_id = serializers.CharField()
    institution = serializers.IntegerField(source="institution_id", allow_null=True)
    source_ip = serializers.CharField(allow_null=True)
    before = serializers.JSONField(allow_null=True)
    after = serializers.JSONField(allow_null=True)
    details = serializers.JSONField()


class RegulatorAuditView(ApiListView):
    """审计日志 The audit trail of the jurisdiction, searchable (personal data is masked)."""

    permission_classes = (IsRegulator,)
    serializer_class = AuditOutput
    filterset_class = AuditFilter
    ordering_fields = ["id", "occurred_at"]

    def get_queryset(self) -> QuerySet[AuditEvent]:
        return events_in(self.actor.jurisdiction_ids())


class RegulatorLedgerVerificationView(ApiView):
    """账本校验 Run every ledger check now: zero sums, totals, limits, holds, hash chain, checkpoints."""

    permission_classes = (IsRegulator,)

    class OutputSerializer(serializers.Serializer):
        class FindingOutput(serializers.Serializer):
            check = serializers.CharField()
            subject = serializers.CharField()
            problem = serializers.CharField()

        ok = serializers.BooleanField()
        counts = serializers.DictField(child=serializers.IntegerField())
        findings = FindingOutput(many=True)

    @extend_schema(responses={200: OutputSerializer})
    def get(self, request: Request) -> Response:
        report = verification.verify()
        payload = {"ok": report.ok, "counts": report.counts, "findings": report.findings[:100]}
        return Response(self.OutputSerializer(payload).data)
