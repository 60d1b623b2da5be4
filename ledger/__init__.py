"""General double-entry ledger engine: accounts, entries, postings (复式记账引擎)."""
