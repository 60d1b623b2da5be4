-- The audit trail is append-only on PostgreSQL: no UPDATE or DELETE of custody_auditevent, whoever asks.
CREATE OR REPLACE FUNCTION custody_audit_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'custody: % on % is not allowed; the audit trail is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE TRIGGER custody_auditevent_append_only BEFORE UPDATE OR DELETE ON custody_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION custody_audit_reject_change();
