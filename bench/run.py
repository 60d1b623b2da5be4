"""Run registered benchmarks and merge their results into bench/results.json.

    .venv/bin/python bench/run.py                      # every benchmark
    .venv/bin/python bench/run.py --only ledger.post_serial_tps
    .venv/bin/python bench/run.py --list
    .venv/bin/python bench/run.py --markdown            # print results.json as a Markdown table, run nothing
    .venv/bin/python bench/run.py --fresh               # drop and recreate the bench database first

Benchmarks run against PostgreSQL only: DATABASE_URL must be a postgres:// URL, and when it is unset it
defaults to postgres://postgres@127.0.0.1:5432/custody_bench. Each area's benchmarks (ledger, custody, audit,
...) run in a child process on a database of its own, named after it (custody_bench_ledger, ...), so that one
area's data set never meets another's jobs. The database is created if missing and migrated before the first
benchmark. results.json is a flat object
{"key": {"value": ..., "unit": ..., "target": ..., "conditions": ..., "machine_reference": ...}}; keys not
re-run keep their previous results. ``machine_reference`` is how long two fixed workloads (pure Python, a
CPU-bound PostgreSQL query) took at the start of the run: the machine's speed that day. A benchmark's
conditions may carry a one-line "summary", which the Markdown table shows.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
RESULTS_PATH = BENCH_DIR / "results.json"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/custody_bench"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", metavar="KEY", help="run only these benchmarks")
    parser.add_argument("--list", action="store_true", help="list registered benchmarks and exit")
    parser.add_argument("--results", type=Path, default=RESULTS_PATH, help="results file to merge into")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="drop and recreate the bench database first (the ledger is append-only, so data accumulates)",
    )
    parser.add_argument(
        "--markdown", action="store_true", help="print the results file as a Markdown table and exit"
    )
    return parser.parse_args(argv)


def configure_database() -> str:
    url = os.environ.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
    if not url.startswith(("postgres://", "postgresql://", "pgsql://")):
        sys.exit(f"bench: DATABASE_URL must be PostgreSQL (got {url!r}); unset it for {DEFAULT_DATABASE_URL}")
    return url


def load_benchmarks() -> dict[str, Any]:
    from bench.registry import REGISTRY

    for path in sorted(BENCH_DIR.glob("bench_*.py")):
        importlib.import_module(f"bench.{path.stem}")
    return REGISTRY


def prepare_database(*, fresh: bool = False) -> None:
    """Create the bench database if it does not exist (drop it first when ``fresh``), then migrate it."""
    import psycopg
    from django.conf import settings
    from django.core.management import call_command

    db = settings.DATABASES["default"]
    params: dict[str, Any] = {
        "host": db.get("HOST") or None,
        "port": db.get("PORT") or None,
        "user": db.get("USER") or None,
    }
    if db.get("PASSWORD"):
        params["password"] = db["PASSWORD"]
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
        if fresh:
            print(f"bench: dropping database {db['NAME']} (--fresh)")
            conn.execute(f'DROP DATABASE IF EXISTS "{db["NAME"]}"')
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]).fetchone()
        if not exists:
            print(f"bench: creating database {db['NAME']}")
            conn.execute(f'CREATE DATABASE "{db["NAME"]}"')
    # Every app to its latest migration, as production runs: migrating only the measured app stopped its
    # dependencies (the ledger) at the migration it depends on, an older schema than production's.
    call_command("migrate", verbosity=0, interactive=False)


def machine_reference() -> dict[str, float]:
    """How fast this machine is right now, by two fixed workloads (median of five): pure Python, and a
    CPU-bound PostgreSQL query. Shared machines vary from day to day by a factor of two; a figure is
    comparable with another day's only next to these."""
    import statistics

    from django.db import connection

    def python_work() -> None:
        total = 0
        for n in range(1_000_000):
            total += n * n % 7
        json.dumps([{"n": n, "s": str(n)} for n in range(20_000)], sort_keys=True)

    def database_work() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT sum(i % 7) FROM generate_series(1, 2000000) AS i")
            cursor.fetchone()

    def median_ms(work: Any) -> float:
        samples = []
        for _ in range(5):
            started = time.perf_counter()
            work()
            samples.append(time.perf_counter() - started)
        return round(1000 * statistics.median(samples), 1)

    return {"python_ms": median_ms(python_work), "postgresql_ms": median_ms(database_work)}


def merge_results(path: Path, new: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.exists() else {}
    results.update(new)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dict(sorted(results.items())), indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return results


def print_table(rows: dict[str, dict[str, Any]]) -> None:
    width = max(len(key) for key in rows)
    print(f"{'benchmark':<{width}}  {'value':>14}  {'unit':<12}  conditions")
    for key, row in rows.items():
        conditions = row["conditions"]
        if isinstance(conditions, dict) and conditions.get("summary"):
            conditions = conditions["summary"]
        elif not isinstance(conditions, str):
            conditions = json.dumps(conditions, ensure_ascii=False)
        value = row["value"]
        shown = f"{value:,.2f}" if isinstance(value, float) else f"{value:,}"
        print(f"{key:<{width}}  {shown:>14}  {row['unit']:<12}  {conditions}")


def markdown_table(rows: dict[str, dict[str, Any]]) -> str:
    """The results as a Markdown table: key, value, unit, target, conditions (their summary when present)."""

    def cell(text: object) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| benchmark | value | unit | target | conditions |", "| --- | ---: | --- | --- | --- |"]
    for key, row in rows.items():
        conditions = row["conditions"]
        if isinstance(conditions, dict):
            conditions = conditions.get("summary") or json.dumps(conditions, ensure_ascii=False)
        value = row["value"]
        shown = f"{value:,.3f}" if isinstance(value, float) and value < 10 else f"{value:,.0f}"
        target = cell(row.get("target", ""))
        lines.append(f"| `{key}` | {shown} | {cell(row['unit'])} | {target} | {cell(conditions)} |")
    return "\n".join(lines)


def area_database_url(url: str, area: str) -> str:
    """The database of one area's benchmarks: the bench database's name with ``_<area>`` appended."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}_{area}"))


def run_areas_apart(keys: list[str], areas: list[str], args: argparse.Namespace) -> int:
    """Run each area's benchmarks in a child process on a database of its own. Their data sets must not meet:
    a job such as auto-confirmation acts on every due lesson in its database, including another area's
    synthetic ones."""
    failed = []
    for area in areas:
        chosen = [key for key in keys if key.split(".", 1)[0] == area]
        command = [sys.executable, str(Path(__file__).resolve()), "--results", str(args.results)]
        command += ["--only", *chosen]
        if args.fresh:
            command.append("--fresh")
        area_url = area_database_url(os.environ["DATABASE_URL"], area)
        env = dict(os.environ, BENCH_AREA=area, DATABASE_URL=area_url)
        database = urlsplit(env["DATABASE_URL"]).path[1:]
        print(f"bench: {area}: {len(chosen)} benchmark(s) on database {database}", flush=True)
        if subprocess.run(command, env=env, check=False).returncode != 0:
            failed.append(area)
    rows = json.loads(args.results.read_text()) if args.results.exists() else {}
    print()
    print_table({key: rows[key] for key in keys if key in rows})
    if failed:
        print(f"bench: failed: {', '.join(failed)}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.markdown:
        rows = json.loads(args.results.read_text()) if args.results.exists() else {}
        print(markdown_table(rows) if rows else f"bench: no results in {args.results}")
        return 0
    configure_database()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.conf import settings

    # As in production: with DEBUG on (the development default) Django logs every query it runs, which
    # costs the ORM paths time production never pays.
    settings.DEBUG = False
    registry = load_benchmarks()

    if args.list:
        print("\n".join(sorted(registry)) or "no benchmarks registered")
        return 0
    keys = args.only or sorted(registry)
    unknown = [key for key in keys if key not in registry]
    if unknown:
        known = ", ".join(sorted(registry)) or "none"
        print(f"bench: unknown benchmark(s): {', '.join(unknown)}; known: {known}")
        return 2
    if not keys:
        print("bench: no benchmarks registered yet (add bench/bench_*.py modules; see bench/registry.py)")
        return 0

    if "BENCH_AREA" not in os.environ:  # this process chooses; a child per area measures
        return run_areas_apart(keys, sorted({key.split(".", 1)[0] for key in keys}), args)

    from bench.registry import TARGETS

    prepare_database(fresh=args.fresh)
    reference = machine_reference()
    print(f"bench: machine reference (fixed workloads, ms): {reference}", flush=True)
    new: dict[str, dict[str, Any]] = {}
    for key in keys:
        print(f"bench: running {key} ...", flush=True)
        started = time.perf_counter()
        value, unit, conditions = registry[key]()
        print(f"bench: {key} done in {time.perf_counter() - started:.1f} s", flush=True)
        new[key] = {
            "value": value,
            "unit": unit,
            "target": TARGETS.get(key, ""),
            "conditions": conditions,
            "machine_reference": reference,
        }
        # Merge after each benchmark so a failure later keeps what was measured.
        merge_results(args.results, {key: new[key]})
    print()
    print_table(new)
    shown_path = args.results.relative_to(ROOT) if args.results.is_relative_to(ROOT) else args.results
    print(f"\nbench: results merged into {shown_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
