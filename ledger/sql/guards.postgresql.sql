-- The ledger's last line of defence on PostgreSQL. A bug in Python cannot break these.
-- Idempotent: migrations 0002, 0004, 0008, 0009, 0010, 0012, 0013 and 0014 all run the current version of this file
-- (0004 upgrades databases that 0002 set up with the earlier per-entry deferred trigger; 0008 adds the account
-- check of 3b, 0009 the pending-transfer check of 3c, 0010 the seal queue's check of 3d, 0012 the range checks,
-- 0013 the holds' account check of 3e, 0014 the WHEN condition of 4.).
--
-- How the statement triggers' queries are written. PL/pgSQL keeps the plan of a query without parameters for
-- the whole session, planned for the size of the transition table at its first call. So every existence test
-- is a scalar subquery, per row or per distinct value, which is an index probe at any size: an anti-join
-- planned for a 2,500-entry batch hashed a whole table, and every later transfer of the session paid that
-- again. The first query of each trigger is all a transfer needs (each query costs tens of microseconds to
-- start, and so does each node in it: probing an entry's id range or a statement's distinct accounts
-- costs a transfer more than the probes it saves). Larger statements take further queries: several rows
-- whose ids are adjacent (a batch's: n ids spanning exactly n values) are checked with one index range scan
-- instead of a probe per row, and postings' accounts once per distinct account.

-- 1. History is append-only: no UPDATE or DELETE of entries, postings, chain links or checkpoints.
CREATE OR REPLACE FUNCTION ledger_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger: % on % is not allowed; history is append-only (correct with a reversing entry)',
        TG_OP, TG_TABLE_NAME USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE OR REPLACE TRIGGER ledger_entry_append_only BEFORE UPDATE OR DELETE ON ledger_entry
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_change();
CREATE OR REPLACE TRIGGER ledger_posting_append_only BEFORE UPDATE OR DELETE ON ledger_posting
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_change();
CREATE OR REPLACE TRIGGER ledger_chainlink_append_only BEFORE UPDATE OR DELETE ON ledger_chainlink
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_change();
CREATE OR REPLACE TRIGGER ledger_checkpoint_append_only BEFORE UPDATE OR DELETE ON ledger_checkpoint
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_change();

-- 2. Every entry balances per currency and has at least two postings, guaranteed at COMMIT. Within one
--    transaction the entry and its postings may be written over several statements (entry first: see 3.).
--
--    Checked per statement, deferred only when needed. After each statement that inserts postings, a
--    statement-level trigger looks at the set of postings the statement added to each entry: if that set has
--    >= 2 postings summing to zero per currency, nothing more is needed; otherwise the entry is queued in
--    ledger_entry_balance_due. After each statement that inserts entries, an entry that has no postings yet is
--    queued too. A queued entry is checked again, over all its postings, by a deferred constraint trigger at
--    COMMIT, which refuses the COMMIT if it does not balance.
--    Why that suffices: postings are append-only and only join entries of the current transaction (3.), so an
--    entry's postings at COMMIT are the union of the sets its statements added. Balanced sets add up to a
--    balanced entry with >= 2 postings; any other set, and an entry with no set at all, was queued. A savepoint
--    rolled back takes its postings, its queue rows and their pending checks with it.
--    So the ledger's own writes (an entry and its balanced postings in one statement) queue nothing and pay no
--    per-entry trigger at COMMIT, while raw SQL that builds an entry over several statements is still checked
--    at COMMIT.
DROP TRIGGER IF EXISTS ledger_entry_balanced ON ledger_entry;
DROP FUNCTION IF EXISTS ledger_check_entry_balanced();
DROP TRIGGER IF EXISTS ledger_posting_new_entries_only ON ledger_posting;
DROP FUNCTION IF EXISTS ledger_postings_join_new_entries();
DROP FUNCTION IF EXISTS ledger_xid8(xid);

CREATE TABLE IF NOT EXISTS ledger_entry_balance_due (entry_id bigint NOT NULL);
COMMENT ON TABLE ledger_entry_balance_due IS
    'Entries to check for balance at COMMIT (see ledger/sql/guards.postgresql.sql); empty outside transactions.';

CREATE OR REPLACE FUNCTION ledger_entry_balance_failure(entry bigint) RETURNS text LANGUAGE sql STABLE AS $$
    -- Why the entry does not balance, or NULL if it does.
    SELECT CASE
        WHEN coalesce(sum(n), 0) < 2 THEN
            format('ledger: entry %s has %s postings; at least 2 are required', entry, coalesce(sum(n), 0))
        ELSE (SELECT format('ledger: entry %s does not balance: postings in %s sum to %s', entry, currency, total)
              FROM (SELECT p.currency, sum(p.amount) AS total FROM ledger_posting p WHERE p.entry_id = entry
                    GROUP BY p.currency) t
              WHERE total <> 0 ORDER BY currency LIMIT 1)
    END
    FROM (SELECT count(*) AS n FROM ledger_posting WHERE entry_id = entry) c
$$;

CREATE OR REPLACE FUNCTION ledger_check_balance_due() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    failure text := ledger_entry_balance_failure(NEW.entry_id);
BEGIN
    IF failure IS NOT NULL THEN
        RAISE EXCEPTION '%', failure USING ERRCODE = 'check_violation';
    END IF;
    DELETE FROM ledger_entry_balance_due WHERE entry_id = NEW.entry_id;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS ledger_entry_balanced_at_commit ON ledger_entry_balance_due;
CREATE CONSTRAINT TRIGGER ledger_entry_balanced_at_commit AFTER INSERT ON ledger_entry_balance_due
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_check_balance_due();

-- After each statement that inserts entries: an entry without postings yet is queued (its postings must follow,
-- checked at COMMIT), and 3c. below. One query for both when the statement inserts one entry.
CREATE OR REPLACE FUNCTION ledger_new_entries_balance() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    s record;
BEGIN
    SELECT count(*) AS n, min(n.id) AS lo, max(n.id) AS hi,
           (SELECT p.entry_id FROM ledger_posting p WHERE p.entry_id = min(n.id) LIMIT 1) IS NOT NULL AS lo_posted,
           -- 3c. The hold an entry posts exists: checked per statement instead of a foreign-key check per
           --     entry at COMMIT (migration 0009). Holds are never deleted and keep their id (4.), so it stays
           --     true.
           min(n.pending_transfer_id) FILTER (WHERE n.pending_transfer_id IS NOT NULL AND (
               SELECT h.id FROM ledger_pendingtransfer h WHERE h.id = n.pending_transfer_id) IS NULL)
               AS missing_hold
    INTO s
    FROM new_entries n;
    IF s.missing_hold IS NOT NULL THEN
        RAISE EXCEPTION 'ledger: an entry cannot post pending transfer %, which does not exist', s.missing_hold
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF s.n = 0 OR (s.n = 1 AND s.lo_posted) THEN
        RETURN NULL;
    END IF;
    -- Several entries with adjacent ids (a batch's) all have postings iff every id of their range has one: one
    -- range scan of the postings' (entry, account) index.
    IF s.n > 1 AND s.lo_posted AND s.hi - s.lo + 1 = s.n
       AND (SELECT count(DISTINCT p.entry_id) FROM ledger_posting p WHERE p.entry_id BETWEEN s.lo AND s.hi) = s.n
    THEN
        RETURN NULL;
    END IF;
    INSERT INTO ledger_entry_balance_due (entry_id)
        SELECT n.id FROM new_entries n
        WHERE (SELECT p.entry_id FROM ledger_posting p WHERE p.entry_id = n.id LIMIT 1) IS NULL;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER ledger_entry_new_balance AFTER INSERT ON ledger_entry
    REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT EXECUTE FUNCTION ledger_new_entries_balance();

-- xmin is a 32-bit xid; widen it to the 64-bit xid nearest the current one (a savepoint's xid is above it).
-- Inlined by the planner (a single-expression SQL function), so it costs what the expression costs.
CREATE OR REPLACE FUNCTION ledger_widen_xid(x xid, cur bigint) RETURNS xid8 LANGUAGE sql IMMUTABLE AS $$
    SELECT (cur + (((x::text::bigint - (cur & 4294967295)) % 4294967296 + 6442450944) % 4294967296
                   - 2147483648))::text::xid8
$$;

-- 3. Postings may only be added to an entry that exists and was inserted by the current transaction (or one
--    of its savepoints); a visible entry whose inserting transaction is still in progress can only be ours.
--    So a committed entry never changes, and another transaction's entry cannot be joined in a race either
--    (it is not visible until it commits, and then it is committed).

CREATE OR REPLACE FUNCTION ledger_new_postings_balance() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    cur bigint := pg_current_xact_id()::text::bigint;
    s record;
    touched bigint;
    unbalanced bigint[];
    owned bigint := 0;
    owner record;
    missing bigint;
BEGIN
    -- One query for what every statement needs: the entries' id range, whether the postings are all in one
    -- currency and their sum, the first entry's inserting (sub)transaction (NULL if it does not exist), and
    -- whether its first and last accounts exist (3b. below). Each query a trigger runs costs tens of
    -- microseconds to start, more than a two-posting statement's work, so the common case (a transfer: one
    -- entry, one currency, two accounts) needs no other query.
    SELECT count(*) AS n, min(p.entry_id) AS lo, max(p.entry_id) AS hi,
           min(p.currency) = max(p.currency) AS one_currency, sum(p.amount) AS total,
           (SELECT e.xmin FROM ledger_entry e WHERE e.id = min(p.entry_id)) AS lo_xmin,
           min(p.account_id) AS first_account, max(p.account_id) AS last_account,
           (SELECT a.id FROM ledger_account a WHERE a.id = min(p.account_id)) IS NULL AS first_missing,
           (SELECT a.id FROM ledger_account a WHERE a.id = max(p.account_id)) IS NULL AS last_missing
    INTO s
    FROM new_postings p;
    IF s.n = 0 THEN
        RETURN NULL;  -- e.g. a transfer replayed: its key existed, so nothing was inserted
    END IF;
    -- 3b. Each posting's account exists: checked per statement instead of a foreign-key check per posting at
    --     COMMIT (migration 0008). Accounts are never deleted and keep their id (5.), so it stays true. Two
    --     postings have no account but their first and last; more take one probe per distinct account (a
    --     batch's postings name far fewer accounts than there are postings).
    IF s.n > 2 THEN
        SELECT min(d.account_id) INTO missing
        FROM (SELECT DISTINCT account_id FROM new_postings) d
        WHERE (SELECT a.id FROM ledger_account a WHERE a.id = d.account_id) IS NULL;
    ELSIF s.first_missing THEN
        missing := s.first_account;
    ELSIF s.last_missing THEN
        missing := s.last_account;
    END IF;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'ledger: a posting cannot be on account %, which does not exist', missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;

    IF s.lo = s.hi AND s.one_currency THEN
        -- One entry, one currency: its set is balanced iff it has >= 2 postings summing to zero (2.), and its
        -- one inserting (sub)transaction must be ours (3.).
        IF s.lo_xmin IS NULL THEN
            RAISE EXCEPTION 'ledger: postings cannot be added to entry %, which does not exist (insert the entry first)',
                s.lo USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        IF pg_xact_status(ledger_widen_xid(s.lo_xmin, cur)) IS DISTINCT FROM 'in progress' THEN
            RAISE EXCEPTION 'ledger: postings cannot be added to entry %, which is already committed',
                s.lo USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        IF s.n < 2 OR s.total <> 0 THEN
            INSERT INTO ledger_entry_balance_due (entry_id) VALUES (s.lo);
        END IF;
        RETURN NULL;
    END IF;

    -- 2. (see above): the statement's postings of each entry must be >= 2 and sum to zero per currency, or
    --    the entry is checked again at COMMIT. This statement's postings alone are enough: every earlier set
    --    of postings of the entry (earlier statements of this transaction) was balanced or queued too, and
    --    balanced sets add up to a balanced entry. In one currency (a batch's usual case) the groups per
    --    entry and currency are the groups per entry, so one grouping is enough.
    IF s.one_currency THEN
        SELECT count(*), array_agg(entry_id) FILTER (WHERE n < 2 OR total <> 0)
        INTO touched, unbalanced
        FROM (SELECT entry_id, count(*) AS n, sum(amount) AS total FROM new_postings GROUP BY entry_id) per_entry;
    ELSE
        SELECT count(*), array_agg(entry_id) FILTER (WHERE short_or_unbalanced)
        INTO touched, unbalanced
        FROM (
            SELECT entry_id, sum(n) < 2 OR bool_or(total <> 0) AS short_or_unbalanced
            FROM (SELECT entry_id, count(*) AS n, sum(amount) AS total FROM new_postings GROUP BY entry_id, currency) g
            GROUP BY entry_id
        ) per_entry;
    END IF;
    IF unbalanced IS NOT NULL THEN
        INSERT INTO ledger_entry_balance_due (entry_id) SELECT unnest(unbalanced);
    END IF;
    -- 3. Each entry must exist and be ours. One status look-up per inserting (sub)transaction, not per entry
    --    (a batch's entries share one), over the id range the statement touched. When the statement touched
    --    every id of that range (a batch's ids are adjacent), the range is exactly its entries.
    FOR owner IN
        SELECT e.xmin AS xid, count(*) AS n, min(e.id) AS entry_id
        FROM ledger_entry e
        WHERE e.id BETWEEN s.lo AND s.hi
          AND (touched = s.hi - s.lo + 1 OR e.id IN (SELECT entry_id FROM new_postings))
        GROUP BY e.xmin
    LOOP
        owned := owned + owner.n;
        IF pg_xact_status(ledger_widen_xid(owner.xid, cur)) IS DISTINCT FROM 'in progress' THEN
            RAISE EXCEPTION 'ledger: postings cannot be added to entry %, which is already committed',
                owner.entry_id USING ERRCODE = 'integrity_constraint_violation';
        END IF;
    END LOOP;
    IF owned < touched THEN
        SELECT min(n.entry_id) INTO missing FROM new_postings n
            WHERE NOT EXISTS (SELECT 1 FROM ledger_entry e WHERE e.id = n.entry_id);
        RAISE EXCEPTION 'ledger: postings cannot be added to entry %, which does not exist (insert the entry first)',
            missing USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER ledger_posting_new_balance AFTER INSERT ON ledger_posting
    REFERENCING NEW TABLE AS new_postings FOR EACH STATEMENT EXECUTE FUNCTION ledger_new_postings_balance();

-- 3d. The seal queue (ledger_unsealedentry) names only entries that exist: checked per statement instead of a
--     foreign-key check (and a row lock on the entry) per queued entry at COMMIT (migration 0010). Entries
--     are never deleted and keep their id (1.), so it stays true.
CREATE OR REPLACE FUNCTION ledger_queued_entries_exist() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    s record;
    missing bigint;
BEGIN
    SELECT count(*) AS n, min(q.entry_id) AS lo, max(q.entry_id) AS hi,
           (SELECT e.id FROM ledger_entry e WHERE e.id = min(q.entry_id)) IS NOT NULL AS lo_exists
    INTO s
    FROM new_queued q;
    IF s.n = 0 OR (s.n = 1 AND s.lo_exists) THEN
        RETURN NULL;
    END IF;
    -- Several adjacent ids (a batch's) all exist iff the entries' primary key holds every id of their range:
    -- one range scan.
    IF s.n > 1 AND s.lo_exists AND s.hi - s.lo + 1 = s.n
       AND (SELECT count(*) FROM ledger_entry e WHERE e.id BETWEEN s.lo AND s.hi) = s.n
    THEN
        RETURN NULL;
    END IF;
    SELECT min(q.entry_id) INTO missing FROM new_queued q
        WHERE (SELECT e.id FROM ledger_entry e WHERE e.id = q.entry_id) IS NULL;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'ledger: entry %, queued for sealing, does not exist', missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER ledger_unsealedentry_entry_exists AFTER INSERT ON ledger_unsealedentry
    REFERENCING NEW TABLE AS new_queued FOR EACH STATEMENT EXECUTE FUNCTION ledger_queued_entries_exist();

-- 3e. A pending transfer's two accounts exist: checked per statement instead of two foreign-key checks per hold
--     at COMMIT (migration 0013), once per distinct account (a closure batch's 500 holds name 501 accounts, a
--     lesson batch's far fewer). Accounts are never deleted and keep their id (5.), and a hold's accounts never
--     change (4.), so only inserts need the check.
CREATE OR REPLACE FUNCTION ledger_new_holds_accounts_exist() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing bigint;
BEGIN
    SELECT min(d.account_id) INTO missing
    FROM (SELECT h.debit_account_id AS account_id FROM new_holds h
          UNION SELECT h.credit_account_id FROM new_holds h) d
    WHERE (SELECT a.id FROM ledger_account a WHERE a.id = d.account_id) IS NULL;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'ledger: a pending transfer cannot be on account %, which does not exist', missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER ledger_pendingtransfer_accounts_exist AFTER INSERT ON ledger_pendingtransfer
    REFERENCING NEW TABLE AS new_holds FOR EACH STATEMENT EXECUTE FUNCTION ledger_new_holds_accounts_exist();

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

-- The function runs only for a change it refuses: the WHEN condition is its test, evaluated without a
-- PL/pgSQL call for each of the thousands of holds a batch resolves (migration 0014). Deletes always call it.
CREATE OR REPLACE TRIGGER ledger_pending_once BEFORE UPDATE ON ledger_pendingtransfer
    FOR EACH ROW
    WHEN (OLD.state <> 'pending' OR NEW.state NOT IN ('posted', 'voided', 'expired')
          OR (NEW.id, NEW.idempotency_key, NEW.request_hash, NEW.kind, NEW.debit_account_id,
              NEW.credit_account_id, NEW.amount, NEW.currency, NEW.created_at, NEW.expires_at, NEW.metadata)
             IS DISTINCT FROM
             (OLD.id, OLD.idempotency_key, OLD.request_hash, OLD.kind, OLD.debit_account_id,
              OLD.credit_account_id, OLD.amount, OLD.currency, OLD.created_at, OLD.expires_at, OLD.metadata))
    EXECUTE FUNCTION ledger_pending_transition();
CREATE OR REPLACE TRIGGER ledger_pending_no_delete BEFORE DELETE ON ledger_pendingtransfer
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
CREATE OR REPLACE TRIGGER ledger_account_identity BEFORE UPDATE OF id, code, type, currency, debits_must_not_exceed_credits,
    credits_must_not_exceed_debits OR DELETE ON ledger_account
    FOR EACH ROW EXECUTE FUNCTION ledger_account_identity();
