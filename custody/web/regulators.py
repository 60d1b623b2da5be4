"""监管部门 Regulators' pages, scoped to their jurisdiction and the ones under it: the dashboard (custody held
against what is owed per institution, flows over time, alerts by colour, reconciliation status), an
institution (freeze, closure with its progress, contracts, entries), alert handling, the break queue,
policy with its history, the latest checkpoint's verification, exports.

Gated as the API's regulator endpoints (``IsRegulator``, TOTP in this session) and scoped by
``institutions_in_scope``; every regulator request, reads included, is audited by the audit middleware.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.contrib import messages
from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods, require_POST

from custody.api.base import own_or_404
from custody.api.permissions import IsRegulator
from custody.errors import CustodyError
from custody.models import (
    AlertState,
    ClassSizeBand,
    Closure,
    ClosureState,
    Contract,
    Institution,
    Jurisdiction,
    PayoutInstruction,
    PayoutKind,
    PayoutState,
    Policy,
    Refund,
    RefundReason,
    RefundState,
    RiskAlert,
    SupervisionMode,
    TeachingMode,
)
from custody.selectors.access import institutions_in_scope
from custody.selectors.balances import custody_invariant
from custody.selectors.checkpoints import custody_checkpoints, platform_public_keys
from custody.selectors.holdings import institutions_with_money, with_money
from custody.selectors.policy import current_policy, guidance_prices
from custody.selectors.risk_alerts import UNRESOLVED, alert_history
from custody.selectors.supervision import overview
from custody.services.alerts import transition_alert
from custody.services.closures import order_closure
from custody.services.institutions import freeze_institution, unfreeze_institution
from custody.services.policy import publish_policy
from custody.web import jobs
from custody.web.base import actor_of, is_htmx, role_required, user_of
from custody.web.charts import flows_by_day
from custody.web.demo import demo_enabled
from custody.web.forms import (
    POLICY_BOOLEANS,
    POLICY_INTEGERS,
    POLICY_YUAN,
    AlertTransitionForm,
    BreakActionForm,
    ClosureForm,
    DayForm,
    ExportForm,
    PolicyForm,
    ReasonForm,
    apply_error,
)
from custody.web.templatetags import label
from ledger import verify
from ledger.models import Posting
from ledger.money import from_minor, to_minor
from reconciliation.errors import ReconciliationError
from reconciliation.models import Break, BreakState, TieOut
from reconciliation.services.breaks import assign_break, comment_on_break, resolve_break


def _scope(request: HttpRequest) -> QuerySet[Institution]:
    return institutions_in_scope(actor_of(request))


def _jurisdiction(request: HttpRequest) -> Jurisdiction:
    jurisdiction_id = actor_of(request).jurisdiction_id
    assert jurisdiction_id is not None  # role_required(IsRegulator) let the request in
    return Jurisdiction.objects.get(pk=jurisdiction_id)


# --- the dashboard ----------------------------------------------------------------------------------------


def _latest_tie_outs(institution_ids: QuerySet[Any]) -> dict[int, TieOut]:
    latest = TieOut.objects.filter(institution_id=OuterRef("institution_id")).order_by("-day", "-pk")
    rows = TieOut.objects.filter(institution_id__in=institution_ids, pk=Subquery(latest.values("pk")[:1]))
    return {t.institution_id: t for t in rows}


@role_required(IsRegulator)
def home(request: HttpRequest) -> HttpResponse:
    scope = _scope(request)
    ids = scope.values("pk")
    institutions: list[Any] = list(
        institutions_with_money(scope)
        .annotate(
            red=Count("risk_alerts", filter=Q(risk_alerts__state__in=UNRESOLVED, risk_alerts__level="red")),
            yellow=Count(
                "risk_alerts", filter=Q(risk_alerts__state__in=UNRESOLVED, risk_alerts__level="yellow")
            ),
        )
        .order_by("name")
    )
    open_breaks = dict(
        Break.objects.filter(institution_id__in=ids)
        .exclude(state=BreakState.RESOLVED)
        .values("institution_id")
        .order_by()
        .annotate(n=Count("pk"))
        .values_list("institution_id", "n")
    )
    tie_outs = _latest_tie_outs(ids)
    peak = 1
    for item in institutions:
        item.owed_fen = item.prepaid_fen + item.payable_fen + item.refund_payable_fen
        item.open_breaks = open_breaks.get(item.pk, 0)
        item.tie_out = tie_outs.get(item.pk)
        if item.supervision_mode != SupervisionMode.RISK_RESERVE:  # the only rows drawn as bars
            peak = max(peak, item.cash_fen, item.owed_fen)
    for item in institutions:
        item.cash_width = item.cash_fen * 100 // peak
        item.owed_width = item.owed_fen * 100 // peak
    chart = flows_by_day(
        ids,
        labels={"inflow": _("缴费入账"), "release": _("拨付机构"), "refund": _("退费退回")},
    )
    alerts = RiskAlert.objects.filter(institution_id__in=ids, state__in=UNRESOLVED).select_related(
        "institution"
    )
    return render(
        request,
        "custody/web/regulators/home.html",
        {
            "jurisdiction": _jurisdiction(request),
            "summary": overview(scope),
            "institutions": institutions,
            "chart": chart,
            "alerts": alerts.order_by("level", "-raised_at")[:8],
            "tie_counts": dict(
                TieOut.objects.filter(pk__in=[t.pk for t in tie_outs.values()])
                .values("status")
                .order_by()
                .annotate(n=Count("pk"))
                .values_list("status", "n")
            ),
            "open_breaks": sum(open_breaks.values()),
        },
    )


# --- one institution --------------------------------------------------------------------------------------


def _closure_context(institution: Institution) -> dict[str, Any]:
    closure = Closure.objects.filter(institution=institution).first()
    if closure is None:
        return {"closure": None}
    refunds = dict(
        Refund.objects.filter(contract__institution=institution, reason=RefundReason.CLOSURE)
        .values("state")
        .order_by()
        .annotate(n=Count("pk"))
        .values_list("state", "n")
    )
    total = sum(refunds.values())
    paid = refunds.get(RefundState.PAID, 0)
    finished = closure.state == ClosureState.COMPLETED and paid == total
    return {
        "closure": closure,
        "refunds_total": total,
        "refunds_paid": paid,
        "refunds_instructed": refunds.get(RefundState.INSTRUCTED, 0),
        "refunds_approved": refunds.get(RefundState.APPROVED, 0),
        "refunds_settled": finished,
        "bank_waiting": PayoutInstruction.objects.filter(
            institution=institution, kind=PayoutKind.REFUND, state=PayoutState.INSTRUCTED
        ).count(),
        "demo": demo_enabled(),
    }


@role_required(IsRegulator)
def institution(request: HttpRequest, pk: int) -> HttpResponse:
    found = own_or_404(institutions_with_money(_scope(request)).select_related("jurisdiction"), pk)
    context: dict[str, Any] = {
        "institution": found,
        "invariant": custody_invariant(found),
        "contracts": with_money(
            Contract.objects.filter(institution=found).select_related("course", "student")
        ).order_by("-signed_at", "-pk")[:50],
        "contract_count": Contract.objects.filter(institution=found).count(),
        "postings": Posting.objects.filter(account_id=found.cash_account_id)
        .select_related("entry")
        .order_by("-posted_at", "-id")[:30]
        if found.cash_account_id
        else [],
        "alerts": RiskAlert.objects.filter(institution=found).order_by("-raised_at")[:10],
        "reason_form": ReasonForm(auto_id="freeze_%s"),
        "closure_form": ClosureForm(auto_id="closure_%s"),
        **_closure_context(found),
    }
    return render(request, "custody/web/regulators/institution.html", context)


@role_required(IsRegulator)
def closure_progress(request: HttpRequest, pk: int) -> HttpResponse:
    found = own_or_404(_scope(request), pk)
    return render(
        request, "custody/web/regulators/_closure.html", {"institution": found, **_closure_context(found)}
    )


def _institution_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    found = own_or_404(_scope(request), pk)
    form: ReasonForm | ClosureForm = (
        ClosureForm(request.POST, auto_id="closure_%s")
        if action == "closure"
        else ReasonForm(request.POST, auto_id="freeze_%s")
    )
    if form.is_valid():
        try:
            if action == "freeze":
                freeze_institution(institution=found, reason=form.cleaned_data["reason"])
                messages.success(request, _("机构已冻结。"))
            elif action == "unfreeze":
                unfreeze_institution(institution=found, reason=form.cleaned_data["reason"])
                messages.success(request, _("机构已解冻。"))
            else:
                order_closure(
                    institution=found,
                    mode=form.cleaned_data["mode"],
                    reason=form.cleaned_data["reason"],
                    ordered_by=user_of(request),
                )
                messages.success(request, _("停办程序已启动，退费进度见下方。"))
        except CustodyError as exc:
            apply_error(form, exc)
        else:
            return redirect("web:regulator-institution", pk=found.pk)
    context = {
        "institution": institutions_with_money(_scope(request))
        .select_related("jurisdiction")
        .get(pk=found.pk),
        "invariant": custody_invariant(found),
        "contracts": [],
        "contract_count": Contract.objects.filter(institution=found).count(),
        "postings": [],
        "alerts": [],
        "reason_form": form if action != "closure" else ReasonForm(auto_id="freeze_%s"),
        "closure_form": form if action == "closure" else ClosureForm(auto_id="closure_%s"),
        "failed_action": action,
        **_closure_context(found),
    }
    return render(request, "custody/web/regulators/institution.html", context)


@role_required(IsRegulator)
@require_POST
def institution_freeze(request: HttpRequest, pk: int) -> HttpResponse:
    return _institution_action(request, pk, "freeze")


@role_required(IsRegulator)
@require_POST
def institution_unfreeze(request: HttpRequest, pk: int) -> HttpResponse:
    return _institution_action(request, pk, "unfreeze")


@role_required(IsRegulator)
@require_POST
def institution_closure(request: HttpRequest, pk: int) -> HttpResponse:
    return _institution_action(request, pk, "closure")


@role_required(IsRegulator)
@require_POST
def demo_bank_executes(request: HttpRequest, pk: int) -> HttpResponse:
    """Demo mode only: the custody bank executes the institution's refund instructions, as its signed
    result callbacks would (``record_payout_result``), so the demo's closure can be watched to its end."""
    if not demo_enabled():
        raise Http404
    from custody.services.payouts import record_payout_result

    found = own_or_404(_scope(request), pk)
    waiting = PayoutInstruction.objects.filter(
        institution=found, kind=PayoutKind.REFUND, state=PayoutState.INSTRUCTED
    ).values_list("reference", flat=True)
    for reference in list(waiting):
        record_payout_result(reference=reference, executed=True, bank_reference=f"DEMO-{reference}")
    if is_htmx(request):
        return closure_progress(request, pk)
    return redirect("web:regulator-institution", pk=found.pk)


# --- alerts -----------------------------------------------------------------------------------------------


def _alerts(request: HttpRequest) -> QuerySet[RiskAlert]:
    return RiskAlert.objects.filter(jurisdiction_id__in=actor_of(request).jurisdiction_ids()).select_related(
        "institution"
    )


@role_required(IsRegulator)
def alerts(request: HttpRequest) -> HttpResponse:
    show = request.GET.get("show", "open")
    found = _alerts(request)
    found = found.filter(state__in=UNRESOLVED) if show == "open" else found
    level = request.GET.get("level")
    if level in ("red", "yellow"):
        found = found.filter(level=level)
    return render(
        request,
        "custody/web/regulators/alerts.html",
        {"alerts": found.order_by("level", "-raised_at", "-pk")[:200], "show": show, "level": level or ""},
    )


@role_required(IsRegulator)
@require_http_methods(["GET", "POST"])
def alert_detail(request: HttpRequest, pk: int) -> HttpResponse:
    alert = own_or_404(_alerts(request), pk)
    form = AlertTransitionForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            transition_alert(
                alert=alert,
                to_state=form.cleaned_data["to_state"],
                by=user_of(request),
                note=form.cleaned_data["note"],
            )
        except CustodyError as exc:
            apply_error(form, exc, field_map={"to_state": "to_state"})
        else:
            messages.success(request, _("预警状态已更新。"))
            return redirect("web:regulator-alert", pk=alert.pk)
    return render(
        request,
        "custody/web/regulators/alert.html",
        {
            "alert": alert,
            "history": alert_history(alert),
            "form": form,
            "resolved": alert.state == AlertState.RESOLVED,
            "evidence": json.dumps(alert.evidence, ensure_ascii=False, indent=2, default=str),
        },
    )


# --- the break queue and reconciliation -------------------------------------------------------------------


def _breaks(request: HttpRequest) -> QuerySet[Break]:
    return Break.objects.filter(institution_id__in=_scope(request).values("pk")).select_related(
        "institution", "assignee"
    )


@role_required(IsRegulator)
def breaks(request: HttpRequest) -> HttpResponse:
    show = request.GET.get("show", "open")
    found = _breaks(request)
    if show == "open":
        found = found.exclude(state=BreakState.RESOLVED)
    elif show == "mine":
        found = found.filter(assignee=user_of(request)).exclude(state=BreakState.RESOLVED)
    return render(
        request,
        "custody/web/regulators/breaks.html",
        {"breaks": found.order_by("day", "pk")[:200], "show": show},
    )


@role_required(IsRegulator)
@require_http_methods(["GET", "POST"])
def break_detail(request: HttpRequest, pk: int) -> HttpResponse:
    item = own_or_404(_breaks(request), pk)
    form = BreakActionForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        action, note, user = form.cleaned_data["action"], form.cleaned_data["note"], user_of(request)
        try:
            if action == "assign":
                assign_break(item=item, assignee=user, by=user)
            elif action == "comment":
                comment_on_break(item=item, by=user, note=note)
            else:
                resolve_break(item=item, by=user, resolution=note)
        except (CustodyError, ReconciliationError) as exc:
            apply_error(form, exc)
        else:
            messages.success(request, _("已记录。"))
            return redirect("web:regulator-break", pk=item.pk)
    return render(
        request,
        "custody/web/regulators/break.html",
        {
            "item": item,
            "events": item.events.select_related("actor").order_by("at", "pk"),
            "form": form,
            "details": json.dumps(item.details, ensure_ascii=False, indent=2, default=str),
        },
    )


@role_required(IsRegulator)
@require_http_methods(["GET", "POST"])
def reconciliation(request: HttpRequest) -> HttpResponse:
    ids = _scope(request).values("pk")
    form = DayForm(request.POST or None, initial={"day": _yesterday()})
    if request.method == "POST" and form.is_valid():
        job = jobs.start_job(
            kind="reconcile",
            user_id=user_of(request).pk,
            jurisdiction_id=_jurisdiction(request).pk,
            params={"day": form.cleaned_data["day"].isoformat()},
        )
        return redirect("web:regulator-job", job_id=job["id"])
    recent = (
        TieOut.objects.filter(institution_id__in=ids)
        .select_related("institution")
        .order_by("-day", "institution__name")
    )
    return render(
        request,
        "custody/web/regulators/reconciliation.html",
        {
            "form": form,
            "tie_outs": recent[:60],
            "open_breaks": _breaks(request).exclude(state=BreakState.RESOLVED).count(),
        },
    )


def _yesterday() -> Any:
    from custody.services.calendar import local_today

    return local_today() - timedelta(days=1)


# --- policy -----------------------------------------------------------------------------------------------

_BANDS = [
    (band, mode, f"{label(band_label)} · {label(mode_label)}")
    for band, band_label in ClassSizeBand.choices
    for mode, mode_label in TeachingMode.choices
]


def _policy_initial(policy: Policy) -> dict[str, Any]:
    initial: dict[str, Any] = {name: getattr(policy, name) for name in (*POLICY_INTEGERS, *POLICY_BOOLEANS)}
    initial.update({name: from_minor(getattr(policy, name), "CNY").amount for name in POLICY_YUAN})
    initial["release_cadence"] = policy.release_cadence
    for (band, mode), fen in guidance_prices(policy).items():
        initial[f"guidance__{band}__{mode}"] = from_minor(fen, "CNY").amount
    return initial


def _policy_changes(form: PolicyForm, policy: Policy) -> tuple[dict[str, Any], dict[tuple[str, str], int]]:
    data = form.cleaned_data
    changes: dict[str, Any] = {}
    for name in (*POLICY_INTEGERS, *POLICY_BOOLEANS, "release_cadence"):
        if data[name] != getattr(policy, name):
            changes[name] = data[name]
    for name in POLICY_YUAN:
        fen = to_minor(data[name])
        if fen != getattr(policy, name):
            changes[name] = fen
    current = guidance_prices(policy)
    prices = {}
    for band, mode, _text in _BANDS:
        fen = to_minor(data[f"guidance__{band}__{mode}"])
        if current.get((band, mode)) != fen:
            prices[(band, mode)] = fen
    return changes, prices


@role_required(IsRegulator)
@require_http_methods(["GET", "POST"])
def policy(request: HttpRequest) -> HttpResponse:
    jurisdiction = _jurisdiction(request)
    current = current_policy(jurisdiction)
    form = PolicyForm(request.POST or None, initial=_policy_initial(current), bands=_BANDS)
    if request.method == "POST" and form.is_valid():
        changes, prices = _policy_changes(form, current)
        try:
            published = publish_policy(
                jurisdiction=jurisdiction,
                changes=changes,
                changed_by=user_of(request),
                note=form.cleaned_data["note"],
                guidance_prices=prices,
            )
        except CustodyError as exc:
            field_map = {name: name for name in form.fields}
            field_map.update({"changes": "note", "guidance_prices": "note"})
            apply_error(form, exc, field_map=field_map)
        else:
            messages.success(request, _("已发布第 %(version)s 版政策。") % {"version": published.version})
            return redirect("web:regulator-policy")
    versions = list(
        Policy.objects.filter(jurisdiction=jurisdiction)
        .select_related("created_by")
        .order_by("-version")[:20]
    )
    history = []
    for newer, older in zip(versions, [*versions[1:], None], strict=False):
        changed = []
        if older is not None:
            for name in (*POLICY_INTEGERS, *POLICY_YUAN, *POLICY_BOOLEANS, "release_cadence"):
                if getattr(newer, name) != getattr(older, name):
                    changed.append((name, getattr(older, name), getattr(newer, name)))
        history.append({"policy": newer, "changed": changed})
    labels = {**POLICY_INTEGERS, **POLICY_YUAN, **POLICY_BOOLEANS, "release_cadence": _("拨付周期")}
    return render(
        request,
        "custody/web/regulators/policy.html",
        {
            "jurisdiction": jurisdiction,
            "policy": current,
            "form": form,
            "history": history,
            "labels": labels,
            "yuan_fields": list(POLICY_YUAN),
        },
    )


# --- the latest checkpoint and exports --------------------------------------------------------------------


def _checkpoint_check(checkpoint: Any) -> dict[str, Any]:
    """Check the checkpoint's signature and what it signed with the platform's key, as ``ledger.verify``
    does on a regulator's own machine."""
    report = verify.Report()
    key_hex = platform_public_keys().get(checkpoint.key_id)
    try:
        if key_hex is None:
            raise verify.VerificationFailed("未知的签名密钥", f"unknown signing key {checkpoint.key_id}")
        body = verify.verify_checkpoint(
            {"payload": checkpoint.payload, "signature": checkpoint.signature, "key_id": checkpoint.key_id},
            verify.parse_public_key(key_hex),
            report,
        )
    except (verify.VerificationFailed, verify.BadInput) as exc:
        return {"ok": False, "lines": report.lines, "error": str(exc), "body": {}}
    return {"ok": True, "lines": report.lines, "error": "", "body": body}


@role_required(IsRegulator)
@require_http_methods(["GET", "POST"])
def checkpoint(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        job = jobs.start_job(
            kind="verify", user_id=user_of(request).pk, jurisdiction_id=_jurisdiction(request).pk, params={}
        )
        return redirect("web:regulator-job", job_id=job["id"])
    recent = list(custody_checkpoints()[:10])
    latest = recent[0] if recent else None
    return render(
        request,
        "custody/web/regulators/checkpoint.html",
        {"latest": latest, "check": _checkpoint_check(latest) if latest else None, "recent": recent},
    )


@role_required(IsRegulator)
@require_http_methods(["GET", "POST"])
def exports(request: HttpRequest) -> HttpResponse:
    choices = [(i.pk, i.name) for i in _scope(request).order_by("name")]
    form = ExportForm(request.POST or None, institutions=choices, initial={"day": _yesterday()})
    if request.method == "POST" and form.is_valid():
        job = jobs.start_job(
            kind="export",
            user_id=user_of(request).pk,
            jurisdiction_id=_jurisdiction(request).pk,
            params={
                "day": form.cleaned_data["day"].isoformat(),
                "institution": form.cleaned_data["institution"],
            },
        )
        return redirect("web:regulator-job", job_id=job["id"])
    return render(request, "custody/web/regulators/exports.html", {"form": form})


def _own_job(request: HttpRequest, job_id: str) -> dict[str, Any]:
    try:
        job = jobs.read_job(job_id)
    except ValueError:
        job = None
    if job is None or job["user_id"] != user_of(request).pk:
        raise Http404
    return job


@role_required(IsRegulator)
def job(request: HttpRequest, job_id: str) -> HttpResponse:
    found = _own_job(request, job_id)
    template = "custody/web/regulators/_job.html" if is_htmx(request) else "custody/web/regulators/job.html"
    return render(request, template, {"job": found, "finished": found["state"] in ("done", "failed")})


@role_required(IsRegulator)
def job_download(request: HttpRequest, job_id: str) -> HttpResponseBase:
    found = _own_job(request, job_id)
    path = jobs.artefact_path(found["id"])
    if found["kind"] != "export" or found["state"] != "done" or not path.exists():
        raise Http404
    name = f"export-{found['params']['day']}.zip"
    return FileResponse(path.open("rb"), as_attachment=True, filename=name, content_type="application/zip")
