"""Check a posting's account in the posting trigger, once per statement, and drop the foreign key on PostgreSQL.

The foreign key's deferred check ran one query per posting at COMMIT. ``ledger_posting_new_balance`` (ledger/sql/
guards.postgresql.sql, section 3b) now refuses, at once, a statement that inserts a posting on an account that
does not exist, with one anti-join over the statement's postings; accounts can be neither deleted nor given
another id (``ledger_account_identity``), so what it checked stays true. SQLite keeps the constraint that 0001
created (only the state changes there; altering the field would rebuild the table and drop its triggers).
"""

from pathlib import Path

from django.db import migrations, models

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"

FIND_CONSTRAINT = """
SELECT c.conname FROM pg_constraint c
JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
WHERE c.conrelid = 'ledger_posting'::regclass AND c.contype = 'f' AND a.attname = 'account_id'
"""


def check_in_trigger(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    # The trigger first, so that no moment is left with neither check.
    schema_editor.execute((SQL_DIR / "guards.postgresql.sql").read_text(), params=None)
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(FIND_CONSTRAINT)
        names = [row[0] for row in cursor.fetchall()]
    for name in names:
        schema_editor.execute(f'ALTER TABLE ledger_posting DROP CONSTRAINT "{name}"', params=None)


def restore_account_constraint(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(
        "ALTER TABLE ledger_posting ADD CONSTRAINT ledger_posting_account_id_fk_ledger_account_id "
        "FOREIGN KEY (account_id) REFERENCES ledger_account (id) DEFERRABLE INITIALLY DEFERRED",
        params=None,
    )


class Migration(migrations.Migration):
    dependencies = [("ledger", "0007_posting_entry_checked_by_trigger")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="posting",
                    name="account",
                    field=models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=models.deletion.PROTECT,
                        related_name="postings",
                        to="ledger.account",
                    ),
                )
            ],
            database_operations=[migrations.RunPython(check_in_trigger, restore_account_constraint)],
        )
    ]
