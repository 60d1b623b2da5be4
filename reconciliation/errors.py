"""Reconciliation's one error type for rule violations (a bad statement file is ``formats.StatementError``).

``ReconciliationError(rule, message, **details)``: ``rule`` is stable and machine-readable ("four_eyes",
"break_resolved", "correction_legs", …), the message is Chinese first with English beside, and the details
carry the numbers.
"""

from __future__ import annotations


class ReconciliationError(Exception):
    code = "reconciliation_rule"

    def __init__(self, rule: str, message: str, **details: object) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message
