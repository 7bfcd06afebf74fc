-- Account notices in the notification outbox: "something happened to account U",
-- told to the account's owner, not to whoever caused it. The first kind is
-- registration_attempt: someone tried to register an address that already has
-- an account (in any clinic). The registration's answer does not say so, so the
-- address cannot be probed; the owner learns of it here. Like every outbox row
-- it carries ids only.
--
-- A row's subject is now an appointment, a thread member, or a user alone.

ALTER TABLE notification_outbox
    DROP CONSTRAINT notification_outbox_one_subject,
    ADD CONSTRAINT notification_outbox_one_subject CHECK (
        (appointment_id IS NOT NULL AND thread_id IS NULL AND user_id IS NULL
            AND thread_seq IS NULL)
        OR (appointment_id IS NULL AND thread_id IS NOT NULL AND user_id IS NOT NULL
            AND thread_seq IS NOT NULL)
        OR (appointment_id IS NULL AND thread_id IS NULL AND user_id IS NOT NULL
            AND thread_seq IS NULL)
    );

-- Coalescing: at most one unsent notice per (user, kind), so a flood of attempts
-- makes one row, not a flood of messages to the owner.
CREATE UNIQUE INDEX notification_outbox_account_notice_pending
    ON notification_outbox (user_id, kind)
    WHERE appointment_id IS NULL AND thread_id IS NULL AND sent_at IS NULL
        AND cancelled_at IS NULL AND failed_at IS NULL;
