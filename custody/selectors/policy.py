"""Reads of the versioned policy: the version in force, the version at a past moment, and guidance prices."""

from __future__ import annotations

from datetime import datetime

from django.db.models import OuterRef, Subquery

from custody.errors import NotFound
from custody.models import GuidancePrice, Jurisdiction, Policy


def current_policy(jurisdiction: Jurisdiction) -> Policy:
    """The newest version: the one new contracts and courses are checked against."""
    policy = Policy.objects.filter(jurisdiction=jurisdiction).order_by("-version").first()
    if policy is None:
        raise _no_policy(jurisdiction)
    return policy


def _no_policy(jurisdiction: Jurisdiction) -> NotFound:
    return NotFound(
        f"{jurisdiction.code}尚无监管政策 jurisdiction {jurisdiction.code} has no policy",
        jurisdiction=jurisdiction.code,
    )


def current_policy_with_guidance(
    jurisdiction: Jurisdiction, *, class_size_band: str, mode: str
) -> tuple[Policy, int | None]:
    """``current_policy`` and, under it, ``guidance_price_fen`` for one class-size band and mode, in one
    query (signing a contract needs both)."""
    guidance = GuidancePrice.objects.filter(
        policy=OuterRef("pk"), class_size_band=class_size_band, mode=mode
    ).order_by("pk")
    policy = (
        Policy.objects.filter(jurisdiction=jurisdiction)
        .annotate(guidance_fen=Subquery(guidance.values("price_per_lesson_fen")[:1]))
        .order_by("-version")
        .first()
    )
    if policy is None:
        raise _no_policy(jurisdiction)
    return policy, policy.guidance_fen


def policy_at(jurisdiction: Jurisdiction, moment: datetime) -> Policy:
    """The version that was in force at ``moment`` (the newest one effective at or before it)."""
    policy = (
        Policy.objects.filter(jurisdiction=jurisdiction, effective_from__lte=moment)
        .order_by("-version")
        .first()
    )
    if policy is None:
        raise NotFound(
            f"{jurisdiction.code}在{moment.isoformat()}尚无监管政策 "
            f"jurisdiction {jurisdiction.code} had no policy at {moment.isoformat()}",
            jurisdiction=jurisdiction.code,
        )
    return policy


def guidance_prices(policy: Policy) -> dict[tuple[str, str], int]:
    """政府指导价 of one standard lesson in fen, by (class-size band, teaching mode)."""
    rows = GuidancePrice.objects.filter(policy=policy).values_list(
        "class_size_band", "mode", "price_per_lesson_fen"
    )
    return {(band, mode): fen for band, mode, fen in rows}


def guidance_price_fen(policy: Policy, *, class_size_band: str, mode: str) -> int | None:
    return (
        GuidancePrice.objects.filter(policy=policy, class_size_band=class_size_band, mode=mode)
        .values_list("price_per_lesson_fen", flat=True)
        .first()
    )
