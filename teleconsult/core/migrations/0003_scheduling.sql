-- Scheduling: doctor profiles, weekly availability, appointments, consultations,
-- the notification outbox and per-doctor calendar feeds.
--
-- Wall-clock values (availability_rules times and dates) are in the clinic's
-- time zone (clinics.timezone); instants are timestamptz.

CREATE TYPE service_kind AS ENUM ('video', 'audio', 'chat', 'in_person');

-- Lets child tables require that a user belongs to the same clinic as the row
-- (a composite foreign key), so a tenant mix-up is refused by the database.
ALTER TABLE users ADD CONSTRAINT users_id_clinic_key UNIQUE (id, clinic_id);

CREATE TABLE doctor_profiles (
    user_id uuid PRIMARY KEY,
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    specialties text[] NOT NULL DEFAULT '{}',
    languages text[] NOT NULL DEFAULT '{}',
    consultation_minutes integer NOT NULL CHECK (consultation_minutes BETWEEN 5 AND 480),
    buffer_minutes integer NOT NULL DEFAULT 0 CHECK (buffer_minutes BETWEEN 0 AND 120),
    fee_cents bigint NOT NULL DEFAULT 0 CHECK (fee_cents >= 0),
    currency char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    services service_kind[] NOT NULL CHECK (cardinality(services) > 0),
    bio text CHECK (length(bio) <= 5000),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT doctor_profiles_user_clinic_key UNIQUE (user_id, clinic_id),
    FOREIGN KEY (user_id, clinic_id) REFERENCES users (id, clinic_id) ON DELETE CASCADE
);

CREATE INDEX doctor_profiles_clinic ON doctor_profiles (clinic_id);

-- A weekly rule: on `weekday` (0 = Monday, as Python's date.weekday()), from
-- start_time to end_time local time, the doctor works ('work') or pauses
-- ('break', carved out of the work rules), between the optional dates.
CREATE TABLE availability_rules (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    doctor_id uuid NOT NULL REFERENCES doctor_profiles (user_id) ON DELETE CASCADE,
    weekday smallint NOT NULL CHECK (weekday BETWEEN 0 AND 6),
    start_time time NOT NULL,
    -- PostgreSQL accepts 24:00 but Python's datetime.time cannot hold it.
    end_time time NOT NULL CHECK (end_time < '24:00'),
    valid_from date,
    valid_until date,
    kind text NOT NULL DEFAULT 'work' CHECK (kind IN ('work', 'break')),
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT availability_rules_time_order CHECK (start_time < end_time),
    CONSTRAINT availability_rules_date_order CHECK (valid_from <= valid_until)
);

CREATE INDEX availability_rules_doctor ON availability_rules (doctor_id, weekday, start_time);

-- A dated exception: leave ('unavailable') or extra hours ('extra').
CREATE TABLE availability_exceptions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    doctor_id uuid NOT NULL REFERENCES doctor_profiles (user_id) ON DELETE CASCADE,
    starts_at timestamptz NOT NULL,
    ends_at timestamptz NOT NULL,
    kind text NOT NULL CHECK (kind IN ('unavailable', 'extra')),
    note text CHECK (length(note) <= 500),
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT availability_exceptions_time_order CHECK (ends_at > starts_at)
);

CREATE INDEX availability_exceptions_doctor ON availability_exceptions (doctor_id, starts_at);

-- The time an appointment keeps its doctor busy: the appointment plus the
-- buffer after it. Adding whole minutes does not depend on the session time
-- zone (unlike adding days or months), so IMMUTABLE is truthful here, and it
-- has to be for the exclusion constraint below to use it.
CREATE FUNCTION appointment_busy_range(
    starts_at timestamptz, ends_at timestamptz, buffer_minutes integer
) RETURNS tstzrange
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT tstzrange(starts_at, ends_at + make_interval(mins => buffer_minutes), '[)') $$;

CREATE TABLE appointments (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    doctor_id uuid NOT NULL,
    patient_id uuid NOT NULL,
    service service_kind NOT NULL,
    starts_at timestamptz NOT NULL,
    ends_at timestamptz NOT NULL,
    -- Copied from the doctor's profile at booking time, so a later profile
    -- change does not make existing bookings overlap.
    buffer_minutes integer NOT NULL DEFAULT 0 CHECK (buffer_minutes BETWEEN 0 AND 120),
    status text NOT NULL DEFAULT 'requested' CHECK (
        status IN ('requested', 'confirmed', 'in_progress', 'completed', 'cancelled', 'no_show')
    ),
    cancel_reason text CHECK (length(cancel_reason) <= 500),
    checked_in_at timestamptz,
    created_by uuid REFERENCES users (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- Bumped by every update: clients send it back for optimistic concurrency.
    version integer NOT NULL DEFAULT 1,
    CONSTRAINT appointments_time_order CHECK (ends_at > starts_at),
    CONSTRAINT appointments_cancel_reason CHECK (
        (status = 'cancelled') = (cancel_reason IS NOT NULL AND btrim(cancel_reason) <> '')
    ),
    CONSTRAINT appointments_distinct_people CHECK (doctor_id <> patient_id),
    CONSTRAINT appointments_doctor_fkey
        FOREIGN KEY (doctor_id, clinic_id) REFERENCES doctor_profiles (user_id, clinic_id),
    CONSTRAINT appointments_patient_fkey
        FOREIGN KEY (patient_id, clinic_id) REFERENCES users (id, clinic_id),
    -- No double-booking. The store maps these names to "slot taken".
    CONSTRAINT appointments_doctor_no_overlap EXCLUDE USING gist (
        doctor_id WITH =,
        appointment_busy_range(starts_at, ends_at, buffer_minutes) WITH &&
    ) WHERE (status IN ('requested', 'confirmed', 'in_progress')),
    CONSTRAINT appointments_patient_no_overlap EXCLUDE USING gist (
        patient_id WITH =,
        tstzrange(starts_at, ends_at, '[)') WITH &&
    ) WHERE (status IN ('requested', 'confirmed', 'in_progress'))
);

CREATE INDEX appointments_clinic_agenda ON appointments (clinic_id, starts_at);
CREATE INDEX appointments_doctor_agenda ON appointments (doctor_id, starts_at);
CREATE INDEX appointments_patient_agenda ON appointments (patient_id, starts_at);

-- One per video or audio appointment. room_id is random (secrets.token_urlsafe)
-- and is all a join link carries: no names, no appointment details.
CREATE TABLE consultations (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    appointment_id uuid NOT NULL UNIQUE REFERENCES appointments (id) ON DELETE CASCADE,
    room_id text NOT NULL UNIQUE CHECK (room_id ~ '^[A-Za-z0-9_-]{16,64}$'),
    join_opens_at timestamptz NOT NULL,
    join_closes_at timestamptz NOT NULL,
    status text NOT NULL DEFAULT 'scheduled'
        CHECK (status IN ('scheduled', 'open', 'ended', 'cancelled')),
    started_at timestamptz,
    ended_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT consultations_window_order CHECK (join_closes_at > join_opens_at),
    CONSTRAINT consultations_time_order CHECK (ended_at >= started_at)
);

-- Transactional outbox: rows are written in the transaction that books, moves
-- or cancels, and sent by a worker that claims due rows with
-- FOR UPDATE SKIP LOCKED and a lease (locked_until, claimed_by). A worker that
-- dies leaves the lease to expire, and the row is claimed again; the row id is
-- the idempotency key for the provider. The payload holds ids and kinds only,
-- never personal or health data.
CREATE TABLE notification_outbox (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind text NOT NULL CHECK (kind ~ '^[a-z0-9_]{1,40}$'),
    appointment_id uuid NOT NULL REFERENCES appointments (id) ON DELETE CASCADE,
    due_at timestamptz NOT NULL,
    payload jsonb NOT NULL DEFAULT '{}'
        CHECK (jsonb_typeof(payload) = 'object' AND length(payload::text) <= 4000),
    attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    locked_until timestamptz,
    claimed_by text,
    sent_at timestamptz,
    -- Set when the appointment was cancelled or moved before the row was sent.
    cancelled_at timestamptz,
    -- Set when the worker gave up retrying.
    failed_at timestamptz,
    last_error text CHECK (length(last_error) <= 1000),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The same reminder is enqueued once. Cancelled rows are left out so that an
-- appointment moved away and back gets its reminders again.
CREATE UNIQUE INDEX notification_outbox_dedupe
    ON notification_outbox (appointment_id, kind, due_at) WHERE cancelled_at IS NULL;

CREATE INDEX notification_outbox_pending
    ON notification_outbox (due_at, id)
    WHERE sent_at IS NULL AND cancelled_at IS NULL AND failed_at IS NULL;

CREATE INDEX notification_outbox_appointment ON notification_outbox (appointment_id);

-- Secret iCalendar feed URLs: only a SHA-256 of the token is stored.
CREATE TABLE calendar_feeds (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    doctor_id uuid NOT NULL REFERENCES doctor_profiles (user_id) ON DELETE CASCADE,
    token_hash bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

CREATE INDEX calendar_feeds_doctor ON calendar_feeds (doctor_id);
