"""Reconciliation of bank statements against the ledger: matches, breaks and corrections."""
