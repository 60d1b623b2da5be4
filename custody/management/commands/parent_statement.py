"""``python manage.py parent_statement --guardian ID --out STATEMENT.pdf [--proofs DIR]``: a parent's PDF
statement (Chinese font embedded when one is installed), and with ``--proofs`` the proof and checkpoint
files of each contract for ``python -m ledger.verify liability``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from custody.models import Guardian
from custody.services.exports import cjk_font, parent_statement, parent_statement_pdf


class Command(BaseCommand):
    help = "家长对账单 Write a parent's PDF statement with the proofs of what custody holds for them."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--guardian", type=int, required=True, help="家长编号 guardian id")
        parser.add_argument("--out", required=True, help="PDF 文件 the PDF file")
        parser.add_argument("--proofs", help="证明文件目录 a directory for the proof files")

    def handle(self, *args: Any, **options: Any) -> None:
        guardian = Guardian.objects.filter(pk=options["guardian"]).first()
        if guardian is None:
            raise CommandError(f"家长 {options['guardian']} 不存在 no such guardian")
        font = cjk_font()
        if not font.embedded:
            self.stderr.write(
                "警告 WARNING: 未找到中文 TrueType 字体，使用未嵌入的 STSong-Light "
                "no CJK TrueType font found; the PDF uses STSong-Light, not embedded "
                "(apt-get install fonts-wqy-microhei)"
            )
        Path(options["out"]).write_bytes(parent_statement_pdf(guardian))
        self.stdout.write(f"已导出 written {options['out']} (font {font.name})")
        if options["proofs"]:
            folder = Path(options["proofs"])
            folder.mkdir(parents=True, exist_ok=True)
            for proof in parent_statement(guardian).proofs:
                proof_path = folder / f"proof_{proof.contract_number}.json"
                checkpoint_path = folder / f"checkpoint_{proof.checkpoint_id}.json"
                proof_path.write_text(json.dumps(proof.proof, ensure_ascii=False, indent=2) + "\n", "utf-8")
                checkpoint_path.write_text(
                    json.dumps(proof.checkpoint, ensure_ascii=False, indent=2) + "\n", "utf-8"
                )
                self.stdout.write(
                    f"校验 verify with: python -m ledger.verify liability {proof_path} "
                    f"--checkpoint {checkpoint_path} --public-key {proof.public_key}"
                )
