"""``python manage.py rotate_pii_keys``: re-encrypt all personal data with the newest key.

Put the new key first in ``PII_ENCRYPTION_KEYS`` (keep the old ones after it), run this, then drop the old
keys. Safe to re-run and to interrupt: values already under the newest key are left alone.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from custody.services.people import rotate_encrypted_fields


class Command(BaseCommand):
    help = "轮换个人信息密钥 Re-encrypt every encrypted personal-data value with the newest key."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--batch-size", type=int, default=500, help="rows per transaction (default 500)")

    def handle(self, *args: Any, **options: Any) -> None:
        def progress(label: str, done: int, total: int) -> None:
            self.stderr.write(f"  [{label}] {done}/{total} rows")

        try:
            report = rotate_encrypted_fields(batch_size=options["batch_size"], on_progress=progress)
        except ValueError as error:
            raise CommandError(str(error)) from None
        for label in sorted(report.rotated):
            self.stdout.write(
                f"{label}: {report.rotated[label]} re-encrypted 已重新加密, "
                f"{report.current[label]} already current 已是最新密钥"
            )
        self.stdout.write(f"total re-encrypted: {report.total_rotated}")
        if report.undecryptable:
            rows = "; ".join(f"{label} pk {pks[:20]}" for label, pks in sorted(report.undecryptable.items()))
            raise CommandError(f"无法解密 values no configured key can decrypt: {rows}")
