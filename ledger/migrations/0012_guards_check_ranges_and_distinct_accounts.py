"""Re-run the PostgreSQL guards: cheaper forms of the statement triggers' checks, the same guarantees.

``ledger/sql/guards.postgresql.sql`` now checks a posting statement's accounts once per distinct account (not
per posting), checks that adjacent new entries have postings and that adjacently queued entries exist with
one index range scan each (not a probe per row), groups a one-currency statement's postings once, and writes
every existence test so that its plan does not depend on the size of the first statement in a session (an
anti-join planned for a batch hashed the whole entry table, and later transfers of the session paid it
again). Reversing leaves the new functions in place: they refuse exactly what the previous ones refused.
"""

from pathlib import Path

from django.db import migrations

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"


def install_guards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute((SQL_DIR / "guards.postgresql.sql").read_text(), params=None)


class Migration(migrations.Migration):
    dependencies = [("ledger", "0011_pending_transfers_without_account_indexes")]

    operations = [migrations.RunPython(install_guards, migrations.RunPython.noop)]
