"""Check a pending transfer's accounts in a statement trigger and drop the two foreign keys on PostgreSQL.

The foreign keys' deferred checks ran two queries per hold at COMMIT: 20,000 of a closure's 70,000 checks for
10,000 contracts, and two per lesson recorded. ``ledger_pendingtransfer_accounts_exist``
(ledger/sql/guards.postgresql.sql, section 3e) now refuses, at once, a statement that inserts a hold on an
account that does not exist, probing each distinct account once; accounts can be neither deleted nor given
another id (``ledger_account_identity``) and a hold's accounts never change (``ledger_pending_once``), so what
it checked stays true. SQLite keeps the constraints that 0001 created (only the state changes there; altering
the fields would rebuild the table and drop its triggers); tests/ledger/test_guards.py pins both.
"""

from pathlib import Path

from django.db import migrations, models

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"

FIND_CONSTRAINTS = """
SELECT c.conname FROM pg_constraint c
JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
WHERE c.conrelid = 'ledger_pendingtransfer'::regclass AND c.contype = 'f'
  AND a.attname IN ('debit_account_id', 'credit_account_id')
"""


def check_in_trigger(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    # The trigger first, so that no moment is left with neither check.
    schema_editor.execute((SQL_DIR / "guards.postgresql.sql").read_text(), params=None)
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(FIND_CONSTRAINTS)
        names = sorted({row[0] for row in cursor.fetchall()})
    for name in names:
        schema_editor.execute(f'ALTER TABLE ledger_pendingtransfer DROP CONSTRAINT "{name}"', params=None)


def restore_account_constraints(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for column in ("debit_account_id", "credit_account_id"):
        schema_editor.execute(
            f"ALTER TABLE ledger_pendingtransfer ADD CONSTRAINT ledger_pendingtransfer_{column}_fk_ledger_account_id "
            f"FOREIGN KEY ({column}) REFERENCES ledger_account (id) DEFERRABLE INITIALLY DEFERRED",
            params=None,
        )


class Migration(migrations.Migration):
    dependencies = [("ledger", "0012_guards_check_ranges_and_distinct_accounts")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="pendingtransfer",
                    name="debit_account",
                    field=models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=models.deletion.PROTECT,
                        related_name="pending_debits",
                        to="ledger.account",
                    ),
                ),
                migrations.AlterField(
                    model_name="pendingtransfer",
                    name="credit_account",
                    field=models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=models.deletion.PROTECT,
                        related_name="pending_credits",
                        to="ledger.account",
                    ),
                ),
            ],
            database_operations=[migrations.RunPython(check_in_trigger, restore_account_constraints)],
        )
    ]
