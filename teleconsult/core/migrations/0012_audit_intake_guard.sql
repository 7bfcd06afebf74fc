-- Least privilege (README, "Database"): the server's runtime role records audit
-- events into audit_intake, and its sequencer takes them out again, into the
-- chain (teleconsult/audit/sequencer.py: one statement deletes a batch from the
-- intake and inserts it, chained, into audit_log). So the role needs DELETE on
-- the intake, but nothing may use it to drop an event before it is chained.
--
-- At the end of each statement that deleted intake rows, every deleted row must
-- be in audit_log among the first rows chained by this transaction (those past
-- the head, which the sequencer moves only after the move), as many as were
-- deleted. Compared as a multiset over all the columns the two tables share, so
-- duplicates count.
-- A plain DELETE is refused, for the table owner too.

CREATE FUNCTION audit_intake_check_taken() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    head_seq bigint;
    taken bigint;
    lost bigint;
BEGIN
    SELECT seq INTO head_seq FROM audit_head;
    SELECT count(*) INTO taken FROM taken_rows;
    -- ORDER BY seq LIMIT: an index range scan past the head, whatever the statistics say.
    SELECT count(*) INTO lost FROM (
        SELECT occurred_at, actor_id, actor_role, clinic_id, action, object_type, object_id,
               ip, outcome, detail
        FROM taken_rows
        EXCEPT ALL
        SELECT occurred_at, actor_id, actor_role, clinic_id, action, object_type, object_id,
               ip, outcome, detail
        FROM (
            SELECT * FROM audit_log WHERE seq > COALESCE(head_seq, 0) ORDER BY seq LIMIT taken
        ) AS chained
    ) AS missing;
    IF lost > 0 THEN
        RAISE EXCEPTION 'audit intake rows leave only into the audit chain (% would be lost)', lost
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER audit_intake_only_into_chain
    AFTER DELETE ON audit_intake
    REFERENCING OLD TABLE AS taken_rows
    FOR EACH STATEMENT EXECUTE FUNCTION audit_intake_check_taken();
