"""The custody domain: contracts, lessons, refunds and closures (校外培训预收费资金监管)."""
