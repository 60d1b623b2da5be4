"""Reads of the published checkpoints and of each parent's proof of liabilities (负债证明), for the API and
the web pages: everything a regulator or a parent needs to run ``python -m ledger.verify`` on their own
machine with the platform's public key.

The files served here are checked before they are served (``ledger.proofs`` re-verifies every proof it
builds); a proof that no longer leads to its signed root is an error, never a response.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet

from custody.models import Contract, Guardian
from custody.services.checkpoints import institution_group
from ledger import chain, proofs
from ledger.models import Checkpoint, CheckpointProofs


def custody_checkpoints() -> QuerySet[Checkpoint]:
    """Checkpoints that signed the custody liabilities, newest first (the append-only published series)."""
    return Checkpoint.objects.filter(proofs__liability_tree__isnull=False).order_by("-id")


def latest_custody_checkpoint() -> Checkpoint | None:
    return custody_checkpoints().first()


def checkpoint_file(checkpoint: Checkpoint, *, head_proof: bool = False) -> dict[str, Any]:
    """The checkpoint as ``python -m ledger.verify checkpoint`` reads it. ``head_proof=True`` adds the path
    showing the chain head is the last leaf of the signed log tree; it reads every link hash up to the
    checkpoint (O(history)), so serve it from a cache, not per request."""
    return proofs.checkpoint_document(checkpoint, head_proof=head_proof)


def platform_public_keys() -> dict[str, str]:
    """Key id -> Ed25519 public key (hex) of every key checkpoints may be signed with, retired ones included:
    a checkpoint names its key id, so old checkpoints still verify after a rotation."""
    return chain.trusted_public_keys()


@dataclass(frozen=True)
class ContractLiabilityProof:
    """A parent's proof that one contract's owed amount is counted in its institution's signed total and in
    the signed grand total, with the checkpoint file it is checked against."""

    contract_number: str
    checkpoint_id: int
    amount_fen: int
    group: str
    group_total_fen: int
    total_fen: int
    key_id: str
    public_key: str
    checkpoint: dict[str, Any]
    proof: dict[str, Any]

    @property
    def verify_command(self) -> str:
        return (
            f"python -m ledger.verify liability proof_{self.contract_number}.json "
            f"--checkpoint checkpoint_{self.checkpoint_id}.json --public-key {self.public_key}"
        )


def contract_liability_proof(
    contract: Contract, *, checkpoint: Checkpoint | None = None
) -> ContractLiabilityProof | None:
    """The proof for ``contract`` from ``checkpoint`` (default: the latest custody checkpoint), or None when
    that checkpoint does not count the contract (signed before it was signed, or closed owing nothing).
    Raises ``ledger.proofs.ProofMismatch`` when stored data no longer leads to what was signed."""
    checkpoint = checkpoint or latest_custody_checkpoint()
    if checkpoint is None:
        return None
    if not CheckpointProofs.objects.filter(checkpoint=checkpoint, liability_tree__isnull=False).exists():
        return None
    try:
        proof = proofs.liability_proof(
            contract.number, checkpoint, group=institution_group(contract.institution)
        )
    except proofs.ProofUnavailable:
        return None  # not counted by this checkpoint
    document = proofs.checkpoint_document(checkpoint, head_proof=False)
    body = json.loads(checkpoint.payload)
    return ContractLiabilityProof(
        contract_number=contract.number,
        checkpoint_id=checkpoint.pk,
        amount_fen=proof["amount"],
        group=proof["group"],
        group_total_fen=int(body["group_totals"][proof["group"]]),
        total_fen=int(body["liabilities_total"]),
        key_id=checkpoint.key_id,
        public_key=platform_public_keys()[checkpoint.key_id],
        checkpoint=document,
        proof=proof,
    )


def guardian_liability_proofs(
    guardian: Guardian, *, checkpoint: Checkpoint | None = None
) -> list[ContractLiabilityProof]:
    """Every contract of the guardian counted by the checkpoint, in contract order."""
    checkpoint = checkpoint or latest_custody_checkpoint()
    if checkpoint is None:
        return []
    found = []
    for contract in Contract.objects.filter(guardian=guardian).order_by("pk"):
        proof = contract_liability_proof(contract, checkpoint=checkpoint)
        if proof is not None:
            found.append(proof)
    return found
