"""Courses and their prices (课程与收费标准).

Subject training for K-9 (学科类) is priced at most the government guidance price (政府指导价) of its
class-size band and teaching mode plus the jurisdiction's markup (10 % by default, 发改价格〔2021〕1279号);
the comparison is exact integer arithmetic on fen. Non-subject courses have no guidance cap (their charges are
capped per contract instead, see ``custody.rules``).
"""

from __future__ import annotations

from datetime import date

from django.db import transaction
from moneyed import Money

from custody import rules
from custody.errors import RuleViolation
from custody.models import ClassSizeBand, Course, Institution, TeachingMode, TrainingCategory
from custody.selectors.policy import current_policy, guidance_price_fen
from ledger.money import to_minor


def publish_course(
    *,
    institution: Institution,
    name: str,
    subject: str,
    category: str,
    class_size_band: str,
    mode: str,
    price_per_hour: Money,
    starts_on: date,
) -> Course:
    """A published course: ``price_per_hour`` is the price of one class hour (课时, one standard lesson)."""
    if not name.strip():
        raise RuleViolation("required", "课程名称不能为空 a course name is required", field="name")
    if not subject.strip():
        raise RuleViolation("required", "科目不能为空 a subject is required", field="subject")
    if category not in TrainingCategory.values:
        raise RuleViolation(
            "course_category", f"未知的培训类别 unknown training category {category!r}", field="category"
        )
    if class_size_band not in ClassSizeBand.values:
        raise RuleViolation(
            "class_size_band",
            f"未知的班型 unknown class-size band {class_size_band!r}",
            field="class_size_band",
        )
    if mode not in TeachingMode.values:
        raise RuleViolation("teaching_mode", f"未知的授课方式 unknown teaching mode {mode!r}", field="mode")
    if price_per_hour.currency.code != "CNY":
        raise RuleViolation(
            "currency",
            f"收费须以人民币计 prices are in CNY, got {price_per_hour.currency.code}",
            field="price_per_hour",
        )
    price_fen = to_minor(price_per_hour)
    if price_fen <= 0:
        raise RuleViolation(
            "positive_price",
            f"课时单价须大于0 the price per hour must be positive, got {price_fen} fen",
            field="price_per_hour",
            limit=1,
            requested=price_fen,
        )
    with transaction.atomic():
        institution = Institution.objects.select_for_update().get(pk=institution.pk)
        rules.check_institution_may_sell(institution)
        if category != institution.category:
            # Subject and non-subject training are licensed separately; a subject institution may not dodge
            # the guidance price by labelling a course non-subject.
            raise RuleViolation(
                "course_category",
                f"机构的办学类别为{institution.get_category_display()}，不能开设{category}课程 "
                f"a {institution.category} institution cannot publish a {category} course",
                field="category",
            )
        if category == TrainingCategory.SUBJECT:
            policy = current_policy(institution.jurisdiction)
            rules.check_guidance_price(
                policy,
                guidance_price_fen=guidance_price_fen(policy, class_size_band=class_size_band, mode=mode),
                class_size_band=class_size_band,
                mode=mode,
                price_per_hour_fen=price_fen,
            )
        return Course.objects.create(
            institution=institution,
            name=name.strip(),
            subject=subject.strip(),
            category=category,
            class_size_band=class_size_band,
            mode=mode,
            price_per_hour_fen=price_fen,
            starts_on=starts_on,
            published=True,
        )
