"""Drop the posting→entry foreign-key constraint on PostgreSQL, where the posting trigger enforces more.

``ledger_posting_new_balance`` (ledger/sql/guards.postgresql.sql, migration 0004) refuses at once a posting
whose entry does not exist or was not inserted by the current transaction, and entries can be neither updated
nor deleted (``ledger_entry_append_only``). So the constraint's deferred check, one query per posting at
COMMIT (about a fifth of a 10,000-entry batch's server time), never refuses anything the trigger let through.

SQLite keeps the constraint that 0001 created: its guards cannot check anything at COMMIT, and the constraint
is what refuses a posting whose entry never arrives (tests/ledger/test_guards.py pins it). Only the state
changes there; altering the field on SQLite would rebuild the table and drop its triggers.
"""

from django.db import migrations, models

FIND_CONSTRAINT = """
SELECT c.conname FROM pg_constraint c
JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
WHERE c.conrelid = 'ledger_posting'::regclass AND c.contype = 'f' AND a.attname = 'entry_id'
"""


def drop_entry_constraint(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(FIND_CONSTRAINT)
        names = [row[0] for row in cursor.fetchall()]
    for name in names:
        schema_editor.execute(f'ALTER TABLE ledger_posting DROP CONSTRAINT "{name}"', params=None)


def restore_entry_constraint(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(
        "ALTER TABLE ledger_posting ADD CONSTRAINT ledger_posting_entry_id_fk_ledger_entry_id "
        "FOREIGN KEY (entry_id) REFERENCES ledger_entry (id) DEFERRABLE INITIALLY DEFERRED",
        params=None,
    )


class Migration(migrations.Migration):
    dependencies = [("ledger", "0006_log_tree_nodes_for_inclusion_proofs")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="posting",
                    name="entry",
                    field=models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=models.deletion.PROTECT,
                        related_name="postings",
                        to="ledger.entry",
                    ),
                )
            ],
            database_operations=[migrations.RunPython(drop_entry_constraint, restore_entry_constraint)],
        )
    ]
