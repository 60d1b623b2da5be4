"""Fixed statements for the hottest paths, prepared by PostgreSQL once per connection, and model rows read
and written by them without the ORM's query compiler.

Django binds parameters on the client, so PostgreSQL parses and plans every statement it receives, and the
ORM compiles every queryset anew (for a one-row read that costs more than running it). The API's hottest
reads (a token's holder, a parent's balance) and the signing and payment of a contract run fixed SQL: on a
server-side-binding psycopg cursor with ``prepare=True`` it is planned once per connection and then only
executed. Other databases run the same SQL through Django's cursor.

``ModelColumns`` lists a model's columns in a statement and builds instances from the row exactly as the ORM
would (the database's and the fields' converters: decryption, JSON, SQLite's dates); ``insert_row`` inserts
an instance as ``save(force_insert=True)`` would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, TypeVar

from django.db import connection, models

from ledger.backends import execute_prepared

M = TypeVar("M", bound=models.Model)


def fetch_all(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
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
    """The columns of ``model`` (all concrete fields, or ``fields``) under a table alias in a statement."""

    def __init__(self, model: type[models.Model], alias: str, fields: Sequence[str] | None = None) -> None:
        meta = model._meta
        chosen = meta.concrete_fields if fields is None else [meta.get_field(name) for name in fields]
        self.model = model
        self.fields: list[models.Field[Any, Any]] = list(chosen)  # type: ignore[arg-type]
        self.names = tuple(field.attname for field in self.fields)
        self.sql = ", ".join(f'{alias}."{field.column}"' for field in self.fields)
        self.width = len(self.fields)

    def load(self, row: Sequence[Any], start: int = 0) -> Any:
        """The instance whose columns start at ``row[start]``, as a queryset would have built it."""
        values = list(row[start : start + self.width])
        for index, convert in _converters(self.model, self.names, connection.vendor):
            if values[index] is not None:
                values[index] = convert(values[index])
        return self.model.from_db(connection.alias, self.names, values)


def load_joined(row: Sequence[Any], *shapes: ModelColumns) -> tuple[list[Any], Sequence[Any]]:
    """Split a row selected as ``shapes[0].sql, shapes[1].sql, …, extra columns`` into one instance per
    shape (``None`` for a shape whose primary key is NULL: an outer join that found nothing) and the extra
    columns after them."""
    instances: list[Any] = []
    at = 0
    for shape in shapes:
        # Every shape selects its primary key first (concrete fields start with it; ``fields`` lists name it).
        instances.append(shape.load(row, at) if row[at] is not None else None)
        at += shape.width
    return instances, row[at:]


@cache
def _converters(
    model: type[models.Model], names: tuple[str, ...], vendor: str
) -> list[tuple[int, Callable[[Any], Any]]]:
    result: list[tuple[int, Callable[[Any], Any]]] = []
    for index, name in enumerate(names):
        field = next(f for f in model._meta.concrete_fields if f.attname == name)
        column = field.get_col(model._meta.db_table)
        steps = connection.ops.get_db_converters(column) + field.get_db_converters(connection)
        if steps:
            result.append((index, _chain(steps, column)))
    return result


def _chain(steps: Sequence[Callable[..., Any]], column: Any) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        for step in steps:
            value = step(value, column, connection)
        return value

    return convert


def insert_row(obj: M) -> M:
    """INSERT ``obj`` as ``obj.save(force_insert=True)`` would (each field's pre_save and database
    preparation, the generated primary key set on it), in one prepared statement."""
    meta = obj._meta
    fields = [f for f in meta.concrete_fields if not (f.primary_key and obj.pk is None)]
    values = [f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields]
    ((pk,),) = fetch_all(_insert_sql(type(obj), obj.pk is None), values)
    obj.pk = pk
    obj._state.adding = False
    obj._state.db = connection.alias
    return obj


@cache
def _insert_sql(model: type[models.Model], generated_pk: bool) -> str:
    meta = model._meta
    fields = [f for f in meta.concrete_fields if not (f.primary_key and generated_pk)]
    columns = ", ".join(f'"{f.column}"' for f in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    return f'INSERT INTO "{meta.db_table}" ({columns}) VALUES ({placeholders}) RETURNING "{meta.pk.column}"'
