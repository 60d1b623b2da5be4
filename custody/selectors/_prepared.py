"""Fixed statements for the hottest paths, prepared by PostgreSQL once per connection, and model rows read
and written by them without the ORM's query compiler.

Django binds parameters on the client, so PostgreSQL parses and plans every statement it receives, and the
ORM compiles every queryset anew (for a one-row read that costs more than running it). The API's hottest
reads (a token's holder, a parent's balance) and the signing and payment of a contract run fixed SQL: on a
server-side-binding psycopg cursor with ``prepare=True`` it is planned once per connection and then only
executed. Other databases run the same SQL through Django's cursor.

``ModelColumns`` lists a model's columns in a statement and builds instances from the row exactly as the ORM
would (the database's and the fields' converters: decryption, JSON, SQLite's dates); ``insert_of`` writes
an instance as ``save(force_insert=True)`` would; ``write_rows`` runs several independent one-row writes in
one statement on PostgreSQL.

They take the connection wrapper once per call (``_db()``) and hand it to Django's field methods: each
attribute read through the ``django.db.connection`` proxy is a look-up of the current thread's connection, and
a signing and its payment made some seventy of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connection, connections, models
from django.db.backends.base.base import BaseDatabaseWrapper

from ledger.backends import execute_prepared, mark_saved


def _db() -> BaseDatabaseWrapper:
    return connections[DEFAULT_DB_ALIAS]


def fetch_all(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    db = _db()
    if db.vendor != "postgresql":
        with db.cursor() as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall())
    return execute_prepared(sql, params)


def fetch_one(sql: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
    rows = fetch_all(sql, params)
    return rows[0] if rows else None


def row_locks(*, update: str = "", share: str = "") -> str:
    """``FOR UPDATE OF update FOR SHARE OF share`` on PostgreSQL; nothing on SQLite, whose writers are
    serialised by ``BEGIN IMMEDIATE`` (settings), so a transaction that writes holds the whole database."""
    if connection.vendor != "postgresql":
        return ""
    clauses = [f"FOR UPDATE OF {update}" if update else "", f"FOR SHARE OF {share}" if share else ""]
    return " ".join(clause for clause in clauses if clause)


class ModelColumns:
    """The columns of ``model`` (all concrete fields, or ``fields``) under a table alias in a statement, in
    the model's field order (the order ``Model.from_db`` takes values in, primary key first). An instance
    loaded from ``fields`` defers the others (read on first access, as ``QuerySet.only`` does)."""

    def __init__(self, model: type[models.Model], alias: str, fields: Sequence[str] | None = None) -> None:
        meta = model._meta
        chosen: list[Any] = list(meta.concrete_fields)
        if fields is not None:
            wanted = {meta.get_field(name) for name in fields}
            chosen = [field for field in chosen if field in wanted]
            if len(chosen) != len(wanted) or chosen[0] is not meta.pk:
                raise ValueError(f"{model.__name__}: {list(fields)}: not concrete fields with the key")
        self.model = model
        self.fields: list[models.Field[Any, Any]] = chosen
        self.names = tuple(field.attname for field in self.fields)
        self.sql = ", ".join(f'{alias}."{field.column}"' for field in self.fields)
        self.width = len(self.fields)

    def load(self, row: Sequence[Any], start: int = 0, db: BaseDatabaseWrapper | None = None) -> Any:
        """The instance whose columns start at ``row[start]``, as a queryset would have built it."""
        db = db or _db()
        values = list(row[start : start + self.width])
        for index, convert in _converters(self.model, self.names, db.vendor):
            if values[index] is not None:
                values[index] = convert(values[index], db)
        return self.model.from_db(db.alias, self.names, values)


def load_joined(row: Sequence[Any], *shapes: ModelColumns) -> tuple[list[Any], Sequence[Any]]:
    """Split a row selected as ``shapes[0].sql, shapes[1].sql, …, extra columns`` into one instance per
    shape (``None`` for a shape whose primary key is NULL: an outer join that found nothing) and the extra
    columns after them."""
    db = _db()
    instances: list[Any] = []
    at = 0
    for shape in shapes:
        # Every shape selects its primary key first (concrete fields start with it; ``fields`` lists name it).
        instances.append(shape.load(row, at, db) if row[at] is not None else None)
        at += shape.width
    return instances, row[at:]


@cache
def _converters(
    model: type[models.Model], names: tuple[str, ...], vendor: str
) -> list[tuple[int, Callable[[Any, BaseDatabaseWrapper], Any]]]:
    result: list[tuple[int, Callable[[Any, BaseDatabaseWrapper], Any]]] = []
    for index, name in enumerate(names):
        field = next(f for f in model._meta.concrete_fields if f.attname == name)
        column = field.get_col(model._meta.db_table)
        steps = connection.ops.get_db_converters(column) + field.get_db_converters(connection)
        if steps:
            result.append((index, _chain(steps, column)))
    return result


def _chain(steps: Sequence[Callable[..., Any]], column: Any) -> Callable[[Any, BaseDatabaseWrapper], Any]:
    def convert(value: Any, db: BaseDatabaseWrapper) -> Any:
        for step in steps:
            value = step(value, column, db)
        return value

    return convert


@dataclass(frozen=True)
class RowWrite:
    """One row's ``INSERT`` or ``UPDATE``, returning one column: the row's key. ``inserted`` is the instance
    an ``INSERT`` came from (``insert_of``): ``write_rows`` gives it the key the database chose."""

    sql: str
    params: Sequence[Any]
    inserted: models.Model | None = None


def insert_of(obj: models.Model) -> RowWrite:
    """The ``INSERT`` of ``obj`` as ``obj.save(force_insert=True)`` would write it (each field's pre_save and
    database preparation)."""
    db = _db()
    generated_pk = obj.pk is None
    fields = _insert_fields(type(obj), generated_pk)
    values = [f.get_db_prep_save(f.pre_save(obj, True), db) for f in fields]
    return RowWrite(_insert_sql(type(obj), generated_pk), values, obj)


def write_rows(*writes: RowWrite) -> list[Any]:
    """Run ``writes`` and return the ``id`` each returned (``None`` for an ``UPDATE`` that matched nothing).

    On PostgreSQL they are one statement, each write a data-modifying CTE: one round trip and one prepared
    plan instead of one per write. They all see the database as it was before the statement, so the writes
    must not depend on each other (a row one inserts is not visible to another). Elsewhere they run one after
    the other, in order."""
    db = _db()
    if db.vendor == "postgresql":
        params = [value for write in writes for value in write.params]
        ids = list(execute_prepared(_together_sql(tuple(w.sql for w in writes)), params)[0])
    else:
        ids = [row[0] if row else None for row in (fetch_one(w.sql, w.params) for w in writes)]
    for write, pk in zip(writes, ids, strict=True):
        if write.inserted is not None:
            write.inserted.pk = pk
            mark_saved([write.inserted])
    return ids


@cache
def _together_sql(statements: tuple[str, ...]) -> str:
    if len(statements) == 1:
        return statements[0]
    ctes = ", ".join(f"w{n} AS ({sql})" for n, sql in enumerate(statements))
    ids = ", ".join(f"(SELECT * FROM w{n})" for n in range(len(statements)))
    return f"WITH {ctes} SELECT {ids}"


@cache
def _insert_fields(model: type[models.Model], generated_pk: bool) -> list[models.Field[Any, Any]]:
    return [f for f in model._meta.concrete_fields if not (f.primary_key and generated_pk)]


@cache
def _insert_sql(model: type[models.Model], generated_pk: bool) -> str:
    meta = model._meta
    columns = ", ".join(f'"{f.column}"' for f in _insert_fields(model, generated_pk))
    placeholders = ", ".join(["%s"] * len(_insert_fields(model, generated_pk)))
    return f'INSERT INTO "{meta.db_table}" ({columns}) VALUES ({placeholders}) RETURNING "{meta.pk.column}"'
