-- Audit intake, batch chaining and signed checkpoints (teleconsult/audit/).
--
-- Callers no longer chain their own row under a global lock. They insert
-- their event into audit_intake inside their own transaction (one INSERT, no
-- lock), so the event commits or rolls back with the change it describes.
-- One sequencer per cluster (teleconsult/audit/sequencer.py) moves committed
-- intake rows into the chain in batches: in one transaction it locks the head,
-- deletes a batch from the intake, inserts the chained rows with one
-- statement, moves the head and stores a checkpoint for the batch's last row,
-- signed with a key the database never holds.

-- Same shape and checks as audit_log, without seq and hashes. No foreign
-- keys: audit rows must outlive the accounts they mention.
CREATE TABLE audit_intake (
    id bigserial PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor_id uuid,
    actor_role text CHECK (length(actor_role) BETWEEN 1 AND 64),
    clinic_id uuid,
    action text NOT NULL CHECK (
        length(action) BETWEEN 1 AND 100
        AND action ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$'
    ),
    object_type text CHECK (length(object_type) BETWEEN 1 AND 64),
    object_id text CHECK (length(object_id) BETWEEN 1 AND 200),
    ip text CHECK (length(ip) BETWEEN 1 AND 64),
    outcome text NOT NULL CHECK (outcome IN ('success', 'failure', 'denied')),
    detail jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(detail) = 'object')
);

-- A queue: rows live for about one sequencer interval, so vacuum it often.
ALTER TABLE audit_intake SET (
    autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 10000
);

-- Intake rows are taken (deleted) by the sequencer, never edited.
CREATE TRIGGER audit_intake_refuse_update
    BEFORE UPDATE ON audit_intake
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();

CREATE TRIGGER audit_intake_refuse_truncate
    BEFORE TRUNCATE ON audit_intake
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();

-- One signed checkpoint per chained batch: Ed25519 over a domain prefix, the
-- seq and the hash of the batch's last row (teleconsult/audit/checkpoints.py).
-- The same lines are appended to a file outside the database, so a rewrite of
-- the chain together with this table is still caught.
CREATE TABLE audit_checkpoints (
    seq bigint PRIMARY KEY CHECK (seq > 0),
    hash bytea NOT NULL CHECK (length(hash) = 32),
    key_id text NOT NULL CHECK (key_id ~ '^[0-9a-f]{16}$'),
    signature bytea NOT NULL CHECK (length(signature) = 64),
    signed_at timestamptz NOT NULL
);

CREATE FUNCTION audit_checkpoint_check_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM audit_log WHERE seq = NEW.seq AND hash = NEW.hash) THEN
        RAISE EXCEPTION 'audit checkpoint at seq % does not match the chain', NEW.seq
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER audit_checkpoints_check_insert
    BEFORE INSERT ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_checkpoint_check_insert();

CREATE TRIGGER audit_checkpoints_refuse_update_delete
    BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();

CREATE TRIGGER audit_checkpoints_refuse_truncate
    BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();

-- Rows may now arrive many at a time. Instead of comparing each row with the
-- head (0002), check each statement's new rows together: every row must chain
-- from its predecessor, that is the head for seq = head + 1 and otherwise the
-- row at seq - 1 (inserted by this statement or earlier in this transaction).
DROP TRIGGER audit_log_check_insert ON audit_log;
DROP FUNCTION audit_log_check_insert();

CREATE FUNCTION audit_log_check_chain() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    head audit_head%ROWTYPE;
    bad bigint;
BEGIN
    SELECT * INTO head FROM audit_head;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'audit_head row is missing; the audit trail was tampered with'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    SELECT n.seq INTO bad
    FROM new_rows AS n
    LEFT JOIN audit_log AS p ON p.seq = n.seq - 1
    WHERE n.seq <= head.seq
       OR (n.seq = head.seq + 1 AND n.prev_hash <> head.hash)
       OR (n.seq > head.seq + 1 AND (p.seq IS NULL OR n.prev_hash <> p.hash))
    ORDER BY n.seq
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'audit row seq % does not extend the chain (head is at seq %)',
            bad, head.seq
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER audit_log_check_chain
    AFTER INSERT ON audit_log
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_check_chain();

-- The head moves forward by any number of rows, but only onto a stored row
-- whose hash it copies. Since every inserted row chains from its predecessor,
-- that row chains back to the old head. audit_log_check_head_moved (0002)
-- still checks at commit that the head moved past every inserted row.
CREATE OR REPLACE FUNCTION audit_head_check_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.singleton IS DISTINCT FROM OLD.singleton OR NEW.seq <= OLD.seq THEN
        RAISE EXCEPTION 'audit_head may only move forward (from seq % to %)',
            OLD.seq, NEW.seq
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM audit_log WHERE seq = NEW.seq AND hash = NEW.hash) THEN
        RAISE EXCEPTION 'audit_head must point at audit row seq % and copy its hash', NEW.seq
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END;
$$;
