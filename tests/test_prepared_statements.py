"""The prepared-statement paths (ledger posting, the API's hottest reads) bypass Django's cursor(), so they
must do what it does first: replace a connection that died since the last request instead of failing on it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from django.db import connection

from custody.selectors._prepared import fetch_one
from ledger.backends import execute_prepared


def _prepared_read(sql: str) -> Any:
    return fetch_one(sql, [])


def _ledger_prepared(sql: str) -> Any:
    return execute_prepared(sql, {})[0]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("run", [_prepared_read, _ledger_prepared], ids=["custody.fetch_one", "ledger"])
def test_a_connection_killed_between_requests_is_replaced(run: Callable[[str], Any]) -> None:
    assert run("SELECT 1") == (1,)
    dead_pid = connection.connection.info.backend_pid
    with psycopg.connect(**connection.get_connection_params(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [dead_pid])
    connection.health_check_done = False  # as Django sets it when a request starts

    assert run(f"SELECT pg_backend_pid() <> {int(dead_pid)}") == (True,)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_generic_plans_last_for_the_transaction_and_a_large_batch_gets_its_own() -> None:
    from django.db import transaction

    from ledger import backends
    from ledger.money import cny
    from ledger.services import NewEntry, credit, debit, open_account, post_batch

    def mode() -> str:
        return str(execute_prepared("SELECT current_setting('plan_cache_mode')", [])[0][0])

    cash = open_account(code="test:generic:cash", type="asset")
    wallet = open_account(code="test:generic:wallet", type="liability")
    with pytest.raises(RuntimeError, match="needs a transaction"):
        backends.use_generic_plans()
    with transaction.atomic():
        backends.use_generic_plans()
        assert mode() == "force_generic_plan"
        small = [
            NewEntry(f"generic:{n}", "t", [debit(cash, cny("1.00")), credit(wallet, cny("1.00"))])
            for n in range(2)
        ]
        assert post_batch(entries=small).created == 2
        assert mode() == "force_generic_plan"
        large = [
            NewEntry(f"generic:large:{n}", "t", [debit(cash, cny("0.01")), credit(wallet, cny("0.01"))])
            for n in range(backends._JIT_OFF_FROM_ENTRIES)
        ]
        assert post_batch(entries=large).created == backends._JIT_OFF_FROM_ENTRIES
        assert mode() == "auto"
    assert mode() == "auto"  # SET LOCAL ended with the transaction


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_one_cursor_serves_a_connection_and_a_new_connection_gets_its_own() -> None:
    from ledger import backends

    assert execute_prepared("SELECT 1", []) == [(1,)]
    kept = backends._server_side_cursor(connection)
    assert execute_prepared("SELECT %s::int", [2]) == [(2,)]
    assert backends._server_side_cursor(connection) is kept
    with pytest.raises(Exception, match="division by zero"):
        execute_prepared("SELECT 1 / 0", [])
    assert execute_prepared("SELECT 3", []) == [(3,)]  # the cursor outlives a failed statement
    connection.close()
    assert execute_prepared("SELECT 4", []) == [(4,)]
    assert backends._server_side_cursor(connection) is not kept
