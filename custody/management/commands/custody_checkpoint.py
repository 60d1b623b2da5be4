"""``python manage.py custody_checkpoint``: sign the custody checkpoint, audit one, or export a proof.

    custody_checkpoint [--out CHECKPOINT.json]             sign now (the daily job does the same)
    custody_checkpoint --verify [--checkpoint ID]          audit: signature, tree, ledger postings
    custody_checkpoint --proof NUMBER --out PROOF.json     a parent's proof, and its checkpoint file
                       [--checkpoint ID]

Every file written is checked by ``python -m ledger.verify`` with the platform's public key alone; the
command prints the exact line to run. ``--verify`` exits 1 when anything differs, naming each contract.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from custody.models import Contract
from custody.selectors.checkpoints import (
    checkpoint_file,
    contract_liability_proof,
    latest_custody_checkpoint,
    platform_public_keys,
)
from custody.services.checkpoints import create_custody_checkpoint, verify_checkpoint_liabilities
from ledger import proofs
from ledger.models import Checkpoint


class Command(BaseCommand):
    help = (
        "托管检查点 Sign the custody checkpoint (chain head, entry log root, every contract's owed amount)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--checkpoint", type=int, help="检查点编号 checkpoint id (default: the latest)")
        parser.add_argument("--verify", action="store_true", help="核查检查点 audit a checkpoint")
        parser.add_argument("--proof", metavar="CONTRACT_NUMBER", help="导出家长的负债证明 export a proof")
        parser.add_argument("--out", help="输出文件 output file")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["verify"]:
                self._verify(options)
            elif options["proof"]:
                self._proof(options)
            else:
                self._sign(options)
        except proofs.ProofError as exc:
            raise CommandError(exc.message, returncode=1) from exc

    def _sign(self, options: dict[str, Any]) -> None:
        self.stderr.write("封存并签名 sealing and signing the custody checkpoint…")
        started = time.perf_counter()
        checkpoint = create_custody_checkpoint()
        body = json.loads(checkpoint.payload)
        self.stdout.write(
            f"checkpoint {checkpoint.pk}: link {body['chain_seq']}, {body['liabilities_count']} contracts, "
            f"{len(body['group_totals'])} institutions, owed {body['liabilities_total']} fen, "
            f"key {checkpoint.key_id} ({time.perf_counter() - started:.2f} s)"
        )
        if options["out"]:
            self._write(checkpoint_file(checkpoint), options["out"])
            self._verify_line(f"checkpoint {options['out']}", checkpoint)

    def _chosen(self, options: dict[str, Any]) -> Checkpoint:
        if options["checkpoint"] is not None:
            found = Checkpoint.objects.filter(pk=options["checkpoint"]).first()
            if found is None:
                raise CommandError(f"检查点 {options['checkpoint']} 不存在 checkpoint does not exist")
            return found
        latest = latest_custody_checkpoint()
        if latest is None:
            raise CommandError("尚无托管检查点 no custody checkpoint yet; run custody_checkpoint first")
        return latest

    def _verify(self, options: dict[str, Any]) -> None:
        checkpoint = self._chosen(options)
        audit = verify_checkpoint_liabilities(checkpoint)
        for finding in audit.findings:
            self.stdout.write(f"  [{finding.check}] {finding.subject}: {finding.problem}")
        if not audit.ok:
            raise CommandError(
                f"检查点 {checkpoint.pk} 核查不通过 checkpoint {checkpoint.pk} FAILS: "
                f"{len(audit.findings)} finding(s)",
                returncode=1,
            )
        self.stdout.write(
            f"检查点 {checkpoint.pk} 核查通过 checkpoint {checkpoint.pk} verifies: signature, {audit.leaves} "
            f"leaves totalling {audit.total_fen} fen, each equal to the ledger's postings"
        )

    def _proof(self, options: dict[str, Any]) -> None:
        if not options["out"]:
            raise CommandError("--proof needs --out PROOF.json")
        contract = Contract.objects.filter(number=options["proof"]).first()
        if contract is None:
            raise CommandError(f"合同 {options['proof']} 不存在 no such contract")
        checkpoint = self._chosen(options)
        proof = contract_liability_proof(contract, checkpoint=checkpoint)
        if proof is None:
            raise CommandError(
                f"检查点 {checkpoint.pk} 未计入合同 {contract.number} checkpoint does not count this contract"
            )
        out = Path(options["out"])
        checkpoint_path = out.with_name(f"checkpoint_{checkpoint.pk}.json")
        self._write(proof.proof, str(out))
        self._write(proof.checkpoint, str(checkpoint_path))
        self._verify_line(f"liability {out} --checkpoint {checkpoint_path}", checkpoint)

    def _write(self, document: dict[str, Any], path: str) -> None:
        Path(path).write_text(json.dumps(document, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        self.stderr.write(f"已导出 written {path}")

    def _verify_line(self, arguments: str, checkpoint: Checkpoint) -> None:
        key = platform_public_keys()[checkpoint.key_id]
        self.stdout.write(f"校验 verify with: python -m ledger.verify {arguments} --public-key {key}")
