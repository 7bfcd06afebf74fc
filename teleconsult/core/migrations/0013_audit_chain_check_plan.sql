-- The chain check of 0009 joined the statement's new rows (a transition table,
-- which has no statistics) to audit_log on seq - 1; with stale statistics the
-- planner scanned the whole audit_log for each batch (9-12 ms per 10-row batch,
-- measured with track_functions). Same rules, other plan: each new row's
-- predecessor is the row before it in the same statement (a window over the
-- new rows), and only the statement's first row looks its predecessor up in
-- audit_log, by primary key.
CREATE OR REPLACE FUNCTION audit_log_check_chain() RETURNS trigger
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
    WITH ordered AS (
        SELECT n.seq, n.prev_hash,
               lag(n.seq) OVER w AS before_seq,
               lag(n.hash) OVER w AS before_hash
        FROM new_rows AS n
        WINDOW w AS (ORDER BY n.seq)
    )
    SELECT o.seq INTO bad
    FROM ordered AS o
    WHERE o.seq <= head.seq
       OR (o.before_seq IS NOT NULL
           AND (o.seq <> o.before_seq + 1 OR o.prev_hash <> o.before_hash))
       OR (o.before_seq IS NULL AND o.seq = head.seq + 1 AND o.prev_hash <> head.hash)
       OR (o.before_seq IS NULL AND o.seq > head.seq + 1
           AND o.prev_hash IS DISTINCT FROM
               (SELECT p.hash FROM audit_log AS p WHERE p.seq = o.seq - 1))
    ORDER BY o.seq
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'audit row seq % does not extend the chain (head is at seq %)',
            bad, head.seq
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NULL;
END;
$$;
