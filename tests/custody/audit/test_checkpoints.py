"""The custody checkpoint: what it signs for every contract, the parent's proof, key rotation, the snapshot it
reads, and the custody-level audit that names every contract whose signed amount the ledger contradicts."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db import connection

from custody.models import Contract, ContractState, Institution, Lesson, RefundState
from custody.selectors.checkpoints import (
    contract_liability_proof,
    custody_checkpoints,
    guardian_liability_proofs,
    latest_custody_checkpoint,
)
from custody.services import checkpoints
from custody.services.checkpoints import create_custody_checkpoint, verify_checkpoint_liabilities
from custody.services.contracts import transition_contract
from custody.services.lessons import confirm_lesson
from custody.services.refunds import answer_refund, claim_refund
from ledger import verify
from ledger.models import Account, LiabilityLeaf
from tests.custody.audit.conftest import assert_invariants
from tests.custody.conftest import ContractFactory, InstitutionFactory

pytestmark = pytest.mark.django_db


def signed(checkpoint: Any) -> dict[str, Any]:
    return json.loads(checkpoint.payload)


def prepaid_fen(contract: Contract) -> int:
    account = Account.objects.get(code=f"prepaid:c{contract.pk}")
    return account.credits_posted - account.debits_posted


def verify_standalone(proof: dict[str, Any], document: dict[str, Any], public_key: str) -> verify.Report:
    report = verify.Report()
    verify.verify_liability_proof(proof, document, verify.parse_public_key(public_key), report)
    return report


@pytest.fixture
def books(
    make_contract: ContractFactory,
    make_student: Callable[..., Any],
    make_institution: InstitutionFactory,
    make_course: Callable[..., Any],
    pay: Callable[[Contract], Contract],
    record: Callable[..., list[Lesson]],
) -> dict[str, Contract]:
    """Five contracts at two institutions, one in each position a liability can be in."""
    plain = pay(make_contract())  # 1,600.00 held
    taught = pay(make_contract(student=make_student()))
    lessons = record(taught, 3)  # 3 × 80.00 recorded: still owed until confirmed
    confirm_lesson(lesson=lessons[0])  # 80.00 released to the institution
    refunding = pay(make_contract(student=make_student(), paid_hours=10))
    refund = claim_refund(contract=refunding, idempotency_key="claim-1")
    answer_refund(refund=refund, approve=True)  # 800.00 moves to refund payable, unpaid
    unpaid = make_contract(student=make_student())  # awaiting payment: owes nothing yet
    other = make_institution(name="远航教育")
    far = pay(make_contract(course=make_course(institution=other), student=make_student(), paid_hours=5))
    return {"plain": plain, "taught": taught, "refunding": refunding, "unpaid": unpaid, "far": far}


def test_the_checkpoint_signs_what_custody_owes_on_each_contract_with_a_total_per_institution(
    books: dict[str, Contract],
) -> None:
    checkpoint = create_custody_checkpoint()
    body = signed(checkpoint)
    leaves = dict(LiabilityLeaf.objects.values_list("reference", "amount"))
    assert leaves == {
        books["plain"].number: 160_000,
        books["taught"].number: 160_000 - 8_000,  # the two unconfirmed lessons are still owed
        books["refunding"].number: 80_000,  # approved, not yet paid back: still owed
        books["unpaid"].number: 0,
        books["far"].number: 40_000,
    }
    home, far = books["plain"].institution.licence_number, books["far"].institution.licence_number
    assert body["group_totals"] == {home: 160_000 + 152_000 + 80_000 + 0, far: 40_000}
    assert body["liabilities_total"] == 432_000
    assert body["liabilities_count"] == 5
    # The signed total is exactly what custody owes parents: Σ prepaid + Σ refund payable.
    assert prepaid_fen(books["refunding"]) == 0
    assert books["refunding"].refunds.get().state == RefundState.APPROVED
    audit = verify_checkpoint_liabilities(checkpoint)
    assert audit.ok, audit.findings
    assert (audit.leaves, audit.total_fen) == (5, 432_000)
    assert latest_custody_checkpoint() == checkpoint
    assert_invariants()


def test_a_parent_proves_each_contract_is_counted_with_the_public_key_alone(
    books: dict[str, Contract],
) -> None:
    checkpoint = create_custody_checkpoint()
    parent_proof = contract_liability_proof(books["taught"])
    assert parent_proof is not None
    assert (parent_proof.amount_fen, parent_proof.group_total_fen, parent_proof.total_fen) == (
        152_000,
        392_000,
        432_000,
    )
    report = verify_standalone(parent_proof.proof, parent_proof.checkpoint, parent_proof.public_key)
    assert any("is counted in" in line and "152000 fen" in line for line in report.lines), report.lines
    assert parent_proof.checkpoint_id == checkpoint.pk
    assert "python -m ledger.verify liability" in parent_proof.verify_command
    # The proof reveals the parent's own contract and only subtree sums of the others.
    assert books["plain"].number not in json.dumps(parent_proof.proof)
    assert [p.contract_number for p in guardian_liability_proofs(books["unpaid"].guardian)] == [
        books["unpaid"].number
    ]
    assert [p.amount_fen for p in guardian_liability_proofs(books["far"].guardian)] == [40_000]


def test_a_closed_contract_owing_nothing_drops_out_of_the_next_checkpoint(
    make_contract: ContractFactory, pay: Callable[[Contract], Contract]
) -> None:
    contract = make_contract()
    first = create_custody_checkpoint()
    assert contract_liability_proof(contract, checkpoint=first) is not None
    transition_contract(contract=contract, to_state=ContractState.CANCELLED)
    second = create_custody_checkpoint()
    assert signed(second)["liabilities_count"] == 0
    assert signed(second)["liabilities_total"] == 0
    assert contract_liability_proof(contract) is None
    assert verify_checkpoint_liabilities(second).ok
    assert list(custody_checkpoints()) == [second, first]


def test_old_checkpoints_still_verify_after_the_signing_key_is_rotated(
    books: dict[str, Contract], settings: Any
) -> None:
    old = create_custody_checkpoint()
    old_key_id = settings.LEDGER_SIGNING_KEY_ID
    old_public = old.public_key
    new_private = Ed25519PrivateKey.generate()
    settings.LEDGER_SIGNING_KEY = __import__("base64").b64encode(new_private.private_bytes_raw()).decode()
    settings.LEDGER_SIGNING_KEY_ID = "rotated-2"
    settings.LEDGER_VERIFY_KEYS = {old_key_id: old_public}
    new = create_custody_checkpoint()
    assert (old.key_id, new.key_id) == (old_key_id, "rotated-2")

    old_proof = contract_liability_proof(books["plain"], checkpoint=old)
    new_proof = contract_liability_proof(books["plain"], checkpoint=new)
    assert old_proof is not None and new_proof is not None
    assert old_proof.public_key == old_public != new_proof.public_key
    verify_standalone(old_proof.proof, old_proof.checkpoint, old_public)
    verify_standalone(new_proof.proof, new_proof.checkpoint, new_proof.public_key)
    with pytest.raises(verify.VerificationFailed, match="does not verify with the given public key"):
        verify_standalone(old_proof.proof, old_proof.checkpoint, new_proof.public_key)
    assert verify_checkpoint_liabilities(old).ok and verify_checkpoint_liabilities(new).ok

    settings.LEDGER_VERIFY_KEYS = {}  # the old key forgotten: its checkpoints no longer verify here
    audit = verify_checkpoint_liabilities(old)
    assert [(f.check, f.subject) for f in audit.findings] == [("signature", f"checkpoint {old.pk}")]


# --- tampering (PostgreSQL: the append-only triggers must be switched off, as an attacker would) ----------


@pytest.fixture
def tampering() -> Callable[..., Any]:
    from contextlib import contextmanager

    from django.db import transaction

    @contextmanager
    def off(*tables: str) -> Iterator[Any]:
        with transaction.atomic(), connection.cursor() as cursor:
            for table in tables:
                cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
            yield cursor
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            for table in tables:
                cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")

    return off


def ledger_findings() -> list[tuple[str, str]]:
    from ledger import verification

    return [(f.check, f.subject) for f in verification.verify().findings]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_postgres_lowering_a_held_value_after_a_checkpoint_is_named_by_every_check(
    paid_contract: Contract, tampering: Callable[..., Any]
) -> None:
    """Someone lowers a contract's prepaid credits (the materialized totals) after checkpoint 1: the next
    checkpoint signs the lower amount, and the parent's new proof shows it; the custody audit of that
    checkpoint names the contract against the postings, verify_ledger names the account."""
    contract = paid_contract
    first = create_custody_checkpoint()
    with tampering("ledger_account") as cursor:
        cursor.execute(
            "UPDATE ledger_account SET credits_posted = credits_posted - 50000 WHERE id = %s",
            [contract.prepaid_account_id],
        )
    second = create_custody_checkpoint()
    before = contract_liability_proof(contract, checkpoint=first)
    after = contract_liability_proof(contract, checkpoint=second)
    assert before is not None and after is not None
    assert (before.amount_fen, after.amount_fen) == (160_000, 110_000)  # what the parent would see

    audit = verify_checkpoint_liabilities(second)
    assert [(f.check, f.subject) for f in audit.findings] == [("ledger", f"contract {contract.number}")]
    assert "signed as owed 110000 fen" in audit.findings[0].problem
    assert "say 160000 fen" in audit.findings[0].problem
    assert verify_checkpoint_liabilities(first).ok
    assert ("totals", f"account prepaid:c{contract.pk}") in ledger_findings()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_postgres_rewriting_a_payment_sealed_before_a_checkpoint_is_named_by_every_check(
    paid_contract: Contract, tampering: Callable[..., Any]
) -> None:
    """Someone rewrites the payment entry itself (both postings, and the totals to match), so the books
    still balance: the checkpoint's signed leaf contradicts the postings, and the chain names the entry."""
    contract = paid_contract
    checkpoint = create_custody_checkpoint()
    entry_id = contract.payments.get().entry_id
    with tampering("ledger_posting", "ledger_account") as cursor:
        cursor.execute("UPDATE ledger_posting SET amount = amount / 2 WHERE entry_id = %s", [entry_id])
        cursor.execute(
            "UPDATE ledger_account SET credits_posted = credits_posted - 80000 WHERE id = %s",
            [contract.prepaid_account_id],
        )
        cursor.execute(
            "UPDATE ledger_account SET debits_posted = debits_posted - 80000 WHERE code = %s",
            [f"clearing:bank:i{contract.institution_id}"],
        )
    audit = verify_checkpoint_liabilities(checkpoint)
    assert [(f.check, f.subject) for f in audit.findings] == [("ledger", f"contract {contract.number}")]
    assert (
        "signed as owed 160000 fen" in audit.findings[0].problem
        and "say 80000 fen" in audit.findings[0].problem
    )
    chain_findings = [subject for check, subject in ledger_findings() if check == "chain"]
    assert chain_findings, "verify_ledger must name the rewritten entry's link"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_postgres_a_changed_or_deleted_leaf_breaks_the_parents_proof_and_the_standalone_verifier(
    books: dict[str, Contract], tampering: Callable[..., Any]
) -> None:
    """The cover-up: the stored leaf is edited to match a lowered balance. The proof can no longer be
    served, the exported evidence fails the standalone verifier, and the audit names the group and root."""
    from ledger import proofs

    contract = books["taught"]
    checkpoint = create_custody_checkpoint()
    LiabilityLeaf.objects.filter(reference=contract.number).update(amount=100_000)  # no trigger guards leaves
    with pytest.raises(proofs.ProofMismatch, match="does not verify"):
        contract_liability_proof(contract, checkpoint=checkpoint)
    evidence = proofs.liability_proof(contract.number, checkpoint, check=False)
    document = proofs.checkpoint_document(checkpoint, head_proof=False)
    with pytest.raises(verify.VerificationFailed, match="not the signed root"):
        verify_standalone(evidence, document, checkpoint.public_key)
    audit = verify_checkpoint_liabilities(checkpoint)
    problems = {(f.check, f.subject) for f in audit.findings}
    licence = contract.institution.licence_number
    assert ("tree", f"group {licence}") in problems
    assert ("ledger", f"contract {contract.number}") in problems

    LiabilityLeaf.objects.filter(reference=books["plain"].number).delete()
    audit = verify_checkpoint_liabilities(checkpoint)
    messages = {f.subject: f.problem for f in audit.findings if f.check == "ledger"}
    assert "missing from the signed liabilities" in messages[f"contract {books['plain'].number}"]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_postgres_the_checkpoint_reads_balances_and_the_chain_head_in_one_snapshot(
    books: dict[str, Contract],
    make_contract: ContractFactory,
    make_student: Callable[..., Any],
    pay: Callable[[Contract], Contract],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A payment commits on another connection while the checkpoint is reading balances: neither its
    balance nor its entry is in the checkpoint, so the signed leaves match the signed chain head exactly."""
    late = make_contract(student=make_student())
    original = checkpoints.contract_liabilities

    def interleaved() -> Iterator[tuple[str, str, int]]:
        rows = iter(original())  # the balances are read here, before the payment commits
        yield next(rows)
        worker = threading.Thread(target=_pay_on_another_connection, args=(pay, late.pk))
        worker.start()
        worker.join()
        yield from rows

    monkeypatch.setattr(checkpoints, "contract_liabilities", interleaved)
    checkpoint = create_custody_checkpoint()
    late_leaf = LiabilityLeaf.objects.get(tree__checkpoints__checkpoint=checkpoint, reference=late.number)
    assert late_leaf.amount == 0
    assert prepaid_fen(Contract.objects.get(pk=late.pk)) == 160_000  # committed meanwhile
    assert verify_checkpoint_liabilities(checkpoint).ok
    monkeypatch.setattr(checkpoints, "contract_liabilities", original)
    later = create_custody_checkpoint()
    late_proof = contract_liability_proof(late, checkpoint=later)
    assert late_proof is not None and late_proof.amount_fen == 160_000
    assert verify_checkpoint_liabilities(later).ok


def _pay_on_another_connection(pay: Callable[[Contract], Contract], contract_id: int) -> None:
    try:
        pay(Contract.objects.get(pk=contract_id))
    finally:
        connection.close()


def test_institutions_are_grouped_by_licence_number(make_institution: InstitutionFactory) -> None:
    institution: Institution = make_institution()
    assert checkpoints.institution_group(institution) == institution.licence_number
