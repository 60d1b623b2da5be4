"""Check a refund's entry and a payout instruction's hold by triggers and drop the two foreign keys on PostgreSQL.

Their deferred checks ran one query per row at COMMIT, 20,000 of a 10,000-contract closure's 70,000.
custody/sql/ledger_references.postgresql.sql now refuses, at once, an insert statement naming an entry or a
hold that does not exist (one probe per row, one query per statement), and an UPDATE that changes the
reference to one. Ledger entries and holds are never deleted and keep their id (the ledger's own guards), so
what they checked stays true. SQLite keeps the constraints that earlier migrations created (only the state
changes there); tests/custody/test_ledger_references.py pins both.
"""

from pathlib import Path

from django.db import migrations, models

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"

# (table, column, referenced table) of each foreign key the triggers replace.
REFERENCES = (
    ("custody_refund", "entry_id", "ledger_entry"),
    ("custody_payoutinstruction", "pending_transfer_id", "ledger_pendingtransfer"),
)

FIND_CONSTRAINT = """
SELECT c.conname FROM pg_constraint c
JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
WHERE c.conrelid = %s::regclass AND c.contype = 'f' AND a.attname = %s
"""


def check_in_triggers(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    # The triggers first, so that no moment is left with neither check.
    schema_editor.execute((SQL_DIR / "ledger_references.postgresql.sql").read_text(), params=None)
    for table, column, _ in REFERENCES:
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(FIND_CONSTRAINT, [table, column])
            names = [row[0] for row in cursor.fetchall()]
        for name in names:
            schema_editor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"', params=None)


def restore_constraints(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for table, column, referenced in REFERENCES:
        schema_editor.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT {table}_{column}_fk_{referenced}_id FOREIGN KEY ({column}) "
            f"REFERENCES {referenced} (id) DEFERRABLE INITIALLY DEFERRED",
            params=None,
        )
    schema_editor.execute(
        "DROP TRIGGER IF EXISTS custody_refund_entry_exists ON custody_refund; "
        "DROP TRIGGER IF EXISTS custody_refund_entry_changed ON custody_refund; "
        "DROP TRIGGER IF EXISTS custody_payout_hold_exists ON custody_payoutinstruction; "
        "DROP TRIGGER IF EXISTS custody_payout_hold_changed ON custody_payoutinstruction",
        params=None,
    )


class Migration(migrations.Migration):
    dependencies = [("custody", "0011_refund_and_payout_indexes_only_what_is_read")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="refund",
                    name="entry",
                    field=models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        db_index=False,
                        null=True,
                        on_delete=models.deletion.PROTECT,
                        related_name="+",
                        to="ledger.entry",
                    ),
                ),
                migrations.AlterField(
                    model_name="payoutinstruction",
                    name="pending_transfer",
                    field=models.OneToOneField(
                        db_constraint=False,
                        on_delete=models.deletion.PROTECT,
                        related_name="+",
                        to="ledger.pendingtransfer",
                    ),
                ),
            ],
            database_operations=[migrations.RunPython(check_in_triggers, restore_constraints)],
        )
    ]
