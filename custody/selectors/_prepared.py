"""One row from a fixed statement, prepared by PostgreSQL once per connection.

Django binds parameters on the client, so PostgreSQL parses and plans every statement it receives. The API's
hottest reads (a token's holder, a parent's balance) are fixed statements run on every request; on a
server-side-binding psycopg cursor with ``prepare=True`` they are planned once per connection and then only
executed. Other databases run them through Django's cursor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import connection

from ledger.backends import execute_prepared


def fetch_one(sql: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()
    rows = execute_prepared(sql, params)
    return rows[0] if rows else None
