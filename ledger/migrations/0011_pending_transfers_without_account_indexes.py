"""Drop the indexes Django made for the pending transfers' two account foreign keys.

Resolving a hold changes its state, a column of the ``ledger_pending_expiry`` index's predicate, so PostgreSQL
writes a new version of the row into every index of the table; the two account indexes were half of that work
(marking 20,000 holds resolved: 1.5-1.7 s with them, 1.0-1.1 s without). No query reads holds by account
through them: the ledger finds holds by id, key and expiry, and the verifier's pending totals aggregate the
whole table. Accounts are never deleted and never change id (``ledger_account_identity``), so the foreign
keys never look up referencing holds either. The indexes are dropped by name on both databases (altering the
field on SQLite would rebuild the table and drop its triggers); the constraints stay.
"""

from django.db import migrations, models

TABLE = "ledger_pendingtransfer"
COLUMNS = ("debit_account_id", "credit_account_id")


def drop_account_indexes(apps, schema_editor):
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, TABLE)
    for name, info in sorted(constraints.items()):
        if (
            info["index"]
            and not info["unique"]
            and not info["primary_key"]
            and len(info["columns"]) == 1
            and info["columns"][0] in COLUMNS
        ):
            schema_editor.execute(f"DROP INDEX {schema_editor.quote_name(name)}", params=None)


def create_account_indexes(apps, schema_editor):
    for column in COLUMNS:
        schema_editor.execute(
            f"CREATE INDEX {schema_editor.quote_name(f'{TABLE}_{column}')} ON {TABLE} ({column})", params=None
        )


class Migration(migrations.Migration):
    dependencies = [("ledger", "0010_seal_queue_checked_by_trigger")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="pendingtransfer",
                    name="debit_account",
                    field=models.ForeignKey(
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
                        db_index=False,
                        on_delete=models.deletion.PROTECT,
                        related_name="pending_credits",
                        to="ledger.account",
                    ),
                ),
            ],
            database_operations=[migrations.RunPython(drop_account_indexes, create_account_indexes)],
        )
    ]
