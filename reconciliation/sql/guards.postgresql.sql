-- The reconciliation log is append-only on PostgreSQL: no UPDATE or DELETE of reconciliation_reconciliationevent.
CREATE OR REPLACE FUNCTION reconciliation_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'reconciliation: % on % is not allowed; the reconciliation log is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE TRIGGER reconciliation_reconciliationevent_append_only BEFORE UPDATE OR DELETE ON reconciliation_reconciliationevent
    FOR EACH STATEMENT EXECUTE FUNCTION reconciliation_reject_change();
