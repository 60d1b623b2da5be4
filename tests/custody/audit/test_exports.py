"""The regulator's signed bundle (CSV with BOM, XLSX with the formula guard, a signed manifest) and the
parent's PDF statement (CJK font embedded, or the STSong-Light fallback said so)."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from openpyxl import load_workbook

from custody.models import Contract, Institution, Lesson
from custody.services.checkpoints import create_custody_checkpoint
from custody.services.exports import (
    _balances_at,
    cjk_font,
    csv_safe,
    parent_statement,
    parent_statement_pdf,
    regulator_export,
    write_regulator_bundle,
)
from custody.services.lessons import confirm_lesson
from ledger import chain, proofs, verify
from ledger.models import Account, Posting
from tests.custody.audit.conftest import ledger_today
from tests.custody.conftest import ContractFactory, CourseFactory, InstitutionFactory

pytestmark = pytest.mark.django_db


def rows(data: bytes) -> list[list[str]]:
    assert data.startswith(b"\xef\xbb\xbf"), "CSV must start with the UTF-8 BOM"
    assert b"\r\n" in data
    return list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))


def platform_key() -> Any:
    return verify.parse_public_key(chain.trusted_public_keys()[chain._signing_key()[0]])


@pytest.fixture
def taught(paid_contract: Contract, record: Callable[..., list[Lesson]]) -> Contract:
    """1,600.00 paid; 3 lessons recorded, 1 confirmed (80.00 released)."""
    lessons = record(paid_contract, 3)
    confirm_lesson(lesson=lessons[0])
    return paid_contract


def test_the_bundle_holds_balances_entries_contracts_and_reconciliation_at_the_close(
    taught: Contract, tmp_path: Path
) -> None:
    institution = taught.institution
    checkpoint = create_custody_checkpoint()
    path = write_regulator_bundle(
        destination=tmp_path / "export", on_date=ledger_today(), institution=institution
    )
    bundle = proofs.read_bundle(path)  # signature and every file checked
    assert sorted(bundle.files) == [
        "balances.csv",
        "checkpoint.json",
        "contracts.csv",
        "entries.csv",
        "export.xlsx",
        "reconciliation.csv",
    ]
    assert bundle.meta["scope"] == {
        "institution": institution.licence_number,
        "institution_name": institution.name,
    }
    assert bundle.meta["checkpoint_id"] == checkpoint.pk
    verify.verify_bundle(path, platform_key(), verify.Report())  # the standalone verifier agrees

    balances = rows(bundle.files["balances.csv"])
    assert balances[0][0] == "机构许可证号 licence"
    by_account = {row[2]: row[4:] for row in balances[1:]}
    assert by_account[f"custody_cash:i{institution.pk}"] == ["1600.00", "0.00", "1600.00"]
    assert by_account[f"payable:i{institution.pk}"] == ["0.00", "80.00", "80.00"]
    assert by_account["Σ prepaid:c (1)"] == ["80.00", "1600.00", "1520.00"]
    assert by_account["Σ refund_payable:c (1)"] == ["0.00", "0.00", "0.00"]

    [header, contract_row] = rows(bundle.files["contracts.csv"])
    assert dict(zip(header, contract_row, strict=True)) | {"签订时间 signed at": ""} == {
        "合同编号 contract": taught.number,
        "机构许可证号 licence": institution.licence_number,
        "状态 state": "active",
        "签订时间 signed at": "",
        "合同金额 amount (yuan)": "1600.00",
        "购买课时 paid hours": "20",
        "赠送课时 gift hours": "0",
        "已消课时 hours consumed (at export)": "1",
        "待确认课时 hours pending (at export)": "2",
        "已退课时 hours refunded (at export)": "0",
        "托管余额 held (yuan)": "1520.00",
        "待退款 refund payable (yuan)": "0.00",
        "应付家长 owed to the parent (yuan)": "1520.00",
    }

    entries = rows(bundle.files["entries.csv"])[1:]
    # payment (clearing/prepaid), settlement (cash/clearing), one confirmed lesson (prepaid/payable)
    assert sorted((row[4], row[5], row[6], row[7]) for row in entries) == sorted(
        [
            ("payment", f"clearing:bank:i{institution.pk}", "1600.00", "0.00"),
            ("payment", f"prepaid:c{taught.pk}", "0.00", "1600.00"),
            ("settlement", f"custody_cash:i{institution.pk}", "1600.00", "0.00"),
            ("settlement", f"clearing:bank:i{institution.pk}", "0.00", "1600.00"),
            ("lesson", f"prepaid:c{taught.pk}", "80.00", "0.00"),
            ("lesson", f"payable:i{institution.pk}", "0.00", "80.00"),
        ]
    )
    assert all(row[1] and len(row[8]) == 64 for row in entries), "every entry is sealed, with its link hash"

    [header, recon] = rows(bundle.files["reconciliation.csv"])
    recon_row = dict(zip(header, recon, strict=True))
    assert recon_row["托管现金 custody cash (yuan)"] == "1600.00"
    assert recon_row["应付合计 owed (yuan)"] == "1600.00"
    assert recon_row["账内核对 ledger check"] == "相符 holds"
    assert recon_row["银行核对 bank tie-out of the day"] == "无对账单 no statement"

    document = json.loads(bundle.files["checkpoint.json"])
    verify.verify_checkpoint(document, platform_key(), verify.Report())


def test_a_day_before_the_books_opened_is_empty_and_balances_stop_at_the_close(taught: Contract) -> None:
    files, meta = regulator_export(on_date=ledger_today() - timedelta(days=1), institution=taught.institution)
    assert meta["rows"] == {"balances": 4, "entries": 0, "contracts": 0, "reconciliation": 1}
    by_account = {row[2]: row[6] for row in rows(files["balances.csv"])[1:]}
    assert by_account[f"custody_cash:i{taught.institution_id}"] == "0.00"
    # Between two postings of one account, the balance is the first one's running total.
    prepaid = Account.objects.get(code=f"prepaid:c{taught.pk}")
    first, second = Posting.objects.filter(account=prepaid).order_by("posted_at", "id")[:2]
    assert first.posted_at < second.posted_at
    just_after_first = first.posted_at + (second.posted_at - first.posted_at) / 2
    assert _balances_at([prepaid.pk], just_after_first) == {prepaid.pk: (0, 160_000)}


def test_an_institution_export_leaves_out_other_institutions_and_a_jurisdiction_export_has_them_all(
    taught: Contract,
    make_institution: InstitutionFactory,
    make_course: CourseFactory,
    make_contract: ContractFactory,
    make_student: Callable[..., Any],
    pay: Callable[[Contract], Contract],
) -> None:
    other = make_institution(name="远航教育")
    far = pay(make_contract(course=make_course(institution=other), student=make_student(), paid_hours=5))
    mine, _ = regulator_export(on_date=ledger_today(), institution=taught.institution)
    assert [row[0] for row in rows(mine["contracts.csv"])[1:]] == [taught.number]
    assert far.number not in mine["entries.csv"].decode("utf-8-sig")
    everyone, meta = regulator_export(on_date=ledger_today(), jurisdiction=taught.institution.jurisdiction)
    assert [row[0] for row in rows(everyone["contracts.csv"])[1:]] == [taught.number, far.number]
    assert meta["scope"]["jurisdiction"] == taught.institution.jurisdiction.code
    with pytest.raises(ValueError):
        regulator_export(on_date=ledger_today())


def test_text_a_spreadsheet_would_run_is_neutralised_in_csv_and_xlsx(
    make_institution: InstitutionFactory, tmp_path: Path
) -> None:
    hostile: Institution = make_institution(name='=HYPERLINK("http://evil.example","点我")')
    files, _ = regulator_export(on_date=ledger_today(), institution=hostile)
    balances = rows(files["balances.csv"])
    assert balances[1][1] == "'" + hostile.name
    for text in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "＝1+1"):
        assert csv_safe(text) == "'" + text
    assert csv_safe("启明 1-2") == "启明 1-2"

    workbook = load_workbook(io.BytesIO(files["export.xlsx"]))
    assert workbook.sheetnames == ["余额 balances", "分录 entries", "合同 contracts", "对账 reconciliation"]
    cell = workbook["余额 balances"]["B2"]
    assert cell.value == hostile.name and cell.data_type == "s" and cell.quotePrefix
    with zipfile.ZipFile(io.BytesIO(files["export.xlsx"])) as archive:
        sheets = [n for n in archive.namelist() if n.startswith("xl/worksheets/")]
        assert sheets and all(b"<f>" not in archive.read(name) for name in sheets), "no formula cells"
    amount = workbook["余额 balances"]["G2"]
    assert amount.data_type == "n" and amount.number_format == "#,##0.00"


def test_amounts_in_the_workbook_are_numbers_exact_to_the_fen(taught: Contract) -> None:
    files, _ = regulator_export(on_date=ledger_today(), institution=taught.institution)
    sheet = load_workbook(io.BytesIO(files["export.xlsx"]))["合同 contracts"]
    assert Decimal(str(sheet["K2"].value)) == Decimal("1520.00")
    assert sheet["A2"].value == taught.number


def test_a_changed_file_fails_the_bundle(taught: Contract, tmp_path: Path) -> None:
    path = write_regulator_bundle(
        destination=tmp_path / "export.zip",
        on_date=ledger_today(),
        institution=taught.institution,
        as_zip=True,
    )
    assert proofs.read_bundle(path).meta["kind"] == "regulator_export"
    changed = tmp_path / "changed.zip"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(changed, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "contracts.csv":
                data = data.replace(b"1520.00", b"1500.00")
            target.writestr(info, data)
    with pytest.raises(proofs.BundleInvalid, match="contracts.csv"):
        proofs.read_bundle(changed)


# --- the parent's statement ---------------------------------------------------------------------------------


def test_the_parent_statement_lists_each_contract_and_its_proof(taught: Contract) -> None:
    create_custody_checkpoint()
    statement = parent_statement(taught.guardian)
    assert statement.guardian_label == "张*"
    [row] = statement.rows
    assert (row.number, row.paid_fen, row.consumed_fen, row.pending_fen, row.held_fen) == (
        taught.number,
        160_000,
        8_000,
        16_000,
        152_000,
    )
    assert statement.totals["held_fen"] == 152_000
    [proof] = statement.proofs
    assert proof.amount_fen == 152_000
    verify.verify_liability_proof(proof.proof, proof.checkpoint, platform_key(), verify.Report())


def test_the_pdf_embeds_a_cjk_truetype_font(taught: Contract) -> None:
    font = cjk_font()
    if not font.embedded:
        pytest.skip("no CJK TrueType font installed (apt-get install fonts-wqy-microhei)")
    create_custody_checkpoint()
    pdf = parent_statement_pdf(taught.guardian)
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert b"/FontFile2" in pdf, "the TrueType font program must be embedded"
    assert b"font-embedded" in pdf and b"font-not-embedded" not in pdf


def test_without_a_cjk_truetype_font_the_pdf_falls_back_to_stsong_and_says_it_is_not_embedded(
    taught: Contract, tmp_path: Path
) -> None:
    not_a_font = tmp_path / "broken.ttf"
    not_a_font.write_bytes(b"not a font")
    assert cjk_font([str(not_a_font), str(tmp_path / "missing.ttf")]).name == "STSong-Light"
    pdf = parent_statement_pdf(taught.guardian, font_paths=[str(not_a_font)])
    assert pdf.startswith(b"%PDF-")
    assert b"/FontFile2" not in pdf
    assert b"STSong-Light" in pdf and b"font-not-embedded" in pdf


def test_a_configured_font_path_is_tried_first_and_a_bad_one_is_skipped(
    settings: Any, tmp_path: Path
) -> None:
    not_a_font = tmp_path / "broken.ttf"
    not_a_font.write_bytes(b"not a font")
    settings.CUSTODY_PDF_FONT = str(not_a_font)
    font = cjk_font()
    assert font.path != str(not_a_font)
