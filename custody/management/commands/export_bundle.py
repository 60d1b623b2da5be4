"""``python manage.py export_bundle``: the signed export for a regulator, for one institution or one
jurisdiction and one business day.

    export_bundle --institution LICENCE --date 2024-03-04 --out DIR
    export_bundle --jurisdiction 310104 --date 2024-03-04 --out export.zip --zip

Then ``python -m ledger.verify bundle DIR_OR_ZIP --public-key HEX`` checks every file against the signed
manifest with the platform's public key alone.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from custody.models import Institution, Jurisdiction
from custody.selectors.checkpoints import platform_public_keys
from custody.services.exports import write_regulator_bundle
from ledger import proofs


class Command(BaseCommand):
    help = "监管导出包 Write the signed export (CSV, XLSX, manifest) of an institution or jurisdiction."

    def add_arguments(self, parser: CommandParser) -> None:
        scope = parser.add_mutually_exclusive_group(required=True)
        scope.add_argument("--institution", metavar="LICENCE", help="机构办学许可证号 licence number")
        scope.add_argument("--jurisdiction", metavar="CODE", help="地区代码 jurisdiction code")
        parser.add_argument("--date", required=True, help="业务日期 business day, YYYY-MM-DD (Shanghai)")
        parser.add_argument("--out", required=True, help="新目录或 zip 文件 a new directory, or a zip file")
        parser.add_argument("--zip", action="store_true", help="写成 zip write a zip file")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            on_date = date.fromisoformat(options["date"])
        except ValueError as exc:
            raise CommandError(f"日期格式应为 YYYY-MM-DD: {exc}") from exc
        institution = jurisdiction = None
        if options["institution"]:
            institution = Institution.objects.filter(licence_number=options["institution"]).first()
            if institution is None:
                raise CommandError(f"机构 {options['institution']} 不存在 no such institution")
        else:
            jurisdiction = Jurisdiction.objects.filter(code=options["jurisdiction"]).first()
            if jurisdiction is None:
                raise CommandError(f"地区 {options['jurisdiction']} 不存在 no such jurisdiction")
        try:
            path = write_regulator_bundle(
                destination=options["out"],
                on_date=on_date,
                institution=institution,
                jurisdiction=jurisdiction,
                as_zip=options["zip"],
            )
        except proofs.ProofError as exc:
            raise CommandError(exc.message, returncode=1) from exc
        key = platform_public_keys()[settings.LEDGER_SIGNING_KEY_ID]
        self.stdout.write(f"已导出 written {path}")
        self.stdout.write(f"校验 verify with: python -m ledger.verify bundle {path} --public-key {key}")
