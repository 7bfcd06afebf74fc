-- Append-only, hash-chained audit trail (teleconsult/core/audit/).
--
-- Each row's hash covers the previous row's hash, so an edited, removed or
-- reordered row shows up when the chain is verified. seq is assigned by the
-- writer (previous + 1, no sequence object), so a deleted row leaves a gap.
-- audit_head holds the newest seq and hash: without it, deleting the newest
-- rows would leave a shorter chain that still verifies.
--
-- The triggers below refuse UPDATE, DELETE and TRUNCATE even for the table
-- owner. A superuser can still switch them off (session_replication_role,
-- ALTER TABLE ... DISABLE TRIGGER); the chain is what detects that.

-- No foreign keys to users or clinics: audit rows must outlive the accounts
-- they mention, and a failed login may name no account at all.
CREATE TABLE audit_log (
    seq bigint PRIMARY KEY CHECK (seq > 0),
    occurred_at timestamptz NOT NULL,
    actor_id uuid,
    actor_role text,
    clinic_id uuid,
    action text NOT NULL CHECK (length(action) BETWEEN 1 AND 100),
    object_type text,
    object_id text,
    ip text,
    outcome text NOT NULL CHECK (outcome IN ('success', 'failure', 'denied')),
    detail jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(detail) = 'object'),
    prev_hash bytea NOT NULL CHECK (length(prev_hash) = 32),
    hash bytea NOT NULL CHECK (length(hash) = 32)
);

-- A clinic admin pages through their clinic's rows in seq order.
CREATE INDEX audit_log_clinic ON audit_log (clinic_id, seq);

-- Exactly one row (the boolean key can only be true).
CREATE TABLE audit_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seq bigint NOT NULL CHECK (seq >= 0),
    hash bytea NOT NULL CHECK (length(hash) = 32)
);

INSERT INTO audit_head (seq, hash) VALUES (0, decode(repeat('00', 32), 'hex'));

CREATE FUNCTION audit_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit trail is append-only: % on % is not allowed', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

-- A new row must extend the chain from the current head.
CREATE FUNCTION audit_log_check_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    head audit_head%ROWTYPE;
BEGIN
    SELECT * INTO head FROM audit_head;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'audit_head row is missing; the audit trail was tampered with'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF NEW.seq <> head.seq + 1 OR NEW.prev_hash <> head.hash THEN
        RAISE EXCEPTION 'audit row seq % does not extend the chain (head is at seq %)',
            NEW.seq, head.seq
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END;
$$;

-- Checked at commit: a transaction that inserted a row also moved the head.
CREATE FUNCTION audit_log_check_head_moved() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM audit_head WHERE seq >= NEW.seq) THEN
        RAISE EXCEPTION 'audit row seq % was inserted without moving audit_head', NEW.seq
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NULL;
END;
$$;

-- The head only moves forward, one row at a time, onto the row just written.
CREATE FUNCTION audit_head_check_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.singleton IS DISTINCT FROM OLD.singleton OR NEW.seq <> OLD.seq + 1 THEN
        RAISE EXCEPTION 'audit_head may only move forward by one row (from seq % to %)',
            OLD.seq, NEW.seq
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM audit_log
        WHERE seq = NEW.seq AND hash = NEW.hash AND prev_hash = OLD.hash
    ) THEN
        RAISE EXCEPTION 'audit_head must point at audit row seq % chained from the old head',
            NEW.seq
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER audit_log_refuse_update_delete
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();

CREATE TRIGGER audit_log_refuse_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();

CREATE TRIGGER audit_log_check_insert
    BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_check_insert();

CREATE CONSTRAINT TRIGGER audit_log_check_head_moved
    AFTER INSERT ON audit_log
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION audit_log_check_head_moved();

CREATE TRIGGER audit_head_check_update
    BEFORE UPDATE ON audit_head
    FOR EACH ROW EXECUTE FUNCTION audit_head_check_update();

CREATE TRIGGER audit_head_refuse_insert_delete
    BEFORE INSERT OR DELETE ON audit_head
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();

CREATE TRIGGER audit_head_refuse_truncate
    BEFORE TRUNCATE ON audit_head
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
