"""Upgrade the PostgreSQL guards to the current ledger/sql/guards.postgresql.sql (written to run again).

It replaces the per-entry deferred balance trigger, which cost every entry a trigger call at COMMIT, with
statement-level checks that defer only the entries a statement leaves unbalanced (see the SQL file). SQLite's
guards did not change.
"""

from pathlib import Path

from django.db import migrations

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"


def install_current_guards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute((SQL_DIR / "guards.postgresql.sql").read_text(), params=None)


class Migration(migrations.Migration):
    dependencies = [("ledger", "0003_checkpoint_proofs")]

    operations = [migrations.RunPython(install_current_guards, migrations.RunPython.noop)]
