"""Shared test setup.

Tests marked `@pytest.mark.postgres` use PostgreSQL-only features (triggers, deferred constraints, row
locks, `unnest`); they are skipped, with the reason shown by `-ra`, when the database is not PostgreSQL.
CI runs the suite twice, once on SQLite and once on PostgreSQL, so every such test runs in the second pass.
"""

import pytest
from django.db import connections

POSTGRES_SKIP_REASON = "needs PostgreSQL (runs in the PostgreSQL CI pass)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The vendor comes from the configured backend; no connection is opened.
    if connections["default"].vendor == "postgresql":
        return
    skip_postgres = pytest.mark.skip(reason=POSTGRES_SKIP_REASON)
    for item in items:
        if item.get_closest_marker("postgres") is not None:
            item.add_marker(skip_postgres)


@pytest.fixture(autouse=True)
def _reset_business_clock():
    """Tests may freeze or advance business time (ledger.clock); no test sees another's."""
    from ledger import clock

    clock.reset()
    yield
    clock.reset()
