"""The custody domain's invariants (DESIGN.md section 6: 3, 4, 6, 7 and 10), checked from the rows themselves:
``python manage.py verify_custody``. The ledger's own invariants (1, 2, 5, 8) are ``verify_ledger``'s
(``ledger.verification``), which knows nothing of contracts; ``verify_custody --ledger`` runs both.

Like the ledger's checks, these assume nothing the services wrote is true: each one recomputes from payments,
lessons, refunds and the ledger's accounts with set-based SQL (per institution, per contract in id ranges, per
group of open contracts) and reports every institution or contract that disagrees, by name:

- ``custody_balance`` (3): ``custody_cash:i`` (``institution_held:i`` in risk-reserve mode) + money
  confirmed by a channel and not yet settled = Σ ``prepaid:c`` + ``payable:i`` + Σ ``refund_payable:c``,
  posted balances;
- ``contract_position`` (4): paid (Σ payments) = released (Σ confirmed lessons) + refunded (Σ approved
  refunds) + ``prepaid:c`` posted (held by unconfirmed lessons + still prepaid); and the holds on
  ``prepaid:c`` are exactly the unconfirmed lessons' amounts;
- ``contract_hours`` (6): released + pending + refunded paid hours ≤ paid hours, and the contract's hour
  counters agree with its lessons and refunds;
- ``open_caps`` (7): no open contract (awaiting payment or active) breaks the hours or non-subject amount cap
  or the service-period cap of the policy version it was signed under, and no student's open contracts for
  one subject at one institution hold more unconsumed hours than the cap (anti-splitting);
- ``closure_refunds`` (10): after a completed closure every ``prepaid:c`` of the institution is zero and no
  contract is still active; no contract has more than one closure refund; a closure's ``refunded_fen`` is the
  sum of its refunds; a contract closed as refunded has a refund.

Settled-but-unmatched bank movements (invariant 3's "+ ...") are reconciliation's to explain: this compares
the ledger with the domain, reconciliation compares the ledger with the bank.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from django.db import connection

from custody.models import Contract, Institution
from custody.rules import latest_service_end
from ledger.verification import Finding, Progress, Report, run_stages

MAX_FINDINGS_PER_QUERY = 1000
CONTRACT_CHUNK = 50_000  # contracts per set-based pass of invariants 4 and 6

# Posted balances on each account's normal side.
_LIABILITY = "COALESCE({a}.credits_posted - {a}.debits_posted, 0)"
_ASSET = "COALESCE({a}.debits_posted - {a}.credits_posted, 0)"
_REFUNDED_STATES = "('approved', 'instructed', 'paid')"
_UNCONFIRMED_STATES = "('pending', 'disputed')"
_OPEN_CONTRACT_STATES = "('awaiting_payment', 'active')"


def _rows(sql: str, params: list[int | str] | None = None) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])
        return cursor.fetchall()


def _yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100:,}.{abs(fen) % 100:02d}"


def _institution(pk: int, name: str) -> str:
    return f"institution {pk} {name}"


def _contract(pk: int, number: str) -> str:
    return f"contract {number} (id {pk})"


# --- invariant 3 --------------------------------------------------------------------------------------------


def check_custody_balance(report: Report) -> None:
    """Invariant 3, per institution, in one query that returns only the institutions that disagree."""
    cash, held = _ASSET.format(a="cash"), _ASSET.format(a="held")
    for pk, name, mode, cash_fen, clearing, prepaid, payable, refund in _rows(
        f"""
        SELECT * FROM (
            SELECT i.id, i.name, i.supervision_mode,
                   CASE WHEN i.supervision_mode = 'risk_reserve' THEN {held} ELSE {cash} END AS cash_fen,
                   COALESCE(clearing.fen, 0) AS clearing_fen,
                   COALESCE(c.prepaid_fen, 0) AS prepaid_fen,
                   {_LIABILITY.format(a="payable")} AS payable_fen,
                   COALESCE(c.refund_fen, 0) AS refund_fen
              FROM custody_institution i
              LEFT JOIN ledger_account cash ON cash.id = i.cash_account_id
              LEFT JOIN ledger_account held ON held.code = 'institution_held:i' || i.id
              LEFT JOIN ledger_account payable ON payable.id = i.payable_account_id
              LEFT JOIN (
                    SELECT ct.institution_id,
                           SUM({_LIABILITY.format(a="pa")}) AS prepaid_fen,
                           SUM({_LIABILITY.format(a="ra")}) AS refund_fen
                      FROM custody_contract ct
                      LEFT JOIN ledger_account pa ON pa.id = ct.prepaid_account_id
                      LEFT JOIN ledger_account ra ON ra.id = ct.refund_account_id
                     GROUP BY ct.institution_id
              ) c ON c.institution_id = i.id
              LEFT JOIN (
                    SELECT ct.institution_id, SUM(p.amount_fen) AS fen
                      FROM custody_payment p JOIN custody_contract ct ON ct.id = p.contract_id
                     WHERE p.settlement_entry_id IS NULL
                     GROUP BY ct.institution_id
              ) clearing ON clearing.institution_id = i.id
        ) b
        WHERE b.cash_fen + b.clearing_fen <> b.prepaid_fen + b.payable_fen + b.refund_fen
        ORDER BY b.id LIMIT {MAX_FINDINGS_PER_QUERY}
        """
    ):
        assets = int(cash_fen) + int(clearing)
        liabilities = int(prepaid) + int(payable) + int(refund)
        account = "institution_held" if mode == "risk_reserve" else "custody_cash"
        report.findings.append(
            Finding(
                "custody_balance",
                _institution(pk, name),
                f"{account} {_yuan(int(cash_fen))} + unsettled {_yuan(int(clearing))} = {_yuan(assets)}, "
                f"but prepaid {_yuan(int(prepaid))} + payable {_yuan(int(payable))} + refund_payable "
                f"{_yuan(int(refund))} = {_yuan(liabilities)} (difference {_yuan(assets - liabilities)})",
            )
        )


# --- invariants 4 and 6: one set-based pass per range of contract ids -------------------------------------

_CONTRACT_SQL = f"""
SELECT * FROM (
    SELECT ct.id, ct.number, ct.paid_hours, ct.hours_consumed, ct.hours_pending, ct.paid_hours_refunded,
           COALESCE(pay.fen, 0) AS paid_fen,
           COALESCE(l.released_fen, 0) AS released_fen,
           COALESCE(r.fen, 0) AS refunded_fen,
           {_LIABILITY.format(a="pa")} AS prepaid_fen,
           COALESCE(pa.debits_pending, 0) AS holds_fen,
           COALESCE(l.unconfirmed_fen, 0) AS unconfirmed_fen,
           COALESCE(l.released_paid_hours, 0) AS released_paid_hours,
           COALESCE(l.unconfirmed_paid_hours, 0) AS unconfirmed_paid_hours,
           COALESCE(r.paid_hours, 0) AS refunded_paid_hours,
           COALESCE(l.released_hours, 0) AS released_hours,
           COALESCE(l.unconfirmed_hours, 0) AS unconfirmed_hours
      FROM custody_contract ct
      LEFT JOIN ledger_account pa ON pa.id = ct.prepaid_account_id
      LEFT JOIN (
            SELECT contract_id, SUM(amount_fen) AS fen FROM custody_payment
             WHERE contract_id > %s AND contract_id <= %s GROUP BY contract_id
      ) pay ON pay.contract_id = ct.id
      LEFT JOIN (
            SELECT contract_id,
                   SUM(CASE WHEN state = 'confirmed' THEN amount_fen ELSE 0 END) AS released_fen,
                   SUM(CASE WHEN state IN {_UNCONFIRMED_STATES} THEN amount_fen ELSE 0 END)
                       AS unconfirmed_fen,
                   SUM(CASE WHEN state = 'confirmed' THEN paid_hours ELSE 0 END) AS released_paid_hours,
                   SUM(CASE WHEN state IN {_UNCONFIRMED_STATES} THEN paid_hours ELSE 0 END)
                       AS unconfirmed_paid_hours,
                   SUM(CASE WHEN state = 'confirmed' THEN hours ELSE 0 END) AS released_hours,
                   SUM(CASE WHEN state IN {_UNCONFIRMED_STATES} THEN hours ELSE 0 END) AS unconfirmed_hours
              FROM custody_lesson
             WHERE contract_id > %s AND contract_id <= %s GROUP BY contract_id
      ) l ON l.contract_id = ct.id
      LEFT JOIN (
            SELECT contract_id, SUM(amount_fen) AS fen, SUM(paid_hours) AS paid_hours FROM custody_refund
             WHERE state IN {_REFUNDED_STATES} AND contract_id > %s AND contract_id <= %s GROUP BY contract_id
      ) r ON r.contract_id = ct.id
     WHERE ct.id > %s AND ct.id <= %s
) x
WHERE x.paid_fen <> x.released_fen + x.refunded_fen + x.prepaid_fen
   OR x.holds_fen <> x.unconfirmed_fen
   OR x.released_paid_hours + x.unconfirmed_paid_hours + x.refunded_paid_hours > x.paid_hours
   OR x.hours_consumed <> x.released_hours
   OR x.hours_pending <> x.unconfirmed_hours
   OR x.paid_hours_refunded <> x.refunded_paid_hours
ORDER BY x.id LIMIT {MAX_FINDINGS_PER_QUERY}
"""


def check_contracts(report: Report, progress: Progress | None = None) -> None:
    """Invariants 4 (``contract_position``) and 6 (``contract_hours``), ``CONTRACT_CHUNK`` contracts a
    query."""
    bounds = _rows("SELECT MIN(id), MAX(id), COUNT(*) FROM custody_contract")[0]
    if bounds[0] is None:
        return
    first, last, total = int(bounds[0]), int(bounds[1]), int(bounds[2])
    report.counts["contracts"] = total
    low = first - 1
    while low < last:
        high = low + CONTRACT_CHUNK
        for row in _rows(_CONTRACT_SQL, [low, high] * 4):
            _contract_findings(report, row)
        low = high
        if progress:
            progress("contracts", min(high, last) - first + 1, last - first + 1)


class _ContractRow(NamedTuple):
    """One contract that disagrees somewhere, as ``_CONTRACT_SQL`` returns it (fen and hours)."""

    pk: int
    number: str
    paid_hours: int
    hours_consumed: int
    hours_pending: int
    hours_refunded: int
    paid: int
    released: int
    refunded: int
    prepaid: int
    holds: int
    unconfirmed: int
    released_ph: int
    unconfirmed_ph: int
    refunded_ph: int
    released_h: int
    unconfirmed_h: int


def _contract_findings(report: Report, raw: tuple) -> None:
    row = _ContractRow(raw[0], raw[1], *(int(v) for v in raw[2:]))
    (pk, number, paid_hours, hours_consumed, hours_pending, hours_refunded) = row[:6]
    paid, released, refunded, prepaid, holds, unconfirmed = row[6:12]
    released_ph, unconfirmed_ph, refunded_ph, released_h, unconfirmed_h = row[12:]
    subject = _contract(pk, number)
    if paid != released + refunded + prepaid:
        report.findings.append(
            Finding(
                "contract_position",
                subject,
                f"paid {_yuan(paid)} ≠ released {_yuan(released)} + refunded {_yuan(refunded)} + prepaid:c "
                f"{_yuan(prepaid)} (held {_yuan(holds)} + still prepaid {_yuan(prepaid - holds)}); "
                f"difference {_yuan(paid - released - refunded - prepaid)}",
            )
        )
    if holds != unconfirmed:
        report.findings.append(
            Finding(
                "contract_position",
                subject,
                f"prepaid:c holds {_yuan(holds)} but its unconfirmed lessons are worth {_yuan(unconfirmed)}",
            )
        )
    if released_ph + unconfirmed_ph + refunded_ph > paid_hours:
        report.findings.append(
            Finding(
                "contract_hours",
                subject,
                f"released {released_ph} + pending {unconfirmed_ph} + refunded {refunded_ph} paid hours "
                f"exceed the {paid_hours} paid",
            )
        )
    for counter, value, counted, what in (
        ("hours_consumed", hours_consumed, released_h, "confirmed lessons"),
        ("hours_pending", hours_pending, unconfirmed_h, "unconfirmed lessons"),
        ("paid_hours_refunded", hours_refunded, refunded_ph, "approved refunds"),
    ):
        if value != counted:
            report.findings.append(
                Finding(
                    "contract_hours", subject, f"{counter} is {value} but its {what} hold {counted} hours"
                )
            )


# --- invariant 7 -------------------------------------------------------------------------------------------


def check_open_caps(report: Report) -> None:
    """Invariant 7, under the policy version each contract was signed under."""
    for pk, number, hours, cap, amount, category, amount_cap, version in _rows(
        f"""
        SELECT ct.id, ct.number, ct.paid_hours + ct.gift_hours, p.max_paid_hours, ct.amount_fen, co.category,
               p.non_subject_max_charge_fen, p.version
          FROM custody_contract ct
          JOIN custody_policy p ON p.id = ct.policy_id
          JOIN custody_course co ON co.id = ct.course_id
         WHERE ct.state IN {_OPEN_CONTRACT_STATES}
           AND (ct.paid_hours + ct.gift_hours > p.max_paid_hours
                OR (co.category = 'non_subject' AND ct.amount_fen > p.non_subject_max_charge_fen))
         ORDER BY ct.id LIMIT {MAX_FINDINGS_PER_QUERY}
        """
    ):
        if hours > cap:
            report.findings.append(
                Finding(
                    "open_caps",
                    _contract(pk, number),
                    f"covers {hours} hours (paid + gift), over the {cap}-hour cap of policy v{version}",
                )
            )
        if category == "non_subject" and amount > amount_cap:
            report.findings.append(
                Finding(
                    "open_caps",
                    _contract(pk, number),
                    f"charges {_yuan(int(amount))} yuan, over the non-subject cap "
                    f"{_yuan(int(amount_cap))} of policy v{version}",
                )
            )
    # The service-period cap needs calendar months (see rules.latest_service_end): the open contracts are
    # streamed once, two dates each.
    open_contracts = (
        Contract.objects.filter(state__in=("awaiting_payment", "active"))
        .order_by("pk")
        .values_list("pk", "number", "service_starts_on", "service_ends_on", "policy__max_service_months")
    )
    for pk, number, starts_on, ends_on, months in open_contracts.iterator(chunk_size=5000):
        latest = latest_service_end(starts_on, months)
        if ends_on > latest:
            report.findings.append(
                Finding(
                    "open_caps",
                    _contract(pk, number),
                    f"serves {starts_on} to {ends_on}, past {latest}, the end of a {months}-month period",
                )
            )
    # Anti-splitting: a student's unconsumed hours at one institution for one subject, over open contracts.
    for student_id, institution_id, name, subject, hours, cap, numbers in _rows(
        f"""
        SELECT ct.student_id, ct.institution_id, i.name, ct.subject,
               SUM(ct.paid_hours + ct.gift_hours - ct.hours_consumed - ct.hours_pending
                   - ct.paid_hours_refunded),
               MAX(p.max_paid_hours), COUNT(*)
          FROM custody_contract ct
          JOIN custody_policy p ON p.id = ct.policy_id
          JOIN custody_institution i ON i.id = ct.institution_id
         WHERE ct.state IN {_OPEN_CONTRACT_STATES}
         GROUP BY ct.student_id, ct.institution_id, i.name, ct.subject
        HAVING COUNT(*) > 1
           AND MIN(CASE WHEN p.anti_splitting THEN 1 ELSE 0 END) = 1
           AND SUM(ct.paid_hours + ct.gift_hours - ct.hours_consumed - ct.hours_pending
                   - ct.paid_hours_refunded) > MAX(p.max_paid_hours)
         ORDER BY ct.institution_id, ct.student_id LIMIT {MAX_FINDINGS_PER_QUERY}
        """
    ):
        report.findings.append(
            Finding(
                "open_caps",
                f"{_institution(institution_id, name)}, student {student_id}, {subject}",
                f"{numbers} open contracts hold {hours} unconsumed hours, over the {cap}-hour cap "
                "(split contracts)",
            )
        )


# --- invariant 10 ------------------------------------------------------------------------------------------


def check_closures(report: Report) -> None:
    """Invariant 10: what a closure run must leave behind."""
    for closure_id, institution_id, name, pk, number, state, prepaid in _rows(
        f"""
        SELECT cl.id, i.id, i.name, ct.id, ct.number, ct.state, {_LIABILITY.format(a="pa")}
          FROM custody_closure cl
          JOIN custody_institution i ON i.id = cl.institution_id
          JOIN custody_contract ct ON ct.institution_id = cl.institution_id
          LEFT JOIN ledger_account pa ON pa.id = ct.prepaid_account_id
         WHERE cl.state = 'completed'
           AND (ct.state = 'active' OR pa.credits_posted <> pa.debits_posted)
         ORDER BY ct.id LIMIT {MAX_FINDINGS_PER_QUERY}
        """
    ):
        report.findings.append(
            Finding(
                "closure_refunds",
                f"{_contract(pk, number)} of {_institution(institution_id, name)}",
                f"closure {closure_id} is completed but the contract is {state} with prepaid:c "
                f"{_yuan(int(prepaid))} yuan (must be zero, its value refunded)",
            )
        )
    for pk, number, institution_id, name, count in _rows(
        f"""
        SELECT ct.id, ct.number, i.id, i.name, COUNT(*)
          FROM custody_refund r
          JOIN custody_contract ct ON ct.id = r.contract_id
          JOIN custody_institution i ON i.id = ct.institution_id
         WHERE r.reason = 'closure'
         GROUP BY ct.id, ct.number, i.id, i.name
        HAVING COUNT(*) > 1
         ORDER BY ct.id LIMIT {MAX_FINDINGS_PER_QUERY}
        """
    ):
        report.findings.append(
            Finding(
                "closure_refunds",
                f"{_contract(pk, number)} of {_institution(institution_id, name)}",
                f"has {count} closure refunds; exactly one is allowed",
            )
        )
    for closure_id, institution_id, name, recorded, refunded in _rows(
        f"""
        SELECT * FROM (
            SELECT cl.id, i.id AS institution_id, i.name, cl.refunded_fen,
                   COALESCE((SELECT SUM(r.amount_fen) FROM custody_refund r
                               JOIN custody_contract ct ON ct.id = r.contract_id
                              WHERE ct.institution_id = cl.institution_id AND r.reason = 'closure'), 0)
                       AS refunds_fen
              FROM custody_closure cl JOIN custody_institution i ON i.id = cl.institution_id
        ) c
        WHERE c.refunded_fen <> c.refunds_fen
        ORDER BY c.id LIMIT {MAX_FINDINGS_PER_QUERY}
        """
    ):
        report.findings.append(
            Finding(
                "closure_refunds",
                f"closure {closure_id} of {_institution(institution_id, name)}",
                f"records {_yuan(int(recorded))} yuan refunded but its refunds sum to {_yuan(int(refunded))}",
            )
        )
    for pk, number, institution_id, name in _rows(
        f"""
        SELECT ct.id, ct.number, i.id, i.name
          FROM custody_contract ct
          JOIN custody_institution i ON i.id = ct.institution_id
         WHERE ct.state = 'refunded'
           AND NOT EXISTS (SELECT 1 FROM custody_refund r
                            WHERE r.contract_id = ct.id AND r.state IN {_REFUNDED_STATES})
         ORDER BY ct.id LIMIT {MAX_FINDINGS_PER_QUERY}
        """
    ):
        report.findings.append(
            Finding(
                "closure_refunds",
                f"{_contract(pk, number)} of {_institution(institution_id, name)}",
                "is marked refunded but has no approved refund",
            )
        )


def verify_custody(progress: Progress | None = None) -> Report:
    """Run every custody check. ``progress(stage, done, total)`` is called as they advance."""
    report = Report()
    report.counts["institutions"] = Institution.objects.count()
    stages: list[tuple[str, Callable[[Report], None]]] = [
        ("custody_balance", check_custody_balance),
        ("contracts", lambda r: check_contracts(r, progress)),
        ("open_caps", check_open_caps),
        ("closure_refunds", check_closures),
    ]
    return run_stages(report, stages, progress)
