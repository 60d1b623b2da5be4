-- The ledger's last line of defence on PostgreSQL. A bug in Python cannot break these.

-- 1. History is append-only: no UPDATE or DELETE of entries, postings, chain links or checkpoints.
CREATE OR REPLACE FUNCTION ledger_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger: % on % is not allowed; history is append-only (correct with a reversing entry)',
        TG_OP, TG_TABLE_NAME USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE TRIGGER ledger_entry_append_only BEFORE UPDATE OR DELETE ON ledger_entry
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_change();
CREATE TRIGGER ledger_posting_append_only BEFORE UPDATE OR DELETE ON ledger_posting
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_change();
CREATE TRIGGER ledger_chainlink_append_only BEFORE UPDATE OR DELETE ON ledger_chainlink
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_change();
CREATE TRIGGER ledger_checkpoint_append_only BEFORE UPDATE OR DELETE ON ledger_checkpoint
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_change();

-- 2. Every entry balances per currency and has at least two postings, checked at COMMIT (deferred), so the
--    entry and its postings may be written in any order within one transaction.
CREATE OR REPLACE FUNCTION ledger_check_entry_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n integer;
    bad record;
BEGIN
    SELECT count(*) INTO n FROM ledger_posting WHERE entry_id = NEW.id;
    IF n < 2 THEN
        RAISE EXCEPTION 'ledger: entry % has % postings; at least 2 are required', NEW.id, n
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT p.currency, sum(p.amount) AS total INTO bad FROM ledger_posting p
        WHERE p.entry_id = NEW.id GROUP BY p.currency HAVING sum(p.amount) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger: entry % does not balance: postings in % sum to %', NEW.id, bad.currency, bad.total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER ledger_entry_balanced AFTER INSERT ON ledger_entry
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_check_entry_balanced();

-- 3. Postings may only be added to an entry in the transaction that creates it (then 2. checks the sum).
--    A visible entry whose inserting transaction is still in progress can only be our own (or a savepoint's).
CREATE OR REPLACE FUNCTION ledger_xid8(x xid) RETURNS xid8 LANGUAGE sql STABLE AS $$
    -- Widen a 32-bit xid to the 64-bit xid nearest the current one (a savepoint's xid is above it).
    SELECT (cur + (((x::text::bigint - (cur & 4294967295)) % 4294967296 + 6442450944) % 4294967296
                   - 2147483648))::text::xid8
    FROM (SELECT pg_current_xact_id()::text::bigint AS cur) c
$$;

CREATE OR REPLACE FUNCTION ledger_postings_join_new_entries() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    stale bigint;
BEGIN
    SELECT n.entry_id INTO stale FROM new_postings n JOIN ledger_entry e ON e.id = n.entry_id
        WHERE pg_xact_status(ledger_xid8(e.xmin)) IS DISTINCT FROM 'in progress' LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger: postings cannot be added to entry %, which is already committed', stale
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER ledger_posting_new_entries_only AFTER INSERT ON ledger_posting
    REFERENCING NEW TABLE AS new_postings FOR EACH STATEMENT EXECUTE FUNCTION ledger_postings_join_new_entries();

-- 4. A pending transfer changes once, from pending to posted, voided or expired, and is never deleted.
CREATE OR REPLACE FUNCTION ledger_pending_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'ledger: pending transfer % cannot be deleted', OLD.id USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF OLD.state <> 'pending' THEN
        RAISE EXCEPTION 'ledger: pending transfer % is already %', OLD.id, OLD.state
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF NEW.state NOT IN ('posted', 'voided', 'expired')
       OR (NEW.id, NEW.idempotency_key, NEW.request_hash, NEW.kind, NEW.debit_account_id, NEW.credit_account_id,
           NEW.amount, NEW.currency, NEW.created_at, NEW.expires_at, NEW.metadata)
          IS DISTINCT FROM
          (OLD.id, OLD.idempotency_key, OLD.request_hash, OLD.kind, OLD.debit_account_id, OLD.credit_account_id,
           OLD.amount, OLD.currency, OLD.created_at, OLD.expires_at, OLD.metadata) THEN
        RAISE EXCEPTION 'ledger: pending transfer % may only change state once', OLD.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER ledger_pending_once BEFORE UPDATE OR DELETE ON ledger_pendingtransfer
    FOR EACH ROW EXECUTE FUNCTION ledger_pending_transition();

-- 5. An account keeps its identity: code, type, currency and limit never change; accounts are never deleted.
CREATE OR REPLACE FUNCTION ledger_account_identity() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'ledger: account % cannot be deleted', OLD.code USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF (NEW.id, NEW.code, NEW.type, NEW.currency, NEW.debits_must_not_exceed_credits, NEW.credits_must_not_exceed_debits)
       IS DISTINCT FROM
       (OLD.id, OLD.code, OLD.type, OLD.currency, OLD.debits_must_not_exceed_credits, OLD.credits_must_not_exceed_debits)
    THEN
        RAISE EXCEPTION 'ledger: account % keeps its code, type, currency and limit', OLD.code
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;

-- Only UPDATEs that name an identity column fire it, so the hot path (totals only) pays nothing.
CREATE TRIGGER ledger_account_identity BEFORE UPDATE OF id, code, type, currency, debits_must_not_exceed_credits,
    credits_must_not_exceed_debits OR DELETE ON ledger_account
    FOR EACH ROW EXECUTE FUNCTION ledger_account_identity();
