-- Messaging: client devices and their public keys, threads and their members,
-- end-to-end encrypted messages in per-thread order, delivered/read receipts.
--
-- The server never sees plaintext: an envelope is opaque bytes, encrypted by the
-- sending device for every recipient device. Private keys never reach it.
-- Composite foreign keys over (id, clinic_id) keep every thread, member,
-- creator and appointment in one clinic, so a tenant mix-up is refused here.

-- Lets a thread require that its appointment belongs to the same clinic.
ALTER TABLE appointments ADD CONSTRAINT appointments_id_clinic_key UNIQUE (id, clinic_id);

-- A client device's public keys: X25519 to encrypt to it, Ed25519 to verify what
-- it signs. A signing key is registered once, ever: a revoked (lost or stolen)
-- device cannot come back under its old key.
CREATE TABLE devices (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid NOT NULL REFERENCES users (id),
    x25519_public bytea NOT NULL CHECK (length(x25519_public) = 32),
    ed25519_public bytea NOT NULL CHECK (length(ed25519_public) = 32),
    label text CHECK (length(label) BETWEEN 1 AND 100),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    CONSTRAINT devices_ed25519_public_key UNIQUE (ed25519_public),
    -- Lets a message require that its device belongs to its sender.
    CONSTRAINT devices_id_user_key UNIQUE (id, user_id),
    CONSTRAINT devices_time_order CHECK (revoked_at >= created_at)
);

CREATE INDEX devices_current ON devices (user_id, created_at) WHERE revoked_at IS NULL;

-- last_seq is the newest message's seq. A sender increments it in the
-- transaction that inserts the message: the row lock serialises the senders of
-- one thread, and a rolled-back send takes its number back, so seqs are gapless.
CREATE TABLE threads (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    kind text NOT NULL CHECK (kind IN ('direct', 'care_team')),
    appointment_id uuid UNIQUE,
    created_by uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seq bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    CONSTRAINT threads_id_clinic_key UNIQUE (id, clinic_id),
    CONSTRAINT threads_created_by_fkey
        FOREIGN KEY (created_by, clinic_id) REFERENCES users (id, clinic_id),
    CONSTRAINT threads_appointment_fkey
        FOREIGN KEY (appointment_id, clinic_id) REFERENCES appointments (id, clinic_id)
);

CREATE INDEX threads_clinic ON threads (clinic_id, created_at);

-- A member who leaves keeps the row (left_at set): their receipts and the
-- messages they sent still point at it. Current members have left_at NULL.
CREATE TABLE thread_members (
    thread_id uuid NOT NULL,
    clinic_id uuid NOT NULL,
    user_id uuid NOT NULL,
    role text NOT NULL CHECK (role ~ '^[a-z][a-z_]{0,31}$'),
    joined_at timestamptz NOT NULL DEFAULT now(),
    left_at timestamptz,
    PRIMARY KEY (thread_id, user_id),
    CONSTRAINT thread_members_thread_clinic_fkey
        FOREIGN KEY (thread_id, clinic_id) REFERENCES threads (id, clinic_id) ON DELETE CASCADE,
    CONSTRAINT thread_members_user_clinic_fkey
        FOREIGN KEY (user_id, clinic_id) REFERENCES users (id, clinic_id),
    CONSTRAINT thread_members_time_order CHECK (left_at >= joined_at)
);

CREATE INDEX thread_members_user ON thread_members (user_id) WHERE left_at IS NULL;

-- size is derived, so it cannot disagree with the envelope. The length bound is
-- a backstop; the messaging service enforces its own, smaller limit.
CREATE TABLE messages (
    thread_id uuid NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    seq bigint NOT NULL CHECK (seq > 0),
    client_msg_id text NOT NULL CHECK (length(client_msg_id) BETWEEN 1 AND 128),
    sender_user_id uuid NOT NULL,
    sender_device_id uuid NOT NULL,
    envelope bytea NOT NULL CHECK (length(envelope) BETWEEN 1 AND 1048576),
    size integer GENERATED ALWAYS AS (length(envelope)) STORED,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (thread_id, seq),
    -- Sending the same client message id again stores nothing new.
    CONSTRAINT messages_thread_client_msg_key UNIQUE (thread_id, client_msg_id),
    CONSTRAINT messages_sender_member_fkey
        FOREIGN KEY (thread_id, sender_user_id) REFERENCES thread_members (thread_id, user_id),
    CONSTRAINT messages_sender_device_fkey
        FOREIGN KEY (sender_device_id, sender_user_id) REFERENCES devices (id, user_id)
);

-- Per user and thread, both only move forward. Reading implies delivery, so the
-- store raises delivered_seq to at least read_seq.
CREATE TABLE receipts (
    thread_id uuid NOT NULL,
    user_id uuid NOT NULL,
    delivered_seq bigint NOT NULL DEFAULT 0 CHECK (delivered_seq >= 0),
    read_seq bigint NOT NULL DEFAULT 0 CHECK (read_seq >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (thread_id, user_id),
    CONSTRAINT receipts_member_fkey
        FOREIGN KEY (thread_id, user_id) REFERENCES thread_members (thread_id, user_id)
        ON DELETE CASCADE,
    CONSTRAINT receipts_read_after_delivered CHECK (read_seq <= delivered_seq)
);
