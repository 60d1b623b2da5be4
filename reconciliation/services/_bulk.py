"""Set-based writes for large statements: PostgreSQL COPY, SQLite executemany, ids taken before inserts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any

from django.db import connection, models

CHUNK = 20_000


def is_postgres() -> bool:
    return connection.vendor == "postgresql"


def reserve_ids(model: type[models.Model], count: int) -> list[int]:
    """Primary keys for ``count`` rows about to be inserted: from the table's sequence on PostgreSQL; on
    SQLite (writers serialised) the next ids after the largest ever used, free until the transaction ends."""
    if count <= 0:
        return []
    table = model._meta.db_table
    with connection.cursor() as cursor:
        if is_postgres():
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)", [table, count]
            )
            return [row[0] for row in cursor.fetchall()]
        cursor.execute(f'SELECT COALESCE(MAX(id), 0) FROM "{table}"')
        largest = cursor.fetchone()[0]
        cursor.execute("SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = %s", [table])
        row = cursor.fetchone()
        largest = max(largest, row[0] if row else 0)
    return list(range(largest + 1, largest + count + 1))


def insert_rows(model: type[models.Model], columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Insert raw rows (values in ``columns`` order, as the database stores them); returns how many.

    PostgreSQL streams them with COPY; SQLite inserts them in chunks with executemany. No model code runs:
    callers pass stored values (integers of fen, dates, text)."""
    table = model._meta.db_table
    count = 0
    with connection.cursor() as cursor:
        if is_postgres():
            names = ", ".join(f'"{c}"' for c in columns)
            with cursor.cursor.copy(f'COPY "{table}" ({names}) FROM STDIN') as copy:
                for row in rows:
                    copy.write_row(row)
                    count += 1
            return count
        sql = f'INSERT INTO "{table}" ({", ".join(columns)}) VALUES ({", ".join(["%s"] * len(columns))})'
        chunk: list[Sequence[Any]] = []
        for row in rows:
            # Stored the way the ORM stores them (naive UTC text), so ORM lookups find them.
            chunk.append([_sqlite_value(value) for value in row])
            if len(chunk) >= CHUNK:
                cursor.executemany(sql, chunk)
                count += len(chunk)
                chunk = []
        if chunk:
            cursor.executemany(sql, chunk)
            count += len(chunk)
    return count


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return connection.ops.adapt_datetimefield_value(value)
    if isinstance(value, date):
        return connection.ops.adapt_datefield_value(value)
    return value
