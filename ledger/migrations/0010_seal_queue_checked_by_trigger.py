"""Check the seal queue's entries in a statement trigger, and drop its foreign key on PostgreSQL.

The foreign key's deferred check ran once per queued entry at COMMIT, and locked the entry row (FOR KEY SHARE)
each time: a quarter or more of a large batch's COMMIT. ``ledger_unsealedentry_entry_exists``
(ledger/sql/guards.postgresql.sql, section 3d) refuses, at once, a statement that queues an entry that does not
exist, with one anti-join over the statement's rows; entries are never deleted and keep their id, so what it
checked stays true. SQLite keeps the constraint that 0001 created (only the state changes there).
"""

from pathlib import Path

from django.db import migrations, models

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"

FIND_CONSTRAINT = """
SELECT conname FROM pg_constraint WHERE conrelid = 'ledger_unsealedentry'::regclass AND contype = 'f'
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
        schema_editor.execute(f'ALTER TABLE ledger_unsealedentry DROP CONSTRAINT "{name}"', params=None)


def restore_constraint(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(
        "ALTER TABLE ledger_unsealedentry ADD CONSTRAINT ledger_unsealedentry_entry_id_fk_ledger_entry_id "
        "FOREIGN KEY (entry_id) REFERENCES ledger_entry (id) DEFERRABLE INITIALLY DEFERRED",
        params=None,
    )


class Migration(migrations.Migration):
    dependencies = [("ledger", "0009_entry_hold_checked_by_trigger")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="unsealedentry",
                    name="entry",
                    field=models.OneToOneField(
                        db_constraint=False,
                        on_delete=models.deletion.PROTECT,
                        primary_key=True,
                        related_name="+",
                        serialize=False,
                        to="ledger.entry",
                    ),
                )
            ],
            database_operations=[migrations.RunPython(check_in_trigger, restore_constraint)],
        )
    ]
