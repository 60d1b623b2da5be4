"""The supervision rules checked when a contract is signed or a course is priced (DESIGN.md section 1).

Every function here is pure: it reads the values it is given (a policy version, model instances already
loaded, numbers the services computed) and raises ``RuleViolation`` naming the rule and the numbers, or
returns. The services gather the data under the right locks and call these. Each rule accepts exactly at its
limit and refuses one unit past it.

Precise definitions (the places where the texts leave room):

- **Service period** (≤ 3 months, 教监管函〔2021〕2号): a period starting on day *d* of a month may end at the
  latest on the day before day *d* of the month N months later; when that month has no day *d* (30 February),
  the period may run to the end of that month. So 2026-12-01 may end on 2027-02-28 at the latest, and
  2026-11-30 also on 2027-02-28. See ``latest_service_end``.
- **Hours per charge** (≤ 60 h "including top-ups and lesson cards"): paid hours **plus gift hours** (赠课)
  count towards the cap. Gifts have no cash value, but counting them closes the "buy 60, get 40 free" bundle
  the rule is meant to stop (Guangzhou names 加赠课时 as circumvention).
- **Anti-splitting** (拆分合同): the student's *unconsumed hours* at the institution for the subject, over all
  open contracts (awaiting payment or active), plus the new contract's paid and gift hours, stay within the
  hours cap. Unconsumed hours of a contract are ``Contract.remaining_hours``: paid + gift − consumed −
  pending (taught, awaiting confirmation) − refunded, i.e. the hours still to be taught. Also, no *existing*
  open contract may run past the latest end of a period starting today (today + N months, as above); the new
  contract's own end is bounded by the service-period and earliest-charge rules.
- **Earliest charge** (≤ 30 days before start): signing on day *t* is allowed when
  ``service_starts_on − t ≤ 30 days``.
- **Renewal** (续费, ≤ 20 h remaining): applies when the contract names the contract it renews (``renews``);
  that contract must be open, for the same student, institution and subject, with ``remaining_hours`` ≤ 20.
  A new contract without ``renews`` is still bounded by anti-splitting.
- **Price**: a contract may not charge more than the course's published price × paid hours (discounts are
  allowed; the unit price is locked at ``amount ÷ paid_hours``, released by
  ``Contract.release_for_paid_hours``).
  For subject courses the charge is also held to the guidance price + markup of the policy in force at
  signing, so a later cut of the guidance price applies to new contracts at once.
- **Training loans** (培训贷) are forbidden: the payer must be the guardian's own account. That is checked
  when the payment arrives (``custody.services.payments``), not at signing, since only the payment names the
  payer.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, timedelta

from custody.errors import RuleViolation
from custody.models import (
    Contract,
    ContractState,
    Course,
    Institution,
    InstitutionState,
    Policy,
    Student,
    TrainingCategory,
)

MAX_SERVICE_MONTHS = "max_service_months"
MAX_PAID_HOURS = "max_paid_hours"
NON_SUBJECT_MAX_CHARGE = "non_subject_max_charge"
ANTI_SPLITTING_HOURS = "anti_splitting_hours"
ANTI_SPLITTING_PERIOD = "anti_splitting_period"
EARLIEST_CHARGE = "earliest_charge"
RENEWAL_MAX_REMAINING_HOURS = "renewal_max_remaining_hours"
RENEWAL_MISMATCH = "renewal_mismatch"
RENEWAL_NOT_OPEN = "renewal_not_open"
INSTITUTION_NOT_ACTIVE = "institution_not_active"
INSTITUTION_NOT_WHITELISTED = "institution_not_whitelisted"
COURSE_NOT_PUBLISHED = "course_not_published"
POSITIVE_AMOUNT = "positive_amount"
POSITIVE_HOURS = "positive_hours"
SERVICE_PERIOD_ORDER = "service_period_order"
SERVICE_BEFORE_COURSE = "service_before_course"
SERVICE_PERIOD_OVER = "service_period_over"
LIST_PRICE = "list_price"
GUIDANCE_PRICE = "guidance_price"
GUIDANCE_PRICE_MISSING = "guidance_price_missing"

OPEN_CONTRACT_STATES = frozenset({ContractState.AWAITING_PAYMENT, ContractState.ACTIVE})


def _yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100:,}.{abs(fen) % 100:02d}"


def latest_service_end(starts_on: date, months: int) -> date:
    """The last day a service period starting on ``starts_on`` may cover under an N-month cap."""
    month_index = starts_on.month - 1 + months
    year, month = starts_on.year + month_index // 12, month_index % 12 + 1
    if year > date.max.year:  # the period may run to the last day there is
        return date.max
    if starts_on.day <= calendar.monthrange(year, month)[1]:
        return date(year, month, starts_on.day) - timedelta(days=1)
    return date(year, month, calendar.monthrange(year, month)[1])


# --- the institution and the course ---------------------------------------------------------------------


def check_institution_may_sell(institution: Institution) -> None:
    """Only an active, whitelisted (白名单) institution may publish courses or sign contracts."""
    if institution.state != InstitutionState.ACTIVE:
        raise RuleViolation(
            INSTITUTION_NOT_ACTIVE,
            f"机构状态为{institution.get_state_display()}，不能收费 "
            f"the institution is {institution.state} and may not take new business",
            field="institution",
            state=institution.state,
        )
    if not institution.whitelisted:
        raise RuleViolation(
            INSTITUTION_NOT_WHITELISTED,
            "机构不在白名单内，不能收费 the institution is not whitelisted",
            field="institution",
        )


def check_course_on_sale(course: Course) -> None:
    if not course.published:
        raise RuleViolation(
            COURSE_NOT_PUBLISHED, "课程未发布 the course is not published", field="course", course=course.pk
        )


def guidance_cap_fen(guidance_price_fen: int, markup_percent: int) -> int:
    """The highest whole-fen price allowed: floor(guidance × (100 + markup) / 100)."""
    return guidance_price_fen * (100 + markup_percent) // 100


def check_guidance_price(
    policy: Policy,
    *,
    guidance_price_fen: int | None,
    class_size_band: str,
    mode: str,
    price_per_hour_fen: int,
) -> None:
    """Subject K-9 price ≤ guidance price × (100 + markup) / 100, compared exactly: refuse when
    price × 100 > guidance × (100 + markup)."""
    if guidance_price_fen is None:
        raise RuleViolation(
            GUIDANCE_PRICE_MISSING,
            f"本地区尚未公布{class_size_band}/{mode}的政府指导价 "
            f"no guidance price is set for {class_size_band}/{mode}",
            field="class_size_band",
            policy_version=policy.version,
        )
    markup = policy.guidance_markup_percent
    if price_per_hour_fen * 100 > guidance_price_fen * (100 + markup):
        cap = guidance_cap_fen(guidance_price_fen, markup)
        raise RuleViolation(
            GUIDANCE_PRICE,
            f"学科类课时单价{_yuan(price_per_hour_fen)}元超过政府指导价上浮{markup}%的上限{_yuan(cap)}元 "
            f"a subject lesson may cost at most the guidance price + {markup} % "
            f"({_yuan(cap)} yuan), not {_yuan(price_per_hour_fen)} yuan",
            field="price_per_hour",
            limit=cap,
            requested=price_per_hour_fen,
            unit="fen",
            guidance=guidance_price_fen,
            markup_percent=markup,
            policy_version=policy.version,
        )


# --- the contract ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningRequest:
    """Everything the signing rules look at, gathered by ``sign_contract`` under its locks."""

    policy: Policy
    institution: Institution
    course: Course
    student: Student
    today: date  # Shanghai date of business time
    paid_hours: int
    gift_hours: int
    amount_fen: int
    service_starts_on: date
    service_ends_on: date
    renews: Contract | None
    guidance_price_fen: int | None  # for subject courses, under ``policy``
    # The student's other open contracts at this institution for this subject:
    open_unconsumed_hours: int
    open_latest_end: Contract | None  # the one whose service period ends last


def check_signing(request: SigningRequest) -> None:
    """Every rule of DESIGN.md section 1 that applies when a contract is signed, in a stable order."""
    check_institution_may_sell(request.institution)
    check_course_on_sale(request.course)
    check_positive(request)
    check_service_dates(request)
    check_service_period(request)
    check_hours_per_charge(request)
    check_non_subject_charge(request)
    check_contract_price(request)
    check_earliest_charge(request)
    check_renewal(request)
    check_anti_splitting(request)


def check_positive(request: SigningRequest) -> None:
    if request.amount_fen <= 0:
        raise RuleViolation(
            POSITIVE_AMOUNT,
            f"合同金额须大于0 the amount must be positive, got {_yuan(request.amount_fen)} yuan",
            field="amount",
            limit=1,
            requested=request.amount_fen,
            unit="fen",
        )
    if request.paid_hours <= 0:
        raise RuleViolation(
            POSITIVE_HOURS,
            f"购买课时须大于0 paid hours must be positive, got {request.paid_hours}",
            field="paid_hours",
            limit=1,
            requested=request.paid_hours,
            unit="hours",
        )
    if request.gift_hours < 0:
        raise RuleViolation(
            POSITIVE_HOURS,
            f"赠送课时不能为负 gift hours cannot be negative, got {request.gift_hours}",
            field="gift_hours",
            limit=0,
            requested=request.gift_hours,
            unit="hours",
        )


def check_service_dates(request: SigningRequest) -> None:
    starts, ends = request.service_starts_on, request.service_ends_on
    if ends < starts:
        raise RuleViolation(
            SERVICE_PERIOD_ORDER,
            f"服务期结束日{ends}早于开始日{starts} "
            f"the service period ends ({ends}) before it starts ({starts})",
            field="service_ends_on",
            limit=starts.isoformat(),
            requested=ends.isoformat(),
        )
    if starts < request.course.starts_on:
        raise RuleViolation(
            SERVICE_BEFORE_COURSE,
            f"服务期不能早于课程开课日{request.course.starts_on} "
            f"the service cannot start before the course does ({request.course.starts_on})",
            field="service_starts_on",
            limit=request.course.starts_on.isoformat(),
            requested=starts.isoformat(),
        )
    if ends < request.today:
        raise RuleViolation(
            SERVICE_PERIOD_OVER,
            f"服务期已于{ends}结束 the service period ended on {ends}",
            field="service_ends_on",
            limit=request.today.isoformat(),
            requested=ends.isoformat(),
        )


def check_service_period(request: SigningRequest) -> None:
    months = request.policy.max_service_months
    latest = latest_service_end(request.service_starts_on, months)
    if request.service_ends_on > latest:
        raise RuleViolation(
            MAX_SERVICE_MONTHS,
            f"一次收费的服务期不能超过{months}个月：自{request.service_starts_on}起最晚至{latest}，"
            f"不能至{request.service_ends_on} one charge may cover at most {months} months: "
            f"from {request.service_starts_on} until {latest} at the latest, not {request.service_ends_on}",
            field="service_ends_on",
            limit=latest.isoformat(),
            requested=request.service_ends_on.isoformat(),
            months=months,
            policy_version=request.policy.version,
        )


def check_hours_per_charge(request: SigningRequest) -> None:
    cap = request.policy.max_paid_hours
    hours = request.paid_hours + request.gift_hours
    if hours > cap:
        raise RuleViolation(
            MAX_PAID_HOURS,
            f"一次收费不能超过{cap}课时（含赠课），本次{hours}课时 "
            f"one charge may cover at most {cap} hours including gift hours, not {hours}",
            field="paid_hours",
            limit=cap,
            requested=hours,
            unit="hours",
            policy_version=request.policy.version,
        )


def check_non_subject_charge(request: SigningRequest) -> None:
    if request.course.category != TrainingCategory.NON_SUBJECT:
        return
    cap = request.policy.non_subject_max_charge_fen
    if request.amount_fen > cap:
        raise RuleViolation(
            NON_SUBJECT_MAX_CHARGE,
            f"非学科类一次收费不能超过{_yuan(cap)}元，本次{_yuan(request.amount_fen)}元 "
            f"one non-subject charge may be at most {_yuan(cap)} yuan, not {_yuan(request.amount_fen)}",
            field="amount",
            limit=cap,
            requested=request.amount_fen,
            unit="fen",
            policy_version=request.policy.version,
        )


def check_contract_price(request: SigningRequest) -> None:
    """Never above the published price; for subject courses never above the guidance cap in force."""
    list_total = request.course.price_per_hour_fen * request.paid_hours
    if request.amount_fen > list_total:
        raise RuleViolation(
            LIST_PRICE,
            f"合同金额{_yuan(request.amount_fen)}元高于公布价格×课时{_yuan(list_total)}元 "
            f"the amount ({_yuan(request.amount_fen)} yuan) exceeds the published price × hours "
            f"({_yuan(list_total)} yuan)",
            field="amount",
            limit=list_total,
            requested=request.amount_fen,
            unit="fen",
        )
    if request.course.category != TrainingCategory.SUBJECT:
        return
    if request.guidance_price_fen is None:
        check_guidance_price(
            request.policy,
            guidance_price_fen=None,
            class_size_band=request.course.class_size_band,
            mode=request.course.mode,
            price_per_hour_fen=request.course.price_per_hour_fen,
        )
        return
    markup = request.policy.guidance_markup_percent
    if request.amount_fen * 100 > request.guidance_price_fen * (100 + markup) * request.paid_hours:
        cap_total = request.guidance_price_fen * (100 + markup) * request.paid_hours // 100
        raise RuleViolation(
            GUIDANCE_PRICE,
            f"学科类合同金额{_yuan(request.amount_fen)}元超过政府指导价上浮{markup}%×课时的上限"
            f"{_yuan(cap_total)}元 a subject contract may cost at most the guidance price + {markup} % "
            f"per hour ({_yuan(cap_total)} yuan), not {_yuan(request.amount_fen)} yuan",
            field="amount",
            limit=cap_total,
            requested=request.amount_fen,
            unit="fen",
            guidance=request.guidance_price_fen,
            markup_percent=markup,
            policy_version=request.policy.version,
        )


def check_earliest_charge(request: SigningRequest) -> None:
    allowed = request.policy.earliest_charge_days_before_start
    days_before = (request.service_starts_on - request.today).days
    if days_before > allowed:
        raise RuleViolation(
            EARLIEST_CHARGE,
            f"开课前{allowed}天内才能收费，距开课还有{days_before}天 "
            f"a charge may be taken at most {allowed} days before the start, not {days_before}",
            field="service_starts_on",
            limit=allowed,
            requested=days_before,
            unit="days",
            policy_version=request.policy.version,
        )


def check_renewal(request: SigningRequest) -> None:
    renewed = request.renews
    if renewed is None:
        return
    if (
        renewed.student_id != request.student.pk
        or renewed.institution_id != request.institution.pk
        or renewed.subject != request.course.subject
    ):
        raise RuleViolation(
            RENEWAL_MISMATCH,
            "续费须为同一学生、同一机构、同一科目 "
            "a renewal must be for the same student, institution and subject",
            field="renews",
            contract=renewed.number,
        )
    if renewed.state not in OPEN_CONTRACT_STATES:
        raise RuleViolation(
            RENEWAL_NOT_OPEN,
            f"合同{renewed.number}已{renewed.get_state_display()}，不能续费 "
            f"contract {renewed.number} is {renewed.state} and cannot be renewed",
            field="renews",
            contract=renewed.number,
            state=renewed.state,
        )
    allowed = request.policy.renewal_max_remaining_hours
    remaining = renewed.remaining_hours
    if remaining > allowed:
        raise RuleViolation(
            RENEWAL_MAX_REMAINING_HOURS,
            f"剩余课时不超过{allowed}课时才能续费，合同{renewed.number}还剩{remaining}课时 "
            f"a renewal is allowed when at most {allowed} hours remain; {renewed.number} has {remaining}",
            field="renews",
            limit=allowed,
            requested=remaining,
            unit="hours",
            contract=renewed.number,
            policy_version=request.policy.version,
        )


def check_anti_splitting(request: SigningRequest) -> None:
    policy = request.policy
    if not policy.anti_splitting:
        return
    cap = policy.max_paid_hours
    new_hours = request.paid_hours + request.gift_hours
    total = request.open_unconsumed_hours + new_hours
    if total > cap:
        raise RuleViolation(
            ANTI_SPLITTING_HOURS,
            f"该学生在本机构{request.course.subject}科目未消课时{request.open_unconsumed_hours}加本次{new_hours}"
            f"共{total}课时，超过{cap}课时 the student's unconsumed hours for {request.course.subject} here "
            f"({request.open_unconsumed_hours}) plus this contract ({new_hours}) make {total}, over {cap}",
            field="paid_hours",
            limit=cap,
            requested=total,
            unit="hours",
            open_hours=request.open_unconsumed_hours,
            policy_version=policy.version,
        )
    last = request.open_latest_end
    if last is None:
        return
    horizon = latest_service_end(request.today, policy.max_service_months)
    if last.service_ends_on > horizon:
        raise RuleViolation(
            ANTI_SPLITTING_PERIOD,
            f"该学生在本机构{request.course.subject}科目已有合同{last.number}服务至{last.service_ends_on}，"
            f"超过自今日起{policy.max_service_months}个月（{horizon}） "
            f"an open contract ({last.number}) for {request.course.subject} here runs until "
            f"{last.service_ends_on}, more than {policy.max_service_months} months from today ({horizon})",
            field="service_ends_on",
            limit=horizon.isoformat(),
            requested=last.service_ends_on.isoformat(),
            contract=last.number,
            policy_version=policy.version,
        )
