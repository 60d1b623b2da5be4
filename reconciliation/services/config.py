"""Reconciliation's tunable rules, from ``settings.RECONCILIATION`` (a dict) over these defaults."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from django.conf import settings


@dataclass(frozen=True)
class ReconciliationSettings:
    # Rule matching: a bank line's value date and a posting's business day at most this many days apart.
    date_window_days: int = 3
    # Rule matching: amounts this close (fen) may match; any difference still raises an amount_difference.
    amount_drift_fen: int = 100
    # An unmatched posting (or line) is a break once this many days passed after its business (value) day
    # without its counterpart; until then it is in transit (T+1 settlement).
    settlement_window_days: int = 1
    # How far back a statement's lines look for unmatched postings (and earlier unmatched lines are retried).
    reference_lookback_days: int = 31


def reconciliation_settings() -> ReconciliationSettings:
    overrides = getattr(settings, "RECONCILIATION", None) or {}
    known = {f.name for f in fields(ReconciliationSettings)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown RECONCILIATION settings: {sorted(unknown)}")
    return replace(ReconciliationSettings(), **overrides)
