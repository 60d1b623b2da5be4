-- The reconciliation log is append-only on SQLite too.
CREATE TRIGGER reconciliation_reconciliationevent_no_update BEFORE UPDATE ON reconciliation_reconciliationevent
BEGIN SELECT RAISE(ABORT, 'reconciliation: UPDATE on reconciliation_reconciliationevent is not allowed; the reconciliation log is append-only'); END;
CREATE TRIGGER reconciliation_reconciliationevent_no_delete BEFORE DELETE ON reconciliation_reconciliationevent
BEGIN SELECT RAISE(ABORT, 'reconciliation: DELETE on reconciliation_reconciliationevent is not allowed; the reconciliation log is append-only'); END;
