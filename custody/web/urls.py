"""The web pages' routes (namespace ``web``), one block per role; mounted at the root by config/urls.py."""

from __future__ import annotations

from django.urls import path

from custody.web import account, demo, institutions, parents, regulators

app_name = "web"

urlpatterns = [
    path("", demo.landing, name="landing"),
    path("demo/login/", demo.demo_login, name="demo-login"),
    path("login/", account.login_view, name="login"),
    path("logout/", account.logout_view, name="logout"),
    # parents
    path("parent/", parents.home, name="parent-home"),
    path("parent/contracts/<int:pk>/", parents.contract_detail, name="parent-contract"),
    path("parent/contracts/<int:pk>/refund/", parents.refund_claim, name="parent-refund-claim"),
    path("parent/contracts/<int:pk>/cancel/", parents.contract_cancel, name="parent-contract-cancel"),
    path("parent/contracts/<int:pk>/proof/", parents.contract_proof, name="parent-proof"),
    path("parent/lessons/<int:pk>/confirm/", parents.lesson_confirm, name="parent-lesson-confirm"),
    path("parent/lessons/<int:pk>/dispute/", parents.lesson_dispute, name="parent-lesson-dispute"),
    path("parent/statement.pdf", parents.statement_pdf, name="parent-statement"),
    # institutions
    path("institution/", institutions.home, name="institution-home"),
    path("institution/courses/", institutions.courses, name="institution-courses"),
    path("institution/courses/cap/", institutions.course_cap, name="institution-course-cap"),
    path("institution/enrol/", institutions.enrol, name="institution-enrol"),
    path("institution/lessons/", institutions.lessons, name="institution-lessons"),
    path(
        "institution/lessons/<int:pk>/resolve/",
        institutions.dispute_resolve,
        name="institution-dispute-resolve",
    ),
    path("institution/refunds/", institutions.refunds, name="institution-refunds"),
    path(
        "institution/refunds/<int:pk>/answer/", institutions.refund_answer, name="institution-refund-answer"
    ),
    path("institution/payouts/", institutions.payouts, name="institution-payouts"),
    # regulators
    path("regulator/", regulators.home, name="regulator-home"),
    path("regulator/institutions/<int:pk>/", regulators.institution, name="regulator-institution"),
    path("regulator/institutions/<int:pk>/freeze/", regulators.institution_freeze, name="regulator-freeze"),
    path(
        "regulator/institutions/<int:pk>/unfreeze/",
        regulators.institution_unfreeze,
        name="regulator-unfreeze",
    ),
    path(
        "regulator/institutions/<int:pk>/closure/",
        regulators.institution_closure,
        name="regulator-closure",
    ),
    path(
        "regulator/institutions/<int:pk>/closure/progress/",
        regulators.closure_progress,
        name="regulator-closure-progress",
    ),
    path(
        "regulator/institutions/<int:pk>/closure/demo-bank/",
        regulators.demo_bank_executes,
        name="regulator-demo-bank",
    ),
    path("regulator/alerts/", regulators.alerts, name="regulator-alerts"),
    path("regulator/alerts/<int:pk>/", regulators.alert_detail, name="regulator-alert"),
    path("regulator/breaks/", regulators.breaks, name="regulator-breaks"),
    path("regulator/breaks/<int:pk>/", regulators.break_detail, name="regulator-break"),
    path("regulator/reconciliation/", regulators.reconciliation, name="regulator-reconciliation"),
    path("regulator/policy/", regulators.policy, name="regulator-policy"),
    path("regulator/checkpoint/", regulators.checkpoint, name="regulator-checkpoint"),
    path("regulator/exports/", regulators.exports, name="regulator-exports"),
    path("regulator/jobs/<str:job_id>/", regulators.job, name="regulator-job"),
    path("regulator/jobs/<str:job_id>/download/", regulators.job_download, name="regulator-job-download"),
]
