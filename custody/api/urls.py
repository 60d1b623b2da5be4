"""``/api/v1/`` routes, one block per role. docs/api.md has the same table with what each endpoint does."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt

from custody.api.errors import error_payload
from custody.api.views import auth, bank, callbacks, institutions, parents, regulators

app_name = "api"


@csrf_exempt  # else a POST to a mistyped path is CSRF's 403 HTML page; this view changes nothing
def not_found(request: HttpRequest, *args: object, **kwargs: object) -> JsonResponse:
    """Any other path under /api/: 404 in the API's error shape, not an HTML page."""
    return JsonResponse(error_payload("not_found", "不存在的接口 no such endpoint"), status=404)


urlpatterns = [
    # auth
    path("auth/token/", auth.TokenView.as_view(), name="auth-token"),
    path("auth/token/revoke/", auth.TokenRevokeView.as_view(), name="auth-token-revoke"),
    path("me/", auth.MeView.as_view(), name="me"),
    # parents
    path("parent/institutions/", parents.ParentInstitutionsView.as_view(), name="parent-institutions"),
    path("parent/courses/", parents.ParentCoursesView.as_view(), name="parent-courses"),
    path("parent/students/", parents.ParentStudentsView.as_view(), name="parent-students"),
    path("parent/contracts/", parents.ParentContractsView.as_view(), name="parent-contracts"),
    path("parent/contracts/<int:pk>/", parents.ParentContractDetailView.as_view(), name="parent-contract"),
    path(
        "parent/contracts/<int:pk>/cancel/",
        parents.ParentContractCancelView.as_view(),
        name="parent-contract-cancel",
    ),
    path(
        "parent/contracts/<int:pk>/statement/",
        parents.ParentContractStatementView.as_view(),
        name="parent-contract-statement",
    ),
    path("parent/balance/", parents.ParentBalanceView.as_view(), name="parent-balance"),
    path("parent/lessons/", parents.ParentLessonsView.as_view(), name="parent-lessons"),
    path(
        "parent/lessons/<int:pk>/confirm/",
        parents.ParentLessonConfirmView.as_view(),
        name="parent-lesson-confirm",
    ),
    path(
        "parent/lessons/<int:pk>/dispute/",
        parents.ParentLessonDisputeView.as_view(),
        name="parent-lesson-dispute",
    ),
    path("parent/refunds/", parents.ParentRefundsView.as_view(), name="parent-refunds"),
    # institutions
    path("institution/", institutions.InstitutionProfileView.as_view(), name="institution-profile"),
    path("institution/courses/", institutions.InstitutionCoursesView.as_view(), name="institution-courses"),
    path(
        "institution/contracts/",
        institutions.InstitutionContractsView.as_view(),
        name="institution-contracts",
    ),
    path(
        "institution/contracts/<int:pk>/",
        institutions.InstitutionContractDetailView.as_view(),
        name="institution-contract",
    ),
    path("institution/lessons/", institutions.InstitutionLessonsView.as_view(), name="institution-lessons"),
    path(
        "institution/lessons/bulk/",
        institutions.InstitutionLessonBulkView.as_view(),
        name="institution-lessons-bulk",
    ),
    path(
        "institution/lessons/<int:pk>/resolve/",
        institutions.InstitutionLessonResolveView.as_view(),
        name="institution-lesson-resolve",
    ),
    path("institution/refunds/", institutions.InstitutionRefundsView.as_view(), name="institution-refunds"),
    path(
        "institution/refunds/<int:pk>/answer/",
        institutions.InstitutionRefundAnswerView.as_view(),
        name="institution-refund-answer",
    ),
    path("institution/payouts/", institutions.InstitutionPayoutsView.as_view(), name="institution-payouts"),
    # regulators
    path("regulator/overview/", regulators.RegulatorOverviewView.as_view(), name="regulator-overview"),
    path(
        "regulator/institutions/",
        regulators.RegulatorInstitutionsView.as_view(),
        name="regulator-institutions",
    ),
    path(
        "regulator/institutions/<int:pk>/",
        regulators.RegulatorInstitutionDetailView.as_view(),
        name="regulator-institution",
    ),
    path(
        "regulator/institutions/<int:pk>/freeze/",
        regulators.RegulatorFreezeView.as_view(),
        name="regulator-institution-freeze",
    ),
    path(
        "regulator/institutions/<int:pk>/unfreeze/",
        regulators.RegulatorUnfreezeView.as_view(),
        name="regulator-institution-unfreeze",
    ),
    path(
        "regulator/institutions/<int:pk>/closure/",
        regulators.RegulatorClosureOrderView.as_view(),
        name="regulator-institution-closure",
    ),
    path("regulator/closures/", regulators.RegulatorClosuresView.as_view(), name="regulator-closures"),
    path("regulator/policy/", regulators.RegulatorPolicyView.as_view(), name="regulator-policy"),
    path(
        "regulator/policy/versions/",
        regulators.RegulatorPolicyVersionsView.as_view(),
        name="regulator-policy-versions",
    ),
    path("regulator/disputes/", regulators.RegulatorDisputesView.as_view(), name="regulator-disputes"),
    path(
        "regulator/disputes/<int:pk>/resolve/",
        regulators.RegulatorDisputeResolveView.as_view(),
        name="regulator-dispute-resolve",
    ),
    path("regulator/refunds/", regulators.RegulatorRefundsView.as_view(), name="regulator-refunds"),
    path(
        "regulator/corrections/", regulators.RegulatorCorrectionsView.as_view(), name="regulator-corrections"
    ),
    path(
        "regulator/corrections/<int:pk>/approve/",
        regulators.RegulatorCorrectionApproveView.as_view(),
        name="regulator-correction-approve",
    ),
    path(
        "regulator/corrections/<int:pk>/reject/",
        regulators.RegulatorCorrectionRejectView.as_view(),
        name="regulator-correction-reject",
    ),
    path("regulator/alerts/", regulators.RegulatorAlertsView.as_view(), name="regulator-alerts"),
    path("regulator/alerts/<int:pk>/", regulators.RegulatorAlertDetailView.as_view(), name="regulator-alert"),
    path(
        "regulator/alerts/<int:pk>/acknowledge/",
        regulators.RegulatorAlertAcknowledgeView.as_view(),
        name="regulator-alert-acknowledge",
    ),
    path(
        "regulator/alerts/<int:pk>/investigate/",
        regulators.RegulatorAlertInvestigateView.as_view(),
        name="regulator-alert-investigate",
    ),
    path(
        "regulator/alerts/<int:pk>/resolve/",
        regulators.RegulatorAlertResolveView.as_view(),
        name="regulator-alert-resolve",
    ),
    path("regulator/inbox/", regulators.RegulatorInboxView.as_view(), name="regulator-inbox"),
    path("regulator/inbox/read/", regulators.RegulatorInboxReadView.as_view(), name="regulator-inbox-read"),
    path("regulator/audit/", regulators.RegulatorAuditView.as_view(), name="regulator-audit"),
    path(
        "regulator/ledger/verification/",
        regulators.RegulatorLedgerVerificationView.as_view(),
        name="regulator-ledger-verification",
    ),
    # the custody bank
    path("bank/accounts/", bank.BankAccountsView.as_view(), name="bank-accounts"),
    path("bank/payments/", bank.BankPaymentsView.as_view(), name="bank-payments"),
    path("bank/payouts/", bank.BankPayoutsView.as_view(), name="bank-payouts"),
    re_path(
        r"^bank/payouts/(?P<reference>[A-Za-z0-9]{1,40})/result/$",
        bank.BankPayoutResultView.as_view(),
        name="bank-payout-result",
    ),
    path("bank/settlements/", bank.BankSettlementView.as_view(), name="bank-settlements"),
    path("bank/statements/", bank.BankStatementsView.as_view(), name="bank-statements"),
    # signed channel callbacks: POST /api/v1/callbacks/{channel}/
    path("callbacks/bank/", callbacks.BankCallbackView.as_view(), name="callback-bank"),
    path("callbacks/wechat/", callbacks.WechatCallbackView.as_view(), name="callback-wechat"),
    path("callbacks/alipay/", callbacks.AlipayCallbackView.as_view(), name="callback-alipay"),
]
