"""Benchmarks for custody-ledger; run with `make bench` (see bench/run.py)."""
