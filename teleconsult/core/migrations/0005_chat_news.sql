-- Chat news in the notification outbox: "thread T has news for user U", for a
-- member with no live connection, so a clinic can send a push or an SMS. The
-- same worker, leases, retries and signed webhook as appointment notifications.
--
-- A row is about an appointment or about a (thread, member), never both. Like
-- every outbox row it carries ids only: no message content, no names.

ALTER TABLE notification_outbox
    ALTER COLUMN appointment_id DROP NOT NULL,
    ADD COLUMN thread_id uuid,
    ADD COLUMN user_id uuid,
    -- The seq of the message that raised the row. Not sent anywhere: it lets a
    -- client's retry of a message already announced raise nothing new.
    ADD COLUMN thread_seq bigint CHECK (thread_seq > 0),
    -- The subject is a member of the thread; deleting the thread deletes its news.
    ADD CONSTRAINT notification_outbox_thread_member_fkey
        FOREIGN KEY (thread_id, user_id) REFERENCES thread_members (thread_id, user_id)
        ON DELETE CASCADE,
    ADD CONSTRAINT notification_outbox_one_subject CHECK (
        (appointment_id IS NOT NULL AND thread_id IS NULL AND user_id IS NULL
            AND thread_seq IS NULL)
        OR (appointment_id IS NULL AND thread_id IS NOT NULL AND user_id IS NOT NULL
            AND thread_seq IS NOT NULL)
    );

-- Coalescing: at most one unsent notification per (thread, user, kind). A burst
-- of messages to an offline member makes one row (the enqueue is ON CONFLICT DO
-- NOTHING); once the row is sent, given up or withdrawn, the next message makes
-- a new one.
CREATE UNIQUE INDEX notification_outbox_thread_news_pending
    ON notification_outbox (thread_id, user_id, kind)
    WHERE thread_id IS NOT NULL AND sent_at IS NULL AND cancelled_at IS NULL
        AND failed_at IS NULL;

-- Every row of a (thread, user), sent or not: the retry check and the cascade.
CREATE INDEX notification_outbox_thread_news
    ON notification_outbox (thread_id, user_id, thread_seq)
    WHERE thread_id IS NOT NULL;
