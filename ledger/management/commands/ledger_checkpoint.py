"""``python manage.py ledger_checkpoint``: seal queued entries and sign the chain head."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from ledger import proofs


class Command(BaseCommand):
    help = "封存并签名 Seal queued entries and sign a checkpoint of the chain head and the entry log's root."

    def handle(self, *args: Any, **options: Any) -> None:
        checkpoint = proofs.create_checkpoint_with_proofs()
        self.stdout.write(
            f"checkpoint {checkpoint.pk}: link {checkpoint.chain_seq} hash {checkpoint.chain_hash} "
            f"signed by key {checkpoint.key_id}"
        )
