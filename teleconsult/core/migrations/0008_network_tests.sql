-- Pre-call network tests (docs/rtc.md): a participant's connection checked
-- against the server's own WebRTC peer before a consultation. Figures only (round
-- trip, jitter, loss, bitrate, counts): no media is kept, no clinical content.
--
-- Composite foreign keys keep the appointment and the user in the row's clinic.
CREATE TABLE network_tests (
    id uuid PRIMARY KEY,
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    appointment_id uuid NOT NULL,
    consultation_id uuid NOT NULL REFERENCES consultations (id) ON DELETE CASCADE,
    user_id uuid NOT NULL,
    user_role text NOT NULL CHECK (user_role ~ '^[a-z_]{1,20}$'),
    started_at timestamptz NOT NULL DEFAULT now(),
    -- When the server closes its peer at the latest (the time limit).
    expires_at timestamptz NOT NULL,
    finished_at timestamptz,
    status text NOT NULL DEFAULT 'running'
        CHECK (status IN ('running', 'completed', 'expired', 'failed', 'aborted')),
    -- What the server's peer measured, written when it closes.
    server jsonb CHECK (jsonb_typeof(server) = 'object' AND octet_length(server::text) <= 4096),
    -- What the client reported (POST .../result), at most once.
    client jsonb CHECK (jsonb_typeof(client) = 'object' AND octet_length(client::text) <= 4096),
    reported_at timestamptz,
    CONSTRAINT network_tests_appointment_fkey
        FOREIGN KEY (appointment_id, clinic_id) REFERENCES appointments (id, clinic_id)
        ON DELETE CASCADE,
    CONSTRAINT network_tests_user_fkey
        FOREIGN KEY (user_id, clinic_id) REFERENCES users (id, clinic_id),
    CONSTRAINT network_tests_time_order CHECK (
        expires_at > started_at AND finished_at >= started_at AND reported_at >= started_at
    ),
    CONSTRAINT network_tests_finished CHECK ((status = 'running') = (finished_at IS NULL)),
    CONSTRAINT network_tests_reported CHECK ((client IS NULL) = (reported_at IS NULL))
);

-- The latest test per user of an appointment (the list, the waiting room).
CREATE INDEX network_tests_latest ON network_tests (appointment_id, user_id, started_at DESC);
