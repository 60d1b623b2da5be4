"""Make the reconciliation log append-only in the database itself (reconciliation/sql/guards.<vendor>.sql)."""

from pathlib import Path

from django.db import migrations

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"


def install_guards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    path = SQL_DIR / f"guards.{vendor}.sql"
    if not path.exists():
        raise RuntimeError(f"reconciliation has no database guards for {vendor}; use PostgreSQL or SQLite")
    sql = path.read_text()
    if vendor == "sqlite":
        # sqlite3 runs one statement per execute(); executescript would commit the migration's transaction.
        statements, current = [], []
        for line in sql.splitlines():
            if line.lstrip().startswith("--"):
                continue
            current.append(line)
            if line.rstrip().endswith("END;"):
                statements.append("\n".join(current).strip())
                current = []
        for statement in statements:
            schema_editor.execute(statement, params=None)
    else:
        schema_editor.execute(sql, params=None)


class Migration(migrations.Migration):
    dependencies = [("reconciliation", "0001_initial")]

    operations = [migrations.RunPython(install_guards, migrations.RunPython.noop)]
