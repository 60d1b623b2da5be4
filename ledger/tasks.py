"""Background jobs of the ledger: thin wrappers over its services."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="ledger.seal_chain")
def seal_chain() -> int:
    from ledger import chain

    return chain.seal()


@shared_task(name="ledger.expire_pending")
def expire_pending() -> int:
    from ledger import services

    return services.expire_pending()


@shared_task(name="ledger.checkpoint")
def checkpoint() -> int:
    """A checkpoint of the chain head and the entry log's Merkle root (the custody domain's daily
    checkpoint also signs every contract's held value)."""
    from ledger import proofs

    return proofs.create_checkpoint_with_proofs().pk
