"""Re-run the PostgreSQL guards: the pending-transfer guard (4.) calls its function only for a change it refuses.

``ledger_pending_once`` ran a PL/pgSQL function for every hold an UPDATE touched, a few microseconds each, for
every one of the 100,000 holds a day's auto-confirmation posts. Its test is now the trigger's ``WHEN``
condition, an expression PostgreSQL evaluates without calling the function, and the function (which raises)
runs only when the condition holds; deletes, which are always refused, moved to ``ledger_pending_no_delete``.
The same changes are refused with the same messages. Reversing leaves the new triggers in place.
"""

from pathlib import Path

from django.db import migrations

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"


def install_guards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute((SQL_DIR / "guards.postgresql.sql").read_text(), params=None)


class Migration(migrations.Migration):
    dependencies = [("ledger", "0013_hold_accounts_checked_by_trigger")]

    operations = [migrations.RunPython(install_guards, migrations.RunPython.noop)]
