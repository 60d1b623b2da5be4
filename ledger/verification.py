"""Everything ``verify_ledger`` checks, each check a set-based query or a streaming walk, each finding named.

The checks assume nothing the application wrote is true: they recompute from postings and entries, so a row
changed, deleted or inserted with raw SQL (triggers disabled) shows up as a finding.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from django.db import connection

from ledger import chain, merkle
from ledger.models import ChainLink, Checkpoint, Entry, UnsealedEntry

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Finding:
    check: str
    subject: str
    problem: str


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.findings


def _rows(sql: str, params: list[int | str] | None = None) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])
        return cursor.fetchall()


def check_entries_balance(report: Report) -> None:
    for entry_id, currency, total in _rows(
        "SELECT entry_id, currency, SUM(amount) FROM ledger_posting GROUP BY entry_id, currency "
        "HAVING SUM(amount) <> 0 ORDER BY entry_id LIMIT 1000"
    ):
        report.findings.append(
            Finding("zero_sum", f"entry {entry_id}", f"postings sum to {total} {currency}, not zero")
        )
    for entry_id, n in _rows(
        "SELECT e.id, COUNT(p.id) FROM ledger_entry e LEFT JOIN ledger_posting p ON p.entry_id = e.id "
        "GROUP BY e.id HAVING COUNT(p.id) < 2 ORDER BY e.id LIMIT 1000"
    ):
        report.findings.append(
            Finding("zero_sum", f"entry {entry_id}", f"has {n} postings; at least 2 needed")
        )
    # Materialized, so that PostgreSQL plans the anti-join for every posting (a hash join) rather than for
    # the first 1,000 by id (an index lookup per posting, when there is no orphan to stop at).
    for posting_id, entry_id in _rows(
        "WITH orphans AS MATERIALIZED (SELECT p.id, p.entry_id FROM ledger_posting p "
        "  LEFT JOIN ledger_entry e ON e.id = p.entry_id WHERE e.id IS NULL) "
        "SELECT id, entry_id FROM orphans ORDER BY id LIMIT 1000"
    ):
        report.findings.append(
            Finding("zero_sum", f"posting {posting_id}", f"belongs to entry {entry_id}, which does not exist")
        )
    for posting_id, code, cur, acc_cur in _rows(
        "SELECT p.id, a.code, p.currency, a.currency FROM ledger_posting p JOIN ledger_account a "
        "ON a.id = p.account_id WHERE p.currency <> a.currency LIMIT 1000"
    ):
        report.findings.append(
            Finding("currency", f"posting {posting_id}", f"is in {cur} but account {code} is in {acc_cur}")
        )


def check_materialized_totals(report: Report) -> None:
    for code, dr, cr, n, sdr, scr, sn in _rows(
        "SELECT a.code, a.debits_posted, a.credits_posted, a.posting_count, "
        "COALESCE(s.dr, 0), COALESCE(s.cr, 0), COALESCE(s.n, 0) FROM ledger_account a LEFT JOIN ("
        "  SELECT account_id, SUM(CASE WHEN amount > 0 THEN amount ELSE 0 END) AS dr, "
        "  SUM(CASE WHEN amount < 0 THEN -amount ELSE 0 END) AS cr, COUNT(*) AS n "
        "  FROM ledger_posting GROUP BY account_id) s ON s.account_id = a.id "
        "WHERE a.debits_posted <> COALESCE(s.dr, 0) OR a.credits_posted <> COALESCE(s.cr, 0) "
        "OR a.posting_count <> COALESCE(s.n, 0) ORDER BY a.id LIMIT 1000"
    ):
        report.findings.append(
            Finding(
                "totals",
                f"account {code}",
                f"stored posted debits/credits/count {dr}/{cr}/{n}, postings say {sdr}/{scr}/{sn}",
            )
        )
    for code, dp, cp, sdp, scp in _rows(
        "SELECT a.code, a.debits_pending, a.credits_pending, COALESCE(d.s, 0), COALESCE(c.s, 0) "
        "FROM ledger_account a "
        "LEFT JOIN (SELECT debit_account_id AS id, SUM(amount) AS s FROM ledger_pendingtransfer "
        "  WHERE state = 'pending' GROUP BY debit_account_id) d ON d.id = a.id "
        "LEFT JOIN (SELECT credit_account_id AS id, SUM(amount) AS s FROM ledger_pendingtransfer "
        "  WHERE state = 'pending' GROUP BY credit_account_id) c ON c.id = a.id "
        "WHERE a.debits_pending <> COALESCE(d.s, 0) OR a.credits_pending <> COALESCE(c.s, 0) "
        "ORDER BY a.id LIMIT 1000"
    ):
        report.findings.append(
            Finding("totals", f"account {code}", f"stored pending {dp}/{cp}, open holds say {sdp}/{scp}")
        )
    for code, posting_id, n in _rows(
        "SELECT code, MIN(id), COUNT(*) FROM ("
        "  SELECT p.id, a.code, p.debits_after, p.credits_after, "
        "  SUM(CASE WHEN p.amount > 0 THEN p.amount ELSE 0 END) OVER w AS dr, "
        "  SUM(CASE WHEN p.amount < 0 THEN -p.amount ELSE 0 END) OVER w AS cr "
        "  FROM ledger_posting p JOIN ledger_account a ON a.id = p.account_id "
        "  WINDOW w AS (PARTITION BY p.account_id ORDER BY p.posted_at, p.id)"
        ") t WHERE debits_after <> dr OR credits_after <> cr GROUP BY code ORDER BY code LIMIT 1000"
    ):
        report.findings.append(
            Finding(
                "running_totals",
                f"account {code}",
                f"running totals stop adding up at posting {posting_id} ({n} postings affected)",
            )
        )


def check_limits(report: Report) -> None:
    for code, dr, cr, dp, cp in _rows(
        "SELECT code, debits_posted, credits_posted, debits_pending, credits_pending FROM ledger_account "
        "WHERE (debits_must_not_exceed_credits AND debits_posted + debits_pending > credits_posted) "
        "OR (credits_must_not_exceed_debits AND credits_posted + credits_pending > debits_posted) LIMIT 1000"
    ):
        report.findings.append(
            Finding("limits", f"account {code}", f"is past its limit: posted {dr}/{cr}, pending {dp}/{cp}")
        )


def check_pending_transfers(report: Report) -> None:
    for pid, state, posted, entry_id, amount in _rows(
        "SELECT t.id, t.state, t.posted_amount, e.id, "
        "(SELECT p.amount FROM ledger_posting p "
        " WHERE p.entry_id = e.id AND p.account_id = t.debit_account_id) "
        "FROM ledger_pendingtransfer t LEFT JOIN ledger_entry e ON e.pending_transfer_id = t.id "
        "WHERE (t.state = 'posted' AND (e.id IS NULL OR t.posted_amount IS NULL)) "
        "OR (t.state <> 'posted' AND e.id IS NOT NULL) "
        "OR (t.state = 'posted' AND COALESCE((SELECT p.amount FROM ledger_posting p WHERE p.entry_id = e.id "
        "   AND p.account_id = t.debit_account_id), -1) <> t.posted_amount) "
        "ORDER BY t.id LIMIT 1000"
    ):
        report.findings.append(
            Finding(
                "pending",
                f"pending transfer {pid}",
                f"is {state} (posted {posted}) but its posting entry is {entry_id} with {amount}",
            )
        )


def check_chain(report: Report, progress: Progress | None = None) -> None:
    total = ChainLink.objects.count()
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress("chain", done, total)

    for problem in chain.walk_chain(progress=step):
        report.findings.append(Finding("chain", f"link {problem.seq}", problem.problem))
    report.counts["chain_links"] = total
    for (entry_id,) in _rows(
        "SELECT e.id FROM ledger_entry e LEFT JOIN ledger_chainlink c ON c.entry_id = e.id "
        "LEFT JOIN ledger_unsealedentry u ON u.entry_id = e.id "
        "WHERE c.entry_id IS NULL AND u.entry_id IS NULL ORDER BY e.id LIMIT 1000"
    ):
        report.findings.append(
            Finding(
                "chain", f"entry {entry_id}", "is neither in the chain nor queued for it (inserted outside)"
            )
        )
    report.counts["unsealed_entries"] = UnsealedEntry.objects.count()


def check_checkpoints(report: Report) -> None:
    trusted = chain.trusted_public_keys()
    checkpoints = list(Checkpoint.objects.order_by("id"))
    hashes = chain.link_hashes(c.chain_seq for c in checkpoints)

    for cp in checkpoints:
        subject = f"checkpoint {cp.pk}"
        public = trusted.get(cp.key_id)
        if public is None:
            report.findings.append(Finding("checkpoint", subject, f"signed with unknown key {cp.key_id}"))
        elif not chain.signature_valid(cp.payload, cp.signature, public):
            report.findings.append(Finding("checkpoint", subject, "signature does not verify"))
        try:
            body = json.loads(cp.payload)
        except ValueError:
            report.findings.append(Finding("checkpoint", subject, "signed payload is not valid JSON"))
            continue
        if body.get("chain_seq") != cp.chain_seq or body.get("chain_hash") != cp.chain_hash:
            report.findings.append(
                Finding("checkpoint", subject, "stored head differs from the signed payload")
            )
        if cp.chain_seq and hashes.get(cp.chain_seq) != body.get("chain_hash"):
            report.findings.append(
                Finding("checkpoint", subject, f"chain link {cp.chain_seq} no longer has the signed hash")
            )
    report.counts["checkpoints"] = len(checkpoints)


def check_log_roots(report: Report) -> None:
    """Each checkpoint that signed a Merkle root of the entry log (``log_size``, ``log_root``) must still
    match the chain: one streaming pass over the link hashes, comparing the root at every signed size."""
    signed: dict[int, list[tuple[int, str]]] = {}
    for cp_id, payload in Checkpoint.objects.order_by("id").values_list("id", "payload"):
        try:
            body = json.loads(payload)
        except ValueError:
            continue  # reported by check_checkpoints
        if "log_root" in body and "log_size" in body:
            signed.setdefault(int(body["log_size"]), []).append((cp_id, str(body["log_root"])))
    if not signed:
        return
    frontier = merkle.CompactRange()
    for size, cp_list in sorted(signed.items()):
        batch = [
            merkle.leaf_hash(bytes.fromhex(h))
            for h in ChainLink.objects.filter(seq__gt=frontier.size, seq__lte=size)
            .order_by("seq")
            .values_list("hash", flat=True)
            .iterator(chunk_size=10_000)
        ]
        frontier.extend(batch)
        root = frontier.root().hex() if frontier.size == size else None
        for cp_id, log_root in cp_list:
            if root != log_root:
                report.findings.append(
                    Finding(
                        "checkpoint",
                        f"checkpoint {cp_id}",
                        f"entry-log Merkle root over {size} links differs from the signed root",
                    )
                )


def verify(progress: Progress | None = None) -> Report:
    """Run every check. ``progress(stage, done, total)`` is called as the long ones advance."""
    report = Report()
    report.counts["entries"] = Entry.objects.count()
    stages: list[tuple[str, Callable[[Report], None]]] = [
        ("zero_sum", check_entries_balance),
        ("totals", check_materialized_totals),
        ("limits", check_limits),
        ("pending", check_pending_transfers),
        ("chain", lambda r: check_chain(r, progress)),
        ("checkpoints", check_checkpoints),
        ("log_roots", check_log_roots),
    ]
    return run_stages(report, stages, progress)


def run_stages(
    report: Report, stages: Sequence[tuple[str, Callable[[Report], None]]], progress: Progress | None
) -> Report:
    """Run named checks in order into ``report``; ``progress`` hears as each starts and when all are done."""
    for index, (name, run) in enumerate(stages, start=1):
        if progress:
            progress(name, index - 1, len(stages))
        run(report)
    if progress:
        progress("done", len(stages), len(stages))
    return report
