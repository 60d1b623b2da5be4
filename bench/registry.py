"""The benchmark registry.

To add a benchmark, create a module `bench/bench_<area>.py` (run.py imports every such module) and decorate a
function that takes no arguments and returns `(value, unit, conditions)`:

    from bench.registry import benchmark

    @benchmark("ledger.post_serial_tps")
    def post_serial_tps() -> tuple[float, str, str]:
        ...  # set up data, time the work
        return entries_per_second, "entries/s", "1 connection, 2-leg entries, 10k entries, PostgreSQL 15"

`@benchmark("ledger.post_serial_tps", target="≥ 2,000")` also records the target, shown beside the result.
Keys are "<area>.<what>", unique across all modules. `value` is a number; `unit` names it
("entries/s", "ms p99"); `conditions` says what was measured so a reader can reproduce it (a string, or a
JSON-serialisable dict). Django is already set up on the PostgreSQL bench database when a benchmark runs,
with its app's migrations applied; a benchmark cleans up after itself or works in its own rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Conditions = str | dict[str, Any]
BenchResult = tuple[float | int, str, Conditions]
BenchFunction = Callable[[], BenchResult]

REGISTRY: dict[str, BenchFunction] = {}
# What a benchmark should reach, as text shown next to its result ("≥ 2,000", "< 1 ms").
TARGETS: dict[str, str] = {}


def benchmark(key: str, *, target: str | None = None) -> Callable[[BenchFunction], BenchFunction]:
    """Register the decorated function under `key` (e.g. "ledger.post_serial_tps"), with its target."""

    def register(func: BenchFunction) -> BenchFunction:
        if key in REGISTRY:
            raise ValueError(
                f"benchmark {key!r} is registered twice ({REGISTRY[key].__module__}, {func.__module__})"
            )
        REGISTRY[key] = func
        if target is not None:
            TARGETS[key] = target
        return func

    return register
