"""Print bench/results.json as the README's Markdown table; ``--write`` replaces it in README.md."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"


def summary(conditions: object) -> str:
    if isinstance(conditions, dict):
        return str(conditions.get("summary", ""))
    return str(conditions)


def machine(row: dict[str, object]) -> str:
    """The run's machine reference (bench/run.py): Python / PostgreSQL fixed workloads; lower is faster."""
    reference = row.get("machine_reference")
    if not isinstance(reference, dict):
        return "—"
    return f"{reference.get('python_ms')} / {reference.get('postgresql_ms')}"


def table(results: dict[str, dict[str, object]]) -> str:
    lines = [
        "| figure | value | unit | target | machine ref. (ms) | conditions |",
        "| --- | ---: | --- | --- | --- | --- |",
    ]
    for key in sorted(results):
        row = results[key]
        value = row.get("value")
        shown = (
            f"{value:,.2f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else value
        )
        cond = summary(row.get("conditions", "")).replace("|", "/").replace("\n", " ")
        unit, target = row.get("unit", ""), row.get("target", "")
        lines.append(f"| `{key}` | {shown} | {unit} | {target} | {machine(row)} | {cond} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="replace the table in README.md")
    args = parser.parse_args()
    results = json.loads((ROOT / "bench" / "results.json").read_text())
    text = table(results)
    if not args.write:
        print(text)
        return
    readme = ROOT / "README.md"
    content = readme.read_text()
    head, rest = content.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{text}\n{END}{tail}")


if __name__ == "__main__":
    main()
