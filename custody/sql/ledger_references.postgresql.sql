-- Custody rows that point into the ledger, checked by triggers instead of foreign keys on PostgreSQL (migration
-- 0012): the entry a refund posted (custody_refund.entry_id) and the hold behind a payout instruction
-- (custody_payoutinstruction.pending_transfer_id). A deferred foreign key ran one query per row at COMMIT,
-- 20,000 of a 10,000-contract closure's checks; an insert statement is now checked once, probing each row's
-- reference (a scalar subquery: an index probe whatever the statement's size, see ledger/sql/guards), and an
-- UPDATE only where it changes the reference. Entries are never updated or deleted and holds are never deleted
-- and keep their id (ledger/sql/guards.postgresql.sql, 1. and 4.), so the referencing side is all that needs
-- watching. Idempotent.

CREATE OR REPLACE FUNCTION custody_new_refunds_entries_exist() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing bigint;
BEGIN
    SELECT min(r.entry_id) INTO missing FROM new_refunds r
    WHERE r.entry_id IS NOT NULL AND (SELECT e.id FROM ledger_entry e WHERE e.id = r.entry_id) IS NULL;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'custody: a refund cannot refer to ledger entry %, which does not exist', missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER custody_refund_entry_exists AFTER INSERT ON custody_refund
    REFERENCING NEW TABLE AS new_refunds FOR EACH STATEMENT EXECUTE FUNCTION custody_new_refunds_entries_exist();

CREATE OR REPLACE FUNCTION custody_refund_entry_exists() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM ledger_entry e WHERE e.id = NEW.entry_id) THEN
        RAISE EXCEPTION 'custody: a refund cannot refer to ledger entry %, which does not exist', NEW.entry_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER custody_refund_entry_changed AFTER UPDATE OF entry_id ON custody_refund
    FOR EACH ROW WHEN (NEW.entry_id IS NOT NULL AND NEW.entry_id IS DISTINCT FROM OLD.entry_id)
    EXECUTE FUNCTION custody_refund_entry_exists();

CREATE OR REPLACE FUNCTION custody_new_payouts_holds_exist() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing bigint;
BEGIN
    SELECT min(p.pending_transfer_id) INTO missing FROM new_payouts p
    WHERE (SELECT h.id FROM ledger_pendingtransfer h WHERE h.id = p.pending_transfer_id) IS NULL;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'custody: a payout instruction cannot refer to pending transfer %, which does not exist',
            missing USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER custody_payout_hold_exists AFTER INSERT ON custody_payoutinstruction
    REFERENCING NEW TABLE AS new_payouts FOR EACH STATEMENT EXECUTE FUNCTION custody_new_payouts_holds_exist();

CREATE OR REPLACE FUNCTION custody_payout_hold_exists() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM ledger_pendingtransfer h WHERE h.id = NEW.pending_transfer_id) THEN
        RAISE EXCEPTION 'custody: a payout instruction cannot refer to pending transfer %, which does not exist',
            NEW.pending_transfer_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER custody_payout_hold_changed AFTER UPDATE OF pending_transfer_id
    ON custody_payoutinstruction
    FOR EACH ROW WHEN (NEW.pending_transfer_id IS DISTINCT FROM OLD.pending_transfer_id)
    EXECUTE FUNCTION custody_payout_hold_exists();
