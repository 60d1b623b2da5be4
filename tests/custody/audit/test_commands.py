"""The audit commands as a regulator and a parent use them: every file written is checked by the standalone
verifier shipped as two files (ledger/verify.py, ledger/merkle.py), started as a subprocess without Django,
with the exact command line the management command printed. Also the daily tasks, their schedule, and the
alert selectors."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django_celery_beat.models import PeriodicTask

from custody import tasks
from custody.models import AlertLevel, AlertRule, Contract, InboxMessage, Lesson, RiskAlert
from custody.selectors.risk_alerts import alert_history, alerts_in_jurisdiction, inbox
from custody.services.alerts import resolve_alert, run_risk_scan
from custody.services.lessons import dispute_lesson
from ledger.models import Checkpoint
from tests.custody.audit.conftest import ledger_today
from tests.custody.audit.test_alerts import set_thresholds

pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parents[3]
PYTHON = REPO / ".venv" / "bin" / "python"


@pytest.fixture
def standalone(tmp_path: Path) -> Callable[[str], subprocess.CompletedProcess[str]]:
    """Run a printed ``python -m ledger.verify …`` line with the verifier alone in an empty folder."""
    package = tmp_path / "verifier" / "ledger"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name in ("verify.py", "merkle.py"):
        shutil.copy(REPO / "ledger" / name, package / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "DATABASE", "PYTHONPATH"))}

    def run(line: str) -> subprocess.CompletedProcess[str]:
        argv = shlex.split(line.split("verify with: ", 1)[1])
        assert argv[:3] == ["python", "-m", "ledger.verify"]
        python = str(PYTHON if PYTHON.exists() else sys.executable)
        return subprocess.run(
            [python, *argv[1:]], cwd=package.parent, env=env, capture_output=True, text=True, timeout=120
        )

    return run


def verify_line(output: str) -> str:
    [line] = [line for line in output.splitlines() if "verify with: python -m ledger.verify" in line]
    return line


def test_a_regulator_signs_audits_and_verifies_a_checkpoint(
    paid_contract: Contract, tmp_path: Path, standalone: Callable[[str], Any]
) -> None:
    out = StringIO()
    call_command("custody_checkpoint", "--out", str(tmp_path / "cp.json"), stdout=out, stderr=StringIO())
    assert "1 contracts, 1 institutions, owed 160000 fen" in out.getvalue()
    done = standalone(verify_line(out.getvalue()))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "liabilities total 160000 fen" in done.stdout

    audit = StringIO()
    call_command("custody_checkpoint", "--verify", stdout=audit)
    assert "verifies: signature, 1 leaves totalling 160000 fen" in audit.getvalue()


def test_a_parent_exports_and_verifies_the_proof_of_a_contract(
    paid_contract: Contract, tmp_path: Path, standalone: Callable[[str], Any]
) -> None:
    call_command("custody_checkpoint", stdout=StringIO(), stderr=StringIO())
    out = StringIO()
    proof = tmp_path / f"proof_{paid_contract.number}.json"
    call_command(
        "custody_checkpoint",
        "--proof",
        paid_contract.number,
        "--out",
        str(proof),
        stdout=out,
        stderr=StringIO(),
    )
    done = standalone(verify_line(out.getvalue()))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{paid_contract.number}'s 160000 fen is counted in" in done.stdout
    # An edited amount fails loudly.
    proof.write_text(proof.read_text().replace('"amount": 160000', '"amount": 150000'))
    failed = standalone(verify_line(out.getvalue()))
    assert failed.returncode == 1 and "VERIFICATION FAILED" in failed.stderr
    with pytest.raises(CommandError, match="no such contract"):
        call_command("custody_checkpoint", "--proof", "HT-NONE", "--out", str(proof))


def test_the_audit_command_fails_naming_the_contract(paid_contract: Contract) -> None:
    from ledger.models import LiabilityLeaf

    call_command("custody_checkpoint", stdout=StringIO(), stderr=StringIO())
    LiabilityLeaf.objects.update(amount=1)
    out = StringIO()
    with pytest.raises(CommandError, match="FAILS"):
        call_command("custody_checkpoint", "--verify", stdout=out)
    assert f"[ledger] contract {paid_contract.number}: signed as owed 1 fen" in out.getvalue()


@pytest.mark.parametrize("as_zip", [False, True])
def test_a_regulator_exports_a_bundle_and_verifies_it(
    paid_contract: Contract, tmp_path: Path, standalone: Callable[[str], Any], as_zip: bool
) -> None:
    out = StringIO()
    target = tmp_path / ("export.zip" if as_zip else "export")
    args = ["--institution", paid_contract.institution.licence_number, "--date", ledger_today().isoformat()]
    call_command("export_bundle", *args, "--out", str(target), *(["--zip"] if as_zip else []), stdout=out)
    done = standalone(verify_line(out.getvalue()))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "file contracts.csv intact" in done.stdout and "file export.xlsx intact" in done.stdout
    with pytest.raises(CommandError, match="no such jurisdiction"):
        call_command("export_bundle", "--jurisdiction", "000000", "--date", "2024-03-04", "--out", "x")


def test_a_parent_gets_a_pdf_and_proofs_that_verify(
    paid_contract: Contract, tmp_path: Path, standalone: Callable[[str], Any]
) -> None:
    call_command("custody_checkpoint", stdout=StringIO(), stderr=StringIO())
    out = StringIO()
    pdf = tmp_path / "statement.pdf"
    call_command(
        "parent_statement",
        "--guardian",
        str(paid_contract.guardian_id),
        "--out",
        str(pdf),
        "--proofs",
        str(tmp_path / "proofs"),
        stdout=out,
        stderr=StringIO(),
    )
    assert pdf.read_bytes().startswith(b"%PDF-")
    done = standalone(verify_line(out.getvalue()))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_risk_scan_command_lists_what_it_raised(
    jurisdiction: Any, paid_contract: Contract, record: Callable[..., list[Lesson]]
) -> None:
    record(paid_contract, 2)
    set_thresholds(jurisdiction, unconfirmed_lessons=2)
    out = StringIO()
    call_command("risk_scan", "--jurisdiction", jurisdiction.code, stdout=out)
    assert "新预警 raised: [黄色预警 yellow]" in out.getvalue()
    assert "1 raised, 0 escalated, 0 still open" in out.getvalue()
    with pytest.raises(CommandError, match="no such jurisdiction"):
        call_command("risk_scan", "--jurisdiction", "nowhere")


def test_the_daily_tasks_sign_a_checkpoint_and_scan(
    jurisdiction: Any, paid_contract: Contract, record: Callable[..., list[Lesson]]
) -> None:
    checkpoint_id = tasks.daily_checkpoint()
    tree = Checkpoint.objects.get(pk=checkpoint_id).proofs.liability_tree
    assert tree is not None and tree.total == 160_000
    record(paid_contract, 2)
    set_thresholds(jurisdiction, unconfirmed_lessons=2)
    assert tasks.risk_scan() == {"raised": 1, "escalated": 0, "seen_again": 0, "cleared": 0}
    assert tasks.risk_scan() == {"raised": 0, "escalated": 0, "seen_again": 1, "cleared": 0}


def test_the_schedule_runs_the_checkpoint_and_the_scan_daily() -> None:
    call_command("setup_periodic_tasks", stdout=StringIO())
    checkpoint = PeriodicTask.objects.get(task="custody.daily_checkpoint")
    scan = PeriodicTask.objects.get(task="custody.risk_scan")
    assert (checkpoint.crontab.hour, checkpoint.crontab.minute) == ("0", "5")
    assert (scan.crontab.hour, scan.crontab.minute) == ("23", "30")
    assert str(scan.crontab.timezone) == "Asia/Shanghai"


def test_the_selectors_put_red_first_and_keep_the_history(
    jurisdiction: Any,
    paid_contract: Contract,
    record: Callable[..., list[Lesson]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    disputed, _ = record(paid_contract, 2)
    dispute_lesson(lesson=disputed, reason="未上课 no lesson held")
    set_thresholds(jurisdiction, unconfirmed_lessons=1, disputed_lessons=1, disputed_lessons_red=1)
    with django_capture_on_commit_callbacks(execute=True):
        run_risk_scan()
    alerts = list(alerts_in_jurisdiction(jurisdiction))
    assert [(a.rule, a.level) for a in alerts] == [
        (AlertRule.DISPUTED_LESSONS, AlertLevel.RED),
        (AlertRule.UNCONFIRMED_LESSONS, AlertLevel.YELLOW),
    ]
    assert [a.rule for a in alerts_in_jurisdiction(jurisdiction, level=AlertLevel.YELLOW)] == [
        AlertRule.UNCONFIRMED_LESSONS
    ]
    assert inbox(jurisdiction, unread_only=True).count() == 2 == InboxMessage.objects.count()
    resolve_alert(alert=alerts[0], by=None, note="已核实 checked with the institution")
    assert list(alerts_in_jurisdiction(jurisdiction)) == [alerts[1]]
    assert [e.action for e in alert_history(RiskAlert.objects.get(pk=alerts[0].pk))] == [
        "raised",
        "notified",
        "resolved",
    ]
