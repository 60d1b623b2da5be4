"""家长 Parents' pages: my students and contracts with what custody holds, consumed and refunded; lessons to
confirm or dispute; refund claims and how they are going; the PDF statement; the proof that the held amount
is counted in the latest signed checkpoint, verified in the browser.

Scoped exactly as the API's parent endpoints: every object is found among the parent's own guardian's, so
another family's contract or lesson is 404.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import messages
from django.db.models import Count, Prefetch, QuerySet
from django.http import FileResponse, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from custody.api.base import own_or_404
from custody.api.permissions import IsParent
from custody.errors import CustodyError
from custody.models import Contract, ContractState, Guardian, Lesson, LessonState, Refund, Student
from custody.selectors.checkpoints import contract_liability_proof, latest_custody_checkpoint
from custody.selectors.holdings import holdings_of_guardian, with_money
from custody.selectors.lessons import lessons_of
from custody.selectors.refunds import open_refund, refund_quote
from custody.services.contracts import cancel_unpaid_contract, unpaid_lapses_at
from custody.services.lessons import confirm_lesson, dispute_lesson
from custody.services.refunds import claim_refund
from custody.web.base import actor_of, is_htmx, role_required
from custody.web.forms import DisputeForm, RefundClaimForm, apply_error
from custody.web.templatetags import label
from ledger.proofs import ProofError


def _guardian_id(request: HttpRequest) -> int:
    guardian_id = actor_of(request).guardian_id
    assert guardian_id is not None  # role_required(IsParent) let the request in
    return guardian_id


def _contracts(request: HttpRequest) -> QuerySet[Contract]:
    return with_money(
        Contract.objects.filter(guardian_id=_guardian_id(request)).select_related(
            "institution", "course", "policy"
        )
    )


@role_required(IsParent)
def home(request: HttpRequest) -> HttpResponse:
    guardian_id = _guardian_id(request)
    contracts = _contracts(request).order_by("-signed_at", "-pk")
    students = list(
        Student.objects.filter(guardian_id=guardian_id)
        .order_by("pk")
        .prefetch_related(Prefetch("contracts", queryset=contracts, to_attr="contract_list"))
    )
    waiting = _pending_counts(guardian_id)
    return render(
        request,
        "custody/web/parents/home.html",
        {"holdings": holdings_of_guardian(guardian_id), "students": students, "waiting": waiting},
    )


def _pending_counts(guardian_id: int) -> dict[int, int]:
    rows = (
        Lesson.objects.filter(contract__guardian_id=guardian_id, state=LessonState.PENDING)
        .values("contract_id")
        .order_by()
        .annotate(n=Count("pk"))
    )
    return {row["contract_id"]: row["n"] for row in rows}


def _contract_context(request: HttpRequest, contract: Contract, **extra: Any) -> dict[str, Any]:
    refunds = list(Refund.objects.filter(contract=contract).order_by("-claimed_at", "-pk"))
    current = open_refund(contract)
    claimable = contract.state == ContractState.ACTIVE and current is None
    context: dict[str, Any] = {
        "contract": contract,
        "lessons": lessons_of(contract).order_by("-held_at", "-pk"),
        "refunds": refunds,
        "open_refund": current,
        "quote": refund_quote(contract) if claimable else None,
        "claim_form": RefundClaimForm(initial={"key": uuid.uuid4().hex}) if claimable else None,
        "dispute_form": DisputeForm(),
        "lapses_at": (
            unpaid_lapses_at(contract) if contract.state == ContractState.AWAITING_PAYMENT else None
        ),
    }
    context.update(extra)
    return context


@role_required(IsParent)
def contract_detail(request: HttpRequest, pk: int) -> HttpResponse:
    contract = own_or_404(_contracts(request), pk)
    return render(request, "custody/web/parents/contract.html", _contract_context(request, contract))


def _lesson(request: HttpRequest, pk: int) -> Lesson:
    lesson: Lesson = own_or_404(
        Lesson.objects.filter(contract__guardian_id=_guardian_id(request)).select_related("contract"), pk
    )
    return lesson


def _lesson_answer(
    request: HttpRequest, lesson: Lesson, *, form: DisputeForm | None = None, error: str = ""
) -> HttpResponse:
    if is_htmx(request):
        return render(
            request,
            "custody/web/parents/_lesson.html",
            {"lesson": lesson, "dispute_form": form or DisputeForm(), "error": error, "open": bool(form)},
        )
    if error:
        messages.error(request, error)
    return redirect("web:parent-contract", pk=lesson.contract_id)


@role_required(IsParent)
@require_POST
def lesson_confirm(request: HttpRequest, pk: int) -> HttpResponse:
    lesson = _lesson(request, pk)
    try:
        lesson = confirm_lesson(lesson=lesson)
    except CustodyError as exc:
        return _lesson_answer(request, Lesson.objects.get(pk=lesson.pk), error=label(exc.message))
    return _lesson_answer(request, lesson)


@role_required(IsParent)
@require_POST
def lesson_dispute(request: HttpRequest, pk: int) -> HttpResponse:
    lesson = _lesson(request, pk)
    form = DisputeForm(request.POST)
    if form.is_valid():
        try:
            lesson = dispute_lesson(lesson=lesson, reason=form.cleaned_data["reason"])
            return _lesson_answer(request, lesson)
        except CustodyError as exc:
            apply_error(form, exc)
    if not is_htmx(request):
        contract = own_or_404(_contracts(request), lesson.contract_id)
        return render(
            request,
            "custody/web/parents/contract.html",
            _contract_context(request, contract, dispute_form=form, disputing=lesson.pk),
        )
    return _lesson_answer(request, lesson, form=form)


@role_required(IsParent)
@require_POST
def refund_claim(request: HttpRequest, pk: int) -> HttpResponse:
    contract = own_or_404(_contracts(request), pk)
    form = RefundClaimForm(request.POST)
    if form.is_valid():
        try:
            claim_refund(
                contract=contract,
                note=form.cleaned_data["note"],
                idempotency_key=f"web:g{contract.guardian_id}:{form.cleaned_data['key']}",
            )
        except CustodyError as exc:
            apply_error(form, exc)
        else:
            messages.success(request, _("退费申请已提交，机构须在规定工作日内答复，逾期视为同意。"))
            return redirect("web:parent-contract", pk=contract.pk)
    context = _contract_context(request, contract, claim_form=form)
    return render(request, "custody/web/parents/contract.html", context)


@role_required(IsParent)
@require_POST
def contract_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    # The plain row: the answer is a redirect, so the money figures _contracts() adds would go unread.
    contract = own_or_404(Contract.objects.filter(guardian_id=_guardian_id(request)), pk)
    if contract.state == ContractState.CANCELLED:  # a second click of the same button
        messages.info(request, _("合同已取消。"))
        return redirect("web:parent-contract", pk=contract.pk)
    try:
        cancel_unpaid_contract(contract=contract)
    except CustodyError as exc:
        messages.error(request, label(exc.message))
    else:
        messages.success(request, _("合同已取消，没有发生任何扣款。"))
    return redirect("web:parent-contract", pk=contract.pk)


@role_required(IsParent)
def statement_pdf(request: HttpRequest) -> HttpResponseBase:
    from custody.services.exports import parent_statement_pdf

    guardian = Guardian.objects.get(pk=_guardian_id(request))
    pdf = parent_statement_pdf(guardian)
    response = FileResponse(iter([pdf]), content_type="application/pdf")
    response["Content-Disposition"] = 'attachment; filename="statement.pdf"'
    response["Content-Length"] = str(len(pdf))
    return response


@role_required(IsParent)
def contract_proof(request: HttpRequest, pk: int) -> HttpResponse:
    contract = own_or_404(_contracts(request), pk)
    checkpoint = latest_custody_checkpoint()
    proof = None
    problem = ""
    try:
        proof = contract_liability_proof(contract, checkpoint=checkpoint) if checkpoint else None
    except ProofError as exc:  # stored data no longer leads to the signed root: say so, loudly
        problem = str(exc)
    bundle = None
    if proof is not None:
        bundle = {
            "checkpoint": proof.checkpoint,
            "proof": proof.proof,
            "public_key": proof.public_key,
            "key_id": proof.key_id,
        }
    return render(
        request,
        "custody/web/parents/proof.html",
        {
            "contract": contract,
            "checkpoint": checkpoint,
            "proof": proof,
            "bundle": bundle,
            "problem": problem,
            # Owed on the contract now, as a checkpoint counts it: held + approved, unpaid refunds.
            "owed_now_fen": contract.held_fen + contract.refunded_fen - contract.refund_paid_fen,
        },
    )
