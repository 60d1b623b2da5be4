-- The audit trail is append-only on SQLite too.
CREATE TRIGGER custody_auditevent_no_update BEFORE UPDATE ON custody_auditevent
BEGIN SELECT RAISE(ABORT, 'custody: UPDATE on custody_auditevent is not allowed; the audit trail is append-only'); END;
CREATE TRIGGER custody_auditevent_no_delete BEFORE DELETE ON custody_auditevent
BEGIN SELECT RAISE(ABORT, 'custody: DELETE on custody_auditevent is not allowed; the audit trail is append-only'); END;
