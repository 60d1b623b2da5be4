"""Long actions started from the web (导出、对账、校验), run by the Celery worker, followed by the page.

A job is one small JSON file under ``settings.WEB_JOBS_DIR`` (written whole, atomically): who started it and
for which jurisdiction, its state (queued → running → done | failed), ``done`` of ``total`` steps and the
current step's name, then its result. The page polls the job's progress fragment with htmx until it is done.
A file and not a table: a job's record is a convenience for the person waiting, not part of the books, and
the worker and the web server share the machine (in production, point ``WEB_JOBS_DIR`` at shared storage).
Closures need no job record: their progress lives on the ``Closure`` row itself.

What each kind runs, always through the services:

- ``export``: ``custody.services.exports.write_regulator_bundle`` as a signed zip, for one institution or the
  regulator's jurisdiction and one business day;
- ``reconcile``: ``reconciliation.services.runs.reconcile_day`` for the institutions in the regulator's scope;
- ``verify``: ``ledger.verification.verify`` (every ledger check) and the latest custody checkpoint's audit
  (``custody.services.checkpoints.verify_checkpoint_liabilities``).

The task is enqueued after the request's transaction commits; with ``task_always_eager`` (the browser
tests) it runs inside the request and the first poll already shows the result.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import uuid
from datetime import date
from pathlib import Path
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

logger = logging.getLogger(__name__)

KINDS = ("export", "reconcile", "verify")


def jobs_dir() -> Path:
    path = Path(getattr(settings, "WEB_JOBS_DIR", settings.VAR_DIR / "web-jobs"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _path(job_id: str) -> Path:
    if not (len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)):
        raise ValueError("not a job id")
    return jobs_dir() / f"{job_id}.json"


def artefact_path(job_id: str) -> Path:
    """Where an export job writes its zip."""
    return _path(job_id).with_suffix(".zip")


def _write(job: dict[str, Any]) -> None:
    path = _path(job["id"])
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".job.")
    with os.fdopen(fd, "w") as handle:
        json.dump(job, handle, ensure_ascii=False)
    os.replace(tmp, path)


def read_job(job_id: str) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(_path(job_id).read_text())
    except (OSError, ValueError):
        return None
    return data


def start_job(*, kind: str, user_id: int, jurisdiction_id: int, params: dict[str, Any]) -> dict[str, Any]:
    """Record a queued job and enqueue its run once the current transaction commits."""
    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r}")
    job: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "kind": kind,
        "user_id": user_id,
        "jurisdiction_id": jurisdiction_id,
        "params": params,
        "state": "queued",
        "step": "",
        "done": 0,
        "total": 0,
        "created_at": timezone.now().isoformat(),
        "finished_at": None,
        "result": None,
        "error": "",
    }
    _write(job)
    job_id: str = job["id"]
    transaction.on_commit(lambda: run_web_job.delay(job_id))
    return job


class _Progress:
    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job

    def __call__(self, step: str, done: int, total: int) -> None:
        self.job.update(step=step, done=done, total=total)
        _write(self.job)


@shared_task(name="custody.web.run_job")
def run_web_job(job_id: str) -> str:
    """Run one job to its end; a failure is recorded on the job (and logged), not raised again."""
    job = read_job(job_id)
    if job is None or job["state"] in ("done", "failed"):
        return "missing" if job is None else job["state"]
    job.update(state="running", started_at=timezone.now().isoformat())
    _write(job)
    progress = _Progress(job)
    try:
        result = RUNNERS[job["kind"]](job, progress)
    except Exception as exc:  # the person waiting must see that it failed, and why
        logger.exception("web job %s (%s) failed", job_id, job["kind"])
        job.update(state="failed", error=str(exc)[:2000], finished_at=timezone.now().isoformat())
        _write(job)
        return "failed"
    job.update(state="done", result=result, finished_at=timezone.now().isoformat())
    if job["total"]:
        job["done"] = job["total"]
    _write(job)
    return "done"


def _scope(job: dict[str, Any]) -> tuple[Any, Any]:
    from custody.models import Institution, Jurisdiction

    jurisdiction = Jurisdiction.objects.get(pk=job["jurisdiction_id"])
    institution_id = job["params"].get("institution")
    institution = Institution.objects.get(pk=institution_id) if institution_id else None
    return jurisdiction, institution


def _run_export(job: dict[str, Any], progress: _Progress) -> dict[str, Any]:
    from custody.services.exports import write_regulator_bundle
    from ledger import proofs

    jurisdiction, institution = _scope(job)
    day = date.fromisoformat(job["params"]["day"])
    progress("tables", 0, 2)
    destination = artefact_path(job["id"])
    if destination.exists():
        destination.unlink()
    write_regulator_bundle(
        destination=destination,
        on_date=day,
        institution=institution,
        jurisdiction=None if institution is not None else jurisdiction,
        as_zip=True,
    )
    progress("signature", 1, 2)
    bundle = proofs.read_bundle(destination)  # checked as a regulator's verifier would
    return {
        "file": destination.name,
        "size": destination.stat().st_size,
        "files": sorted(bundle.files),
        "rows": bundle.meta.get("rows", {}),
        "scope": _scope_name(bundle.meta.get("scope")),
        "key_id": bundle.key_id,
    }


def _scope_name(scope: Any) -> str:
    """The export's scope as a person reads it (the manifest names it as a small mapping)."""
    if isinstance(scope, dict):
        return str(scope.get("institution_name") or scope.get("jurisdiction_name") or scope)
    return str(scope or "")


def _run_reconcile(job: dict[str, Any], progress: _Progress) -> dict[str, Any]:
    from django.contrib.auth.models import User

    from custody.models import Institution
    from custody.selectors.access import jurisdiction_scope
    from reconciliation.services.runs import reconcile_day

    day = date.fromisoformat(job["params"]["day"])
    institutions = list(
        Institution.objects.filter(jurisdiction_id__in=jurisdiction_scope(job["jurisdiction_id"]))
    )
    progress("matching", 0, 1)
    summary = reconcile_day(
        day=day, institutions=institutions, progress=progress, by=User.objects.get(pk=job["user_id"])
    )
    names = {i.pk: i.name for i in institutions}
    return {
        "day": day.isoformat(),
        "statements": len(summary.matched),
        "tie_outs": [
            {
                "institution": names.get(t.institution_id, str(t.institution_id)),
                "status": t.status,
                "status_label": t.get_status_display(),
                "difference_fen": t.difference_fen,
                "unexplained_fen": t.unexplained_fen,
            }
            for t in summary.tie_outs
        ],
    }


def _run_verify(job: dict[str, Any], progress: _Progress) -> dict[str, Any]:
    from custody.selectors.checkpoints import latest_custody_checkpoint
    from custody.services.checkpoints import verify_checkpoint_liabilities
    from ledger import verification

    report = verification.verify(progress=progress)
    result: dict[str, Any] = {
        "ok": report.ok,
        "counts": report.counts,
        "findings": [
            {"check": f.check, "subject": f.subject, "problem": f.problem} for f in report.findings[:20]
        ],
        "checkpoint": None,
    }
    checkpoint = latest_custody_checkpoint()
    if checkpoint is not None:
        progress("checkpoint", 1, 1)
        audit = verify_checkpoint_liabilities(checkpoint)
        result["checkpoint"] = {
            "id": checkpoint.pk,
            "ok": audit.ok,
            "leaves": audit.leaves,
            "total_fen": audit.total_fen,
            "findings": [f"{f.check}: {f.subject}: {f.problem}" for f in audit.findings[:20]],
        }
    return result


RUNNERS = {"export": _run_export, "reconcile": _run_reconcile, "verify": _run_verify}
