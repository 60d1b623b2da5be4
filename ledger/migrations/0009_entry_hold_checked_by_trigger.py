"""Check an entry's pending transfer in the entry trigger, once per statement, and drop the foreign key on
PostgreSQL.

The foreign key's deferred check ran once per entry at COMMIT (a hold's post, thousands of them in an
auto-confirmation batch). ``ledger_entry_new_balance`` (ledger/sql/guards.postgresql.sql, section 3c) now
refuses, at once, a statement that inserts an entry whose pending transfer does not exist, with one anti-join
over the statement's entries; holds can be neither deleted nor given another id (``ledger_pending_once``), so
what it checked stays true. SQLite keeps the constraint that 0001 created (only the state changes there;
altering the field would rebuild the table and drop its triggers).
"""

from pathlib import Path

from django.db import migrations, models

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"

FIND_CONSTRAINT = """
SELECT c.conname FROM pg_constraint c
JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
WHERE c.conrelid = 'ledger_entry'::regclass AND c.contype = 'f' AND a.attname = 'pending_transfer_id'
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
        schema_editor.execute(f'ALTER TABLE ledger_entry DROP CONSTRAINT "{name}"', params=None)


def restore_hold_constraint(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(
        "ALTER TABLE ledger_entry ADD CONSTRAINT ledger_entry_pending_transfer_id_fk_ledger_pendingtransfer_id "
        "FOREIGN KEY (pending_transfer_id) REFERENCES ledger_pendingtransfer (id) DEFERRABLE INITIALLY DEFERRED",
        params=None,
    )


class Migration(migrations.Migration):
    dependencies = [("ledger", "0008_posting_account_checked_by_trigger")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="entry",
                    name="pending_transfer",
                    field=models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        db_index=False,
                        null=True,
                        on_delete=models.deletion.PROTECT,
                        related_name="posting_entries",
                        to="ledger.pendingtransfer",
                    ),
                )
            ],
            database_operations=[migrations.RunPython(check_in_trigger, restore_hold_constraint)],
        )
    ]
