"""Reconciliation's tables: business-day cuts, imported bank statements and their lines, matches between lines
and ledger postings, daily tie-outs, and the break queue with its append-only history."""

from reconciliation.models.breaks import (
    Break,
    BreakKind,
    BreakState,
    ReconciliationEvent,
    ResolutionKind,
)
from reconciliation.models.days import DayCut
from reconciliation.models.matches import Match, MatchEntry, MatchLine, MatchRule
from reconciliation.models.statements import BankStatement, BankStatementLine
from reconciliation.models.tieouts import TieOut, TieOutStatus

__all__ = [
    "BankStatement",
    "BankStatementLine",
    "Break",
    "BreakKind",
    "BreakState",
    "DayCut",
    "Match",
    "MatchEntry",
    "MatchLine",
    "MatchRule",
    "ReconciliationEvent",
    "ResolutionKind",
    "TieOut",
    "TieOutStatus",
]
