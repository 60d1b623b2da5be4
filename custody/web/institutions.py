"""培训机构 Institutions' pages: balances, courses and prices (the cap beside the price), signing up a
student, recording one class's lessons in one form, answering refund claims and disputes,
releases and payouts.

Scoped and gated as the API's institution endpoints: staff see their own institution only; recording lessons
and resolving disputes need a teacher or the manager, answering refunds finance or the manager, courses the
manager (``custody.api.permissions``).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.contrib import messages
from django.db import transaction
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods, require_POST

from custody import rules
from custody.api.base import own_or_404
from custody.api.permissions import (
    IsInstitutionFinance,
    IsInstitutionManager,
    IsInstitutionStaff,
    IsInstitutionTeacher,
)
from custody.errors import CustodyError, RuleViolation
from custody.models import (
    ConfirmedBy,
    Contract,
    ContractState,
    Course,
    Institution,
    Lesson,
    LessonState,
    Refund,
    RefundState,
    TrainingCategory,
)
from custody.selectors.holdings import institutions_with_money, with_money
from custody.selectors.lessons import disputed_lessons
from custody.selectors.payouts import payouts_of
from custody.selectors.policy import current_policy, guidance_price_fen
from custody.services.alerts import record_charge_refusal
from custody.services.contracts import sign_contract
from custody.services.courses import publish_course
from custody.services.lessons import NewLesson, record_lessons, resolve_dispute
from custody.services.people import add_student, register_guardian
from custody.services.refunds import answer_refund
from custody.web.base import actor_of, is_htmx, may, refused, role_required, user_of
from custody.web.forms import (
    ClassLessonsForm,
    CourseForm,
    EnrolForm,
    RefundAnswerForm,
    ResolveDisputeForm,
    apply_error,
)
from custody.web.templatetags import format_yuan


def _institution_id(request: HttpRequest) -> int:
    institution_id = actor_of(request).institution_id
    assert institution_id is not None  # role_required(IsInstitutionStaff) let the request in
    return institution_id


def _institution(request: HttpRequest) -> Institution:
    return Institution.objects.select_related("jurisdiction").get(pk=_institution_id(request))


def _can(request: HttpRequest) -> dict[str, bool]:
    actor = actor_of(request)
    return {
        "teach": may(actor, IsInstitutionTeacher),
        "finance": may(actor, IsInstitutionFinance),
        "manage": may(actor, IsInstitutionManager),
    }


@role_required(IsInstitutionStaff)
def home(request: HttpRequest) -> HttpResponse:
    institution_id = _institution_id(request)
    institution: Any = (
        institutions_with_money(Institution.objects.filter(pk=institution_id))
        .select_related("jurisdiction")
        .get()
    )
    lesson_counts = dict(
        Lesson.objects.filter(
            institution_id=institution_id, state__in=(LessonState.PENDING, LessonState.DISPUTED)
        )
        .values("state")
        .order_by()
        .annotate(n=Count("pk"))
        .values_list("state", "n")
    )
    contracts = with_money(
        Contract.objects.filter(institution_id=institution_id).select_related("course", "student")
    ).order_by("-signed_at", "-pk")[:30]
    return render(
        request,
        "custody/web/institutions/home.html",
        {
            "institution": institution,
            "owed_fen": institution.prepaid_fen + institution.payable_fen + institution.refund_payable_fen,
            "pending": lesson_counts.get(LessonState.PENDING, 0),
            "disputed": lesson_counts.get(LessonState.DISPUTED, 0),
            "claims": Refund.objects.filter(
                contract__institution_id=institution_id, state=RefundState.CLAIMED
            ).count(),
            "contracts": contracts,
            "can": _can(request),
        },
    )


# --- courses ----------------------------------------------------------------------------------------------


def _cap_text(institution: Institution, category: str, band: str, mode: str) -> str:
    """What the price may be at most for this band and mode (学科类: guidance price + markup)."""
    policy = current_policy(institution.jurisdiction)
    if category == TrainingCategory.NON_SUBJECT:
        return _("非学科类不设课时单价上限；单次收费不超过 %(cap)s") % {
            "cap": format_yuan(policy.non_subject_max_charge_fen)
        }
    guidance = guidance_price_fen(policy, class_size_band=band, mode=mode)
    if guidance is None:
        return _("该班型与授课方式没有政府指导价，不能开设学科类课程")
    cap = rules.guidance_cap_fen(guidance, policy.guidance_markup_percent)
    return _("上限 %(cap)s / 课时（政府指导价 %(guidance)s 上浮不超过 %(markup)s%%）") % {
        "cap": format_yuan(cap),
        "guidance": format_yuan(guidance),
        "markup": policy.guidance_markup_percent,
    }


@role_required(IsInstitutionStaff)
def course_cap(request: HttpRequest) -> HttpResponse:
    """The cap beside the price field, for the band and mode chosen (an htmx fragment)."""
    institution = _institution(request)
    category = request.GET.get("category") or institution.category
    text = _cap_text(
        institution, category, request.GET.get("class_size_band", ""), request.GET.get("mode", "")
    )
    return render(request, "custody/web/institutions/_cap.html", {"cap_text": text})


@role_required(IsInstitutionStaff)
@require_http_methods(["GET", "POST"])
def courses(request: HttpRequest) -> HttpResponse:
    institution = _institution(request)
    can = _can(request)
    initial = {"category": institution.category, "starts_on": timezone.localdate() + timedelta(days=14)}
    form = CourseForm(request.POST or None, initial=initial)
    if request.method == "POST":
        if not can["manage"]:
            return refused(request, _("只有机构负责人可以发布课程。"))
        if form.is_valid():
            try:
                course = publish_course(institution=institution, **form.cleaned_data)
            except CustodyError as exc:
                apply_error(form, exc)
            else:
                messages.success(request, _("课程“%(name)s”已发布。") % {"name": course.name})
                return redirect("web:institution-courses")
    data = form.data if form.is_bound else form.initial
    cap_text = _cap_text(
        institution,
        str(data.get("category") or institution.category),
        str(data.get("class_size_band") or "small"),
        str(data.get("mode") or "offline"),
    )
    return render(
        request,
        "custody/web/institutions/courses.html",
        {
            "institution": institution,
            "courses": Course.objects.filter(institution=institution).order_by("-created_at", "-pk"),
            "form": form,
            "cap_text": cap_text,
            "can": can,
        },
    )


# --- signing up a student ---------------------------------------------------------------------------------

_GUARDIAN_FIELDS = {"name": "guardian_name", "phone": "guardian_phone", "id_number": "guardian_id_number"}
_STUDENT_FIELDS = {"name": "student_name", "id_number": "student_id_number"}


@role_required(IsInstitutionStaff)
@require_http_methods(["GET", "POST"])
def enrol(request: HttpRequest) -> HttpResponse:
    institution = _institution(request)
    can = _can(request)
    course_list = list(Course.objects.filter(institution=institution, published=True).order_by("name", "pk"))
    choices = [(c.pk, f"{c.name} · {format_yuan(c.price_per_hour_fen)}/h") for c in course_list]
    form = EnrolForm(request.POST or None, courses=choices)
    if request.method == "POST":
        if not can["manage"]:
            return refused(request, _("只有机构负责人可以为学生报名。"))
        if form.is_valid():
            contract = _sign_up(form, institution, {c.pk: c for c in course_list})
            if contract is not None:
                messages.success(
                    request,
                    _("已签订合同 %(number)s，待家长支付 %(amount)s 至托管账户。")
                    % {"number": contract.number, "amount": format_yuan(contract.amount_fen)},
                )
                return redirect("web:institution-home")
    policy = current_policy(institution.jurisdiction)
    return render(
        request,
        "custody/web/institutions/enrol.html",
        {"institution": institution, "form": form, "policy": policy, "can": can},
    )


def _sign_up(form: EnrolForm, institution: Institution, courses: dict[int, Course]) -> Contract | None:
    """Guardian, student and contract in one transaction: a refusal anywhere leaves nothing behind."""
    data = form.cleaned_data
    step = "guardian"
    try:
        with transaction.atomic():
            guardian = register_guardian(
                name=data["guardian_name"], phone=data["guardian_phone"], id_number=data["guardian_id_number"]
            )
            step = "student"
            student = add_student(
                guardian=guardian,
                name=data["student_name"],
                id_number=data["student_id_number"],
                grade=data["grade"],
            )
            step = "contract"
            return sign_contract(
                course=courses[data["course"]],
                student=student,
                paid_hours=data["paid_hours"],
                gift_hours=data["gift_hours"],
                amount=data["amount"],
                service_starts_on=data["service_starts_on"],
                service_ends_on=data["service_ends_on"],
            )
    except CustodyError as exc:
        field_map = {"guardian": _GUARDIAN_FIELDS, "student": _STUDENT_FIELDS}.get(step, {})
        apply_error(form, exc, field_map=field_map)
        if step == "contract" and isinstance(exc, RuleViolation):
            # As the API does: a charge refused by a cap counts towards the over-cap alert.
            record_charge_refusal(institution=institution, violation=exc)
        return None


# --- lessons and disputes ---------------------------------------------------------------------------------


def _class_contracts(institution_id: int, course_id: int | None) -> QuerySet[Contract]:
    if course_id is None:
        return Contract.objects.none()
    return (
        Contract.objects.filter(
            institution_id=institution_id, course_id=course_id, state=ContractState.ACTIVE
        )
        .select_related("student")
        .order_by("pk")
    )


def _student_choice(contract: Contract) -> str:
    return _("%(student)s（合同 %(number)s，剩余 %(hours)s 课时）") % {
        "student": contract.student.name,
        "number": contract.number,
        "hours": contract.remaining_hours,
    }


@role_required(IsInstitutionStaff)
@require_http_methods(["GET", "POST"])
def lessons(request: HttpRequest) -> HttpResponse:
    institution_id = _institution_id(request)
    can = _can(request)
    course_list = list(Course.objects.filter(institution_id=institution_id).order_by("name", "pk"))
    raw_course = request.POST.get("course") or request.GET.get("course") or ""
    course = next(
        (c for c in course_list if str(c.pk) == raw_course), course_list[0] if course_list else None
    )
    class_contracts = list(_class_contracts(institution_id, course.pk if course else None))
    choices = [(c.pk, _student_choice(c)) for c in class_contracts]
    initial = {
        "held_at": timezone.localtime().replace(minute=0, second=0, microsecond=0) - timedelta(hours=1),
        "hours": 1,
        "contracts": [c.pk for c in class_contracts],
        "batch": uuid.uuid4().hex,
    }
    form = ClassLessonsForm(request.POST or None, initial=initial, contracts=choices)
    if request.method == "POST":
        if not can["teach"]:
            return refused(request, _("只有教师或机构负责人可以登记课时。"))
        if form.is_valid():
            data = form.cleaned_data
            by_pk = {c.pk: c for c in class_contracts}
            new = [
                NewLesson(
                    contract=by_pk[pk],
                    held_at=data["held_at"],
                    hours=data["hours"],
                    # One key per class batch and contract: submitting the form twice records it once.
                    idempotency_key=f"i{institution_id}:web-{data['batch']}-{pk}",
                )
                for pk in data["contracts"]
            ]
            try:
                recorded = record_lessons(lessons=new, recorded_by=user_of(request))
            except CustodyError as exc:
                apply_error(
                    form, exc, field_map={"hours": "hours", "held_at": "held_at", "contract": "contracts"}
                )
            else:
                messages.success(
                    request,
                    _("已登记 %(count)s 名学生的课时，等待家长确认。") % {"count": len(recorded)},
                )
                return redirect(f"{request.path}?course={course.pk if course else ''}")
    context: dict[str, Any] = {
        "course_list": course_list,
        "course": course,
        "form": form,
        "can": can,
        "disputes": disputed_lessons(Institution(pk=institution_id)).select_related("contract__student"),
        "recent": Lesson.objects.filter(institution_id=institution_id)
        .select_related("contract__student")
        .order_by("-recorded_at", "-pk")[:20],
        "resolve_form": ResolveDisputeForm(),
    }
    if is_htmx(request) and request.method == "GET":
        return render(request, "custody/web/institutions/_class_form.html", context)
    return render(request, "custody/web/institutions/lessons.html", context)


@role_required(IsInstitutionStaff)
@require_POST
def dispute_resolve(request: HttpRequest, pk: int) -> HttpResponse:
    if not may(actor_of(request), IsInstitutionTeacher):
        return refused(request, _("只有教师或机构负责人可以处理异议。"))
    lesson = own_or_404(Lesson.objects.filter(institution_id=_institution_id(request)), pk)
    form = ResolveDisputeForm(request.POST)
    if form.is_valid():
        try:
            resolve_dispute(
                lesson=lesson,
                release=form.cleaned_data["release"],
                note=form.cleaned_data["note"],
                by=ConfirmedBy.INSTITUTION,
            )
        except CustodyError as exc:
            apply_error(form, exc)
        else:
            messages.success(request, _("异议已处理。"))
            return redirect("web:institution-lessons")
    for errors in form.errors.values():
        for error in errors:
            messages.error(request, str(error))
    return redirect("web:institution-lessons")


# --- refunds and payouts ----------------------------------------------------------------------------------


@role_required(IsInstitutionStaff)
def refunds(request: HttpRequest) -> HttpResponse:
    institution_id = _institution_id(request)
    claims = (
        Refund.objects.filter(contract__institution_id=institution_id)
        .select_related("contract__student")
        .order_by("-claimed_at", "-pk")[:100]
    )
    return render(
        request,
        "custody/web/institutions/refunds.html",
        {"refunds": claims, "answer_form": RefundAnswerForm(), "can": _can(request)},
    )


@role_required(IsInstitutionStaff)
@require_POST
def refund_answer(request: HttpRequest, pk: int) -> HttpResponse:
    if not may(actor_of(request), IsInstitutionFinance):
        return refused(request, _("只有财务或机构负责人可以答复退费。"))
    refund = own_or_404(
        Refund.objects.filter(contract__institution_id=_institution_id(request)).select_related("contract"),
        pk,
    )
    form = RefundAnswerForm(request.POST)
    if form.is_valid():
        try:
            answer_refund(
                refund=refund, approve=form.cleaned_data["approve"], reason=form.cleaned_data["reason"]
            )
        except CustodyError as exc:
            apply_error(form, exc)
        else:
            messages.success(request, _("已答复退费申请。"))
            return redirect("web:institution-refunds")
    for errors in form.errors.values():
        for error in errors:
            messages.error(request, f"#{refund.pk}: {error!s}")
    return redirect("web:institution-refunds")


@role_required(IsInstitutionStaff)
def payouts(request: HttpRequest) -> HttpResponse:
    institution = _institution(request)
    return render(
        request,
        "custody/web/institutions/payouts.html",
        {"payouts": payouts_of(institution)[:100], "institution": institution},
    )
