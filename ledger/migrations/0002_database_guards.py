"""Install the triggers that make the database refuse what must never happen (see ledger/sql/)."""

from pathlib import Path

from django.db import migrations

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"


def install_guards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    path = SQL_DIR / f"guards.{vendor}.sql"
    if not path.exists():
        raise RuntimeError(f"the ledger has no database guards for {vendor}; use PostgreSQL or SQLite")
    sql = path.read_text()
    if vendor == "sqlite":
        # sqlite3 runs one statement per execute(); executescript would commit the migration's transaction.
        for statement in _sqlite_statements(sql):
            schema_editor.execute(statement, params=None)
    else:
        schema_editor.execute(sql, params=None)


def _sqlite_statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    statements, current = [], []
    for line in lines:
        current.append(line)
        if line.rstrip().endswith("END;"):
            statements.append("\n".join(current).strip())
            current = []
    return [s for s in statements if s]


class Migration(migrations.Migration):
    dependencies = [("ledger", "0001_initial")]

    operations = [migrations.RunPython(install_guards, migrations.RunPython.noop)]
