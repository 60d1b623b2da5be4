"""Template filters of the web pages (``{% load web %}``, registered in settings ``TEMPLATES``).

- ``yuan``: integer fen → ``¥1,234.50`` (``-¥0.01`` below zero); money is never a float on the way.
- ``label``: a bilingual label or message of the domain (``"待确认 awaiting confirmation"``) → the part in
  the page's language; a label with no English part is shown whole.
- ``entry_kind``: a ledger entry's kind (``payout_release``) → its name in the page's language.
- ``local``: an aware datetime → ``2024-03-04 10:00`` in Asia/Shanghai.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any

from django import template
from django.utils import timezone, translation

register = template.Library()

# The Chinese part ends where the first run of Latin words begins ("待确认 awaiting confirmation").
_SPLIT = re.compile(r"^(?P<zh>.*?[\u3000-\u9fff\uff00-\uffef][^A-Za-z]*?)\s+(?P<en>[A-Za-z(].*)$", re.S)


def format_yuan(fen: int | None) -> str:
    if fen is None:
        return "—"
    fen = int(fen)
    sign = "-" if fen < 0 else ""
    fen = abs(fen)
    return f"{sign}¥{fen // 100:,}.{fen % 100:02d}"


@register.filter
def yuan(fen: int | None) -> str:
    return format_yuan(fen)


def split_label(text: str) -> tuple[str, str]:
    match = _SPLIT.match(text or "")
    if match is None:
        return text, text
    return match.group("zh").strip(), match.group("en").strip()


@register.filter
def label(text: Any) -> str:
    zh, en = split_label(str(text or ""))
    return en if translation.get_language() == "en" else zh


# The kinds of entry custody posts (custody/services/*: ``post_entry(kind=…)``), named as the pages name them.
ENTRY_KINDS = {
    "payment": "缴费 payment",
    "settlement": "缴费到账 settled into custody",
    "lesson": "消课 lesson",
    "payout_release": "拨付机构 release to the institution",
    "refund": "退费 refund",
    "payout_refund": "退费划款 refund paid back",
    "payout_reserve_refund": "保证金退费划款 refund paid from the reserve",
    "reserve_deposit": "缴存保证金 reserve deposit",
    "reserve_release": "退还保证金 reserve released",
    "reserve_applied": "保证金垫付退费 reserve applied to refunds",
    "correction": "调账 correction",
}


@register.filter
def entry_kind(kind: Any) -> str:
    return label(ENTRY_KINDS.get(str(kind), str(kind)))


@register.filter
def local(moment: datetime | date | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    if moment is None:
        return "—"
    if isinstance(moment, datetime):
        return timezone.localtime(moment).strftime(fmt)
    return moment.strftime("%Y-%m-%d")


@register.filter
def percent(part: int | None, whole: int | None) -> int:
    """``part`` of ``whole`` as a whole percentage, clamped to 0..100 (for progress bars)."""
    if not whole:
        return 0
    return max(0, min(100, (int(part or 0) * 100) // int(whole)))


@register.filter
def get_item(mapping: Any, key: Any) -> Any:
    """``mapping[key]``, or None (templates cannot index a dict by a variable)."""
    try:
        return mapping.get(key)
    except AttributeError:
        return None
