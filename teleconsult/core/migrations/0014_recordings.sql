-- Recordings sealed at rest (docs/rtc.md, "Recordings"). The media itself lives in
-- the blob store, sealed; these rows hold its state, where it is, and its data key
-- wrapped by a master key the database never holds.

-- How long a clinic keeps its recordings; expiry destroys the data key.
ALTER TABLE clinics ADD COLUMN recording_retention_days integer NOT NULL DEFAULT 90
    CHECK (recording_retention_days BETWEEN 1 AND 3650);

-- The patient's consent to recording a consultation, given before any recording
-- starts (one row per appointment; a withdrawal keeps the row).
CREATE TABLE recording_consents (
    appointment_id uuid PRIMARY KEY,
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    patient_id uuid NOT NULL,
    given_at timestamptz NOT NULL DEFAULT now(),
    withdrawn_at timestamptz,
    CONSTRAINT recording_consents_appointment_fkey
        FOREIGN KEY (appointment_id, clinic_id) REFERENCES appointments (id, clinic_id)
        ON DELETE CASCADE,
    CONSTRAINT recording_consents_patient_fkey
        FOREIGN KEY (patient_id, clinic_id) REFERENCES users (id, clinic_id),
    CONSTRAINT recording_consents_time_order CHECK (withdrawn_at >= given_at)
);

CREATE TABLE recordings (
    id uuid PRIMARY KEY,
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    appointment_id uuid NOT NULL,
    backend_recording_id text NOT NULL CHECK (length(backend_recording_id) BETWEEN 1 AND 200),
    state text NOT NULL DEFAULT 'recording'
        CHECK (state IN ('pending', 'recording', 'sealing', 'ready', 'failed', 'expired')),
    started_by uuid,
    -- The sealing attempt that holds the row while state = 'sealing', and until when.
    attempt uuid,
    lease_until timestamptz,
    object_name text CHECK (object_name ~ '^[A-Za-z0-9._/-]+$' AND length(object_name) <= 300),
    content_type text CHECK (content_type ~ '^[a-z]+/[a-z0-9.+-]{1,60}$'),
    size bigint CHECK (size >= 0),
    sealed_size bigint CHECK (sealed_size >= 0),
    -- The master key version and the wrapped data key (nonce || ciphertext); NULL
    -- once destroyed (expiry).
    key_version integer CHECK (key_version > 0),
    wrapped_key bytea CHECK (octet_length(wrapped_key) = 72),
    failure text CHECK (length(failure) <= 200),
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    expires_at timestamptz,
    key_destroyed_at timestamptz,
    CONSTRAINT recordings_backend_key UNIQUE (appointment_id, backend_recording_id),
    CONSTRAINT recordings_appointment_fkey
        FOREIGN KEY (appointment_id, clinic_id) REFERENCES appointments (id, clinic_id),
    CONSTRAINT recordings_ready CHECK (
        state <> 'ready' OR (object_name IS NOT NULL AND wrapped_key IS NOT NULL
                             AND key_version IS NOT NULL AND size IS NOT NULL
                             AND expires_at IS NOT NULL AND finished_at IS NOT NULL)
    ),
    CONSTRAINT recordings_expired CHECK (
        state <> 'expired' OR (wrapped_key IS NULL AND key_destroyed_at IS NOT NULL)
    ),
    CONSTRAINT recordings_sealing CHECK ((state = 'sealing') = (attempt IS NOT NULL))
);

CREATE INDEX recordings_by_appointment ON recordings (appointment_id, created_at);
CREATE INDEX recordings_due ON recordings (expires_at) WHERE state = 'ready';
CREATE INDEX recordings_key_version ON recordings (key_version) WHERE state = 'ready';
