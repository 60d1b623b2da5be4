"""``python manage.py seed_demo [--seed N] [--scale X] [--end-date YYYY-MM-DD] [--if-empty | --reset]``.

Builds the demo district of ``custody/demo.py`` (about 80 days of a district's life, every row through the
services, payments through signed bank callbacks) in ONE transaction: a failure leaves nothing behind.

The ledger is append-only (its triggers refuse UPDATE and DELETE), so the demo only goes into a database
without custody or ledger data:

- data present and no flag: refuses with exit code 1 and says what to do;
- ``--if-empty``: skips quietly when data is present (``make seed`` and ``make run`` use it);
- ``--reset`` (DEBUG only): on PostgreSQL truncates every custody, ledger and reconciliation table
  (TRUNCATE is not an UPDATE or DELETE, so the append-only guards do not fire; it is how the test suite
  empties them too) and deletes the demo users, then seeds; on SQLite nothing can be deleted, so it
  refuses: remove the database file and ``migrate`` again.

In DEBUG (when the API's role models are installed) it also creates four login users and prints their
passwords and the TOTP secrets of the two that need a second factor. Then ``verify_ledger --seal`` passes.
"""

from __future__ import annotations

import logging
import time
from datetime import date
from typing import Any

from django.apps import apps
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction

from custody.demo import DemoError, DemoOptions, build_demo, database_is_empty, role_models_available
from ledger import chain

DEMO_USERNAMES = ("demo_parent", "demo_clerk", "demo_regulator", "demo_bank")
WIPED_APPS = ("custody", "ledger", "reconciliation")


class Command(BaseCommand):
    help = "生成示范数据 Build a realistic demo district through the services (into an empty database)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--seed", type=int, default=2024, help="random seed (same seed, same district)")
        parser.add_argument(
            "--scale", type=float, default=1.0, help="1.0: 20 institutions, 200 parents, ~300 contracts"
        )
        parser.add_argument(
            "--end-date",
            type=date.fromisoformat,
            default=None,
            help="the story's last day, YYYY-MM-DD (default: yesterday in Shanghai)",
        )
        group = parser.add_mutually_exclusive_group()
        group.add_argument(
            "--if-empty", action="store_true", help="do nothing (exit 0) if the database already has data"
        )
        group.add_argument(
            "--reset",
            action="store_true",
            help="DEBUG, PostgreSQL: empty the custody and ledger tables first",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["scale"] <= 0:
            raise CommandError("--scale must be positive")
        if not database_is_empty():
            if options["if_empty"]:
                self.stdout.write("示范数据已存在，跳过 the database already has data; seed_demo skipped")
                return
            if not options["reset"]:
                raise CommandError(
                    "数据库中已有数据，账本只能追加不能删除 the database already holds custody or "
                    "ledger data, and the ledger is append-only. Use a fresh database (SQLite: delete "
                    "var/db.sqlite3 and run migrate), --if-empty to skip, or --reset (DEBUG, PostgreSQL) to "
                    "empty it first."
                )
            self.reset()
        started = time.monotonic()
        demo_users = bool(settings.DEBUG) and role_models_available()
        demo_options = DemoOptions(
            seed=options["seed"],
            scale=options["scale"],
            end_date=options["end_date"],
            bank_signing_key=getattr(settings, "DEMO_BANK_SIGNING_KEY", ""),
            bank_key_id=getattr(settings, "DEMO_BANK_KEY_ID", ""),
            demo_users=demo_users,
        )
        self.check_bank_key(demo_options)
        try:
            with _tasks_run_inline(), transaction.atomic():
                summary = build_demo(demo_options, progress=self.stdout.write)
                self.stdout.write("[5/6] 封存哈希链 sealing the hash chain")
                sealed = chain.seal()
        except DemoError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"      sealed {sealed} entries")
        self.stdout.write(
            f"[6/6] 完成 done in {time.monotonic() - started:.1f} s, story ends {summary.end_date}"
        )
        for line in summary.lines():
            self.stdout.write(line)
        if summary.credentials:
            self.stdout.write("")
            self.stdout.write(
                "示范账号 demo logins (DEBUG only; passwords are public, never use them elsewhere):"
            )
            for credential in summary.credentials:
                line = f"  {credential.role:<26} {credential.username:<15} {credential.password:<20}"
                line += f" {credential.detail}"
                if credential.totp_secret:
                    line += f"  TOTP secret {credential.totp_secret}"
                self.stdout.write(line)
        elif settings.DEBUG:
            self.stdout.write("(no demo logins: the API's role models are not installed)")
        self.stdout.write(self.style.SUCCESS("OK: python manage.py verify_ledger --seal 可核对账本"))

    def check_bank_key(self, options: DemoOptions) -> None:
        keys = (getattr(settings, "CUSTODY_CHANNELS", {}) or {}).get("bank", {}).get("keys", {})
        if not options.bank_signing_key or options.bank_key_id not in keys:
            raise CommandError(
                "示范数据需要开发环境的托管银行密钥 the demo pays through signed bank callbacks and "
                "needs the dev bank key: run with DJANGO_DEBUG=true and no CUSTODY_CHANNELS_JSON (the key "
                "is generated into var/), or configure DEMO_BANK_SIGNING_KEY for the key id "
                "DEMO_BANK_KEY_ID."
            )

    def reset(self) -> None:
        if not settings.DEBUG:
            raise CommandError("--reset 仅限开发环境 --reset is allowed only with DEBUG on")
        if connection.vendor != "postgresql":
            raise CommandError(
                "SQLite上的账本不可删除 on SQLite the append-only ledger cannot be emptied: delete the "
                "database file (var/db.sqlite3) and run `python manage.py migrate`, then seed_demo again."
            )
        tables = [
            model._meta.db_table
            for label in WIPED_APPS
            if apps.is_installed(label)
            for model in apps.get_app_config(label).get_models(include_auto_created=True)
            if model._meta.managed and not model._meta.proxy
        ]
        quote = connection.ops.quote_name
        self.stdout.write(f"--reset: truncating {len(tables)} tables 清空 custody, ledger, reconciliation")
        with transaction.atomic(), connection.cursor() as cursor:
            # TRUNCATE refuses tables with deferred checks still queued in this transaction (Django's foreign
            # keys are INITIALLY DEFERRED): run them now, then restore the deferral for what follows.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute(f"TRUNCATE {', '.join(quote(t) for t in tables)} RESTART IDENTITY CASCADE")
            cursor.execute("SET CONSTRAINTS ALL DEFERRED")
            User.objects.filter(username__in=DEMO_USERNAMES).delete()


class _tasks_run_inline:
    """Celery tasks enqueued after commit (refund instructions, closure runs) run in this process instead of
    going to the broker: the demo already did that work, so they find nothing to do."""

    def __enter__(self) -> None:
        from config.celery import app

        self.app = app
        self.previous = app.conf.task_always_eager
        app.conf.task_always_eager = True
        # Each inline task would log a line; they have nothing to report here.
        self.trace = logging.getLogger("celery.app.trace")
        self.level = self.trace.level
        self.trace.setLevel(logging.WARNING)

    def __exit__(self, *exc: object) -> None:
        self.app.conf.task_always_eager = self.previous
        self.trace.setLevel(self.level)
