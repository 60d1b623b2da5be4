-- The same guards on SQLite, the embedded development database. SQLite has no deferred triggers, so the
-- ledger writes an entry's postings first and the entry last: a posting may only be inserted while its entry
-- does not exist yet, and the entry may only be inserted if its postings balance.

CREATE TRIGGER ledger_entry_no_update BEFORE UPDATE ON ledger_entry
BEGIN SELECT RAISE(ABORT, 'ledger: UPDATE on ledger_entry is not allowed; history is append-only'); END;
CREATE TRIGGER ledger_entry_no_delete BEFORE DELETE ON ledger_entry
BEGIN SELECT RAISE(ABORT, 'ledger: DELETE on ledger_entry is not allowed; history is append-only'); END;
CREATE TRIGGER ledger_posting_no_update BEFORE UPDATE ON ledger_posting
BEGIN SELECT RAISE(ABORT, 'ledger: UPDATE on ledger_posting is not allowed; history is append-only'); END;
CREATE TRIGGER ledger_posting_no_delete BEFORE DELETE ON ledger_posting
BEGIN SELECT RAISE(ABORT, 'ledger: DELETE on ledger_posting is not allowed; history is append-only'); END;
CREATE TRIGGER ledger_chainlink_no_update BEFORE UPDATE ON ledger_chainlink
BEGIN SELECT RAISE(ABORT, 'ledger: UPDATE on ledger_chainlink is not allowed; history is append-only'); END;
CREATE TRIGGER ledger_chainlink_no_delete BEFORE DELETE ON ledger_chainlink
BEGIN SELECT RAISE(ABORT, 'ledger: DELETE on ledger_chainlink is not allowed; history is append-only'); END;
CREATE TRIGGER ledger_checkpoint_no_update BEFORE UPDATE ON ledger_checkpoint
BEGIN SELECT RAISE(ABORT, 'ledger: UPDATE on ledger_checkpoint is not allowed; history is append-only'); END;
CREATE TRIGGER ledger_checkpoint_no_delete BEFORE DELETE ON ledger_checkpoint
BEGIN SELECT RAISE(ABORT, 'ledger: DELETE on ledger_checkpoint is not allowed; history is append-only'); END;

CREATE TRIGGER ledger_posting_before_entry BEFORE INSERT ON ledger_posting
WHEN EXISTS (SELECT 1 FROM ledger_entry WHERE id = NEW.entry_id)
BEGIN SELECT RAISE(ABORT, 'ledger: postings cannot be added to an entry that already exists'); END;

CREATE TRIGGER ledger_entry_balanced BEFORE INSERT ON ledger_entry
WHEN (SELECT COUNT(*) FROM ledger_posting WHERE entry_id = NEW.id) < 2
  OR EXISTS (SELECT 1 FROM ledger_posting WHERE entry_id = NEW.id GROUP BY currency HAVING SUM(amount) <> 0)
BEGIN SELECT RAISE(ABORT, 'ledger: entry does not balance (postings must sum to zero per currency, at least 2)'); END;

CREATE TRIGGER ledger_pending_no_delete BEFORE DELETE ON ledger_pendingtransfer
BEGIN SELECT RAISE(ABORT, 'ledger: pending transfers cannot be deleted'); END;
CREATE TRIGGER ledger_pending_once BEFORE UPDATE ON ledger_pendingtransfer
WHEN OLD.state <> 'pending' OR NEW.state NOT IN ('posted', 'voided', 'expired')
  OR NEW.id <> OLD.id OR NEW.idempotency_key <> OLD.idempotency_key OR NEW.request_hash <> OLD.request_hash
  OR NEW.debit_account_id <> OLD.debit_account_id OR NEW.credit_account_id <> OLD.credit_account_id
  OR NEW.amount <> OLD.amount OR NEW.currency <> OLD.currency OR NEW.kind <> OLD.kind
  OR NEW.created_at <> OLD.created_at OR NEW.metadata <> OLD.metadata
  OR NEW.expires_at IS NOT OLD.expires_at
BEGIN SELECT RAISE(ABORT, 'ledger: a pending transfer may only change state once, from pending'); END;

CREATE TRIGGER ledger_account_no_delete BEFORE DELETE ON ledger_account
BEGIN SELECT RAISE(ABORT, 'ledger: accounts cannot be deleted'); END;
CREATE TRIGGER ledger_account_identity BEFORE UPDATE ON ledger_account
WHEN NEW.id <> OLD.id OR NEW.code <> OLD.code OR NEW.type <> OLD.type OR NEW.currency <> OLD.currency
  OR NEW.debits_must_not_exceed_credits <> OLD.debits_must_not_exceed_credits
  OR NEW.credits_must_not_exceed_debits <> OLD.credits_must_not_exceed_debits
BEGIN SELECT RAISE(ABORT, 'ledger: an account keeps its code, type, currency and limit'); END;
