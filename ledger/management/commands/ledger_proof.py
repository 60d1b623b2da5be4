"""``python manage.py ledger_proof``: sign checkpoints with Merkle roots, and export checkpoints and proofs as
files that ``python -m ledger.verify`` checks with the public key alone.

    ledger_proof sign [--liabilities FILE.csv] [--out CHECKPOINT.json]
    ledger_proof checkpoint [--checkpoint ID] [--out CHECKPOINT.json]
    ledger_proof inclusion --entry ID [--checkpoint ID] [--out PROOF.json]
    ledger_proof consistency --old ID --new ID [--out PROOF.json]
    ledger_proof liability --reference REF [--checkpoint ID] [--out PROOF.json]
    ledger_proof public-key

The liabilities CSV has the columns ``reference,group,amount_fen`` (a header row, UTF-8).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ledger import chain, proofs
from ledger.models import Checkpoint, CheckpointProofs


class Command(BaseCommand):
    help = "导出可独立校验的检查点与证明 Sign checkpoints with Merkle roots; export them and their proofs."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        sign = actions.add_parser("sign", help="签发带默克尔根的检查点 sign a checkpoint with Merkle roots")
        sign.add_argument("--liabilities", help="CSV: reference,group,amount_fen")
        sign.add_argument("--out")
        checkpoint = actions.add_parser("checkpoint", help="导出检查点 export a checkpoint")
        checkpoint.add_argument("--checkpoint", type=int, help="default: the latest")
        checkpoint.add_argument("--out")
        inclusion = actions.add_parser("inclusion", help="分录包含证明 entry inclusion proof")
        inclusion.add_argument("--entry", type=int, required=True)
        inclusion.add_argument("--checkpoint", type=int, help="default: the latest with a log root")
        consistency = actions.add_parser("consistency", help="两个检查点间的一致性证明 consistency proof")
        consistency.add_argument("--old", type=int, required=True)
        consistency.add_argument("--new", type=int, required=True)
        liability = actions.add_parser("liability", help="负债包含证明 liability proof for one reference")
        liability.add_argument("--reference", required=True)
        liability.add_argument("--checkpoint", type=int, help="default: the latest with liabilities")
        for sub in (inclusion, consistency, liability):
            sub.add_argument("--out")
            sub.add_argument(
                "--no-check",
                action="store_true",
                help="即使不成立也导出（篡改证据） export even a proof that fails (evidence of tampering)",
            )
        actions.add_parser("public-key", help="显示平台公钥 print the platform's public keys")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            getattr(self, f"_{options['action'].replace('-', '_')}")(options)
        except proofs.ProofError as exc:
            raise CommandError(exc.message, returncode=1) from exc

    # --- actions ------------------------------------------------------------------------------------

    def _sign(self, options: dict[str, Any]) -> None:
        liabilities = _read_liabilities(options["liabilities"]) if options["liabilities"] else None
        checkpoint = proofs.create_checkpoint_with_proofs(liabilities=liabilities)
        body = json.loads(checkpoint.payload)
        self.stderr.write(
            f"checkpoint {checkpoint.pk}: link {body['chain_seq']}, log root {body['log_root']}"
            + (f", liabilities {body['liabilities_total']} fen" if "liabilities_total" in body else "")
        )
        if options["out"]:
            self._write(proofs.checkpoint_document(checkpoint), options["out"], "checkpoint FILE")

    def _checkpoint(self, options: dict[str, Any]) -> None:
        checkpoint = _checkpoint(options["checkpoint"], latest=Checkpoint.objects.order_by("-id").first())
        self._write(proofs.checkpoint_document(checkpoint), options["out"], "checkpoint FILE")

    def _inclusion(self, options: dict[str, Any]) -> None:
        checkpoint = _checkpoint(options["checkpoint"], latest=_latest_with_proofs())
        proof = proofs.entry_inclusion_proof(options["entry"], checkpoint, check=not options["no_check"])
        self._write(proof, options["out"], f"inclusion FILE --checkpoint CHECKPOINT_{checkpoint.pk}.json")

    def _consistency(self, options: dict[str, Any]) -> None:
        old, new = _checkpoint(options["old"], latest=None), _checkpoint(options["new"], latest=None)
        proof = proofs.consistency_proof(old, new, check=not options["no_check"])
        self._write(
            proof,
            options["out"],
            f"consistency FILE --old CHECKPOINT_{old.pk}.json --new CHECKPOINT_{new.pk}.json",
        )

    def _liability(self, options: dict[str, Any]) -> None:
        latest = _latest_with_proofs(liabilities=True)
        checkpoint = _checkpoint(options["checkpoint"], latest=latest)
        proof = proofs.liability_proof(options["reference"], checkpoint, check=not options["no_check"])
        self._write(proof, options["out"], f"liability FILE --checkpoint CHECKPOINT_{checkpoint.pk}.json")

    def _public_key(self, options: dict[str, Any]) -> None:
        for key_id, public in sorted(chain.trusted_public_keys().items()):
            self.stdout.write(f"{key_id} {public}")

    def _write(self, document: dict[str, Any], out: str | None, verify_args: str) -> None:
        text = json.dumps(document, ensure_ascii=False, indent=2) + "\n"
        if out:
            Path(out).write_text(text, encoding="utf-8")
            self.stderr.write(f"written 已导出 {out}")
        else:
            self.stdout.write(text, ending="")
        verify_args = verify_args.replace("FILE", out or "FILE", 1)
        self.stderr.write(f"verify with 校验: python -m ledger.verify {verify_args} --public-key HEX")


def _latest_with_proofs(*, liabilities: bool = False) -> Checkpoint | None:
    rows = CheckpointProofs.objects.select_related("checkpoint").order_by("-checkpoint_id")
    if liabilities:
        rows = rows.filter(liability_tree__isnull=False)
    found = rows.first()
    return found.checkpoint if found else None


def _checkpoint(pk: int | None, *, latest: Checkpoint | None) -> Checkpoint:
    if pk is None:
        if latest is None:
            raise CommandError("没有合适的检查点 no suitable checkpoint; sign one with `ledger_proof sign`")
        return latest
    try:
        return Checkpoint.objects.get(pk=pk)
    except Checkpoint.DoesNotExist:
        raise CommandError(f"检查点 {pk} 不存在 checkpoint {pk} does not exist") from None


def _read_liabilities(path: str) -> list[tuple[str, str, int]]:
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            try:
                rows.append((row["reference"], row["group"], int(row["amount_fen"])))
            except (KeyError, TypeError, ValueError) as exc:
                raise CommandError(
                    f"{path}:{line}: 需要三列 expected columns reference,group,amount_fen ({exc})"
                ) from exc
    return rows
