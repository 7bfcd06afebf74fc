-- Prescriptions and medication statements (issue 14). docs/records.md.
--
-- A prescription is signed by the doctor's registered chat device (Ed25519) over
-- its canonical bytes (docs/records.md, "Prescriptions"); the server verifies the
-- signature before storing and keeps the canonical bytes encrypted (document_ct),
-- with the signature and the public key it verified against. It is never edited:
-- it is cancelled, or it expires.
CREATE TABLE prescriptions (
    id uuid PRIMARY KEY,
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    patient_id uuid NOT NULL REFERENCES users (id),
    doctor_id uuid NOT NULL REFERENCES users (id),
    consultation_id uuid REFERENCES consultations (id),
    number text NOT NULL UNIQUE CHECK (number ~ '^RX-[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}$'),
    -- SHA-256 of the verification code printed in the QR/link; the code itself is
    -- never stored.
    verification_hash bytea NOT NULL CHECK (length(verification_hash) = 32),
    document_ct bytea NOT NULL,
    signature bytea NOT NULL CHECK (length(signature) = 64),
    device_id uuid NOT NULL REFERENCES devices (id),
    signer_public_key bytea NOT NULL CHECK (length(signer_public_key) = 32),
    issued_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    cancelled_at timestamptz,
    cancelled_by uuid REFERENCES users (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT prescriptions_order CHECK (expires_at > issued_at),
    CONSTRAINT prescriptions_cancel CHECK ((cancelled_at IS NULL) = (cancelled_by IS NULL))
);

CREATE INDEX prescriptions_patient ON prescriptions (patient_id, issued_at, id);

-- Only cancelling (once) and re-keying may change a prescription.
CREATE FUNCTION prescriptions_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF (to_jsonb(NEW) - 'document_ct') = (to_jsonb(OLD) - 'document_ct')
            AND substring(to_jsonb(NEW) ->> 'document_ct' FROM 3 FOR 10)
                <> substring(to_jsonb(OLD) ->> 'document_ct' FROM 3 FOR 10) THEN
            RETURN NEW;
        END IF;
        IF OLD.cancelled_at IS NULL AND NEW.cancelled_at IS NOT NULL
            AND (to_jsonb(NEW) - 'cancelled_at' - 'cancelled_by')
                = (to_jsonb(OLD) - 'cancelled_at' - 'cancelled_by') THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION 'prescriptions are never edited: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER prescriptions_never_edited
    BEFORE UPDATE OR DELETE ON prescriptions
    FOR EACH ROW EXECUTE FUNCTION prescriptions_guard();

-- What the patient takes (reported by them or recorded by a clinician).
CREATE TABLE medication_statements (
    id uuid PRIMARY KEY,
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    patient_id uuid NOT NULL REFERENCES users (id),
    details_ct bytea NOT NULL,
    status text NOT NULL CHECK (status IN ('active', 'stopped')),
    recorded_by uuid NOT NULL REFERENCES users (id),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX medication_statements_patient ON medication_statements (patient_id, created_at, id);

-- Care plans: goals and activities (encrypted), always with an expiry.
CREATE TABLE care_plans (
    id uuid PRIMARY KEY,
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    patient_id uuid NOT NULL REFERENCES users (id),
    author_id uuid NOT NULL REFERENCES users (id),
    plan_ct bytea NOT NULL,
    starts_on date NOT NULL,
    expires_at timestamptz NOT NULL,
    ended_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT care_plans_ended CHECK (ended_at >= created_at)
);

CREATE INDEX care_plans_patient ON care_plans (patient_id, created_at, id);

-- The change feed of records, for GET /api/v1/sync: one row per insert or update of a
-- record part, written by triggers (so no writer can forget it). Ids only.
CREATE TABLE record_changes (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    clinic_id uuid NOT NULL,
    patient_id uuid NOT NULL,
    kind text NOT NULL
        CHECK (kind IN ('note', 'vital', 'medication', 'prescription', 'profile', 'care_plan')),
    object_id uuid NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX record_changes_patient ON record_changes (patient_id, seq);

CREATE FUNCTION records_change_feed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO record_changes (clinic_id, patient_id, kind, object_id)
    VALUES (NEW.clinic_id, NEW.patient_id, TG_ARGV[0], (to_jsonb(NEW) ->> TG_ARGV[1])::uuid);
    RETURN NULL;
END
$$;

CREATE TRIGGER clinical_note_versions_feed AFTER INSERT ON clinical_note_versions
    FOR EACH ROW EXECUTE FUNCTION records_change_feed('note', 'id');
CREATE TRIGGER vital_signs_feed AFTER INSERT ON vital_signs
    FOR EACH ROW EXECUTE FUNCTION records_change_feed('vital', 'id');
CREATE TRIGGER medication_statements_feed AFTER INSERT OR UPDATE ON medication_statements
    FOR EACH ROW EXECUTE FUNCTION records_change_feed('medication', 'id');
CREATE TRIGGER prescriptions_feed AFTER INSERT OR UPDATE ON prescriptions
    FOR EACH ROW EXECUTE FUNCTION records_change_feed('prescription', 'id');
CREATE TRIGGER patient_profiles_feed AFTER INSERT OR UPDATE ON patient_profiles
    FOR EACH ROW EXECUTE FUNCTION records_change_feed('profile', 'patient_id');
CREATE TRIGGER care_plans_feed AFTER INSERT OR UPDATE ON care_plans
    FOR EACH ROW EXECUTE FUNCTION records_change_feed('care_plan', 'id');

-- Documents (lab results, images, reports): the content is sealed in the blob store of
-- recordings (teleconsult/recording/seal.py, under the recording master keys); these
-- rows hold the metadata, the title encrypted. Versions are added, never replaced.
CREATE TABLE documents (
    id uuid PRIMARY KEY,
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    patient_id uuid NOT NULL REFERENCES users (id),
    title_ct bytea NOT NULL,
    category text NOT NULL CHECK (category IN ('lab_result', 'image', 'report', 'other')),
    created_by uuid NOT NULL REFERENCES users (id),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX documents_patient ON documents (patient_id, created_at, id);

CREATE TABLE document_versions (
    id uuid PRIMARY KEY,
    document_id uuid NOT NULL REFERENCES documents (id),
    version integer NOT NULL CHECK (version >= 1),
    content_type text NOT NULL,
    size bigint NOT NULL CHECK (size > 0),
    sha256 bytea NOT NULL CHECK (length(sha256) = 32),
    blob_name text NOT NULL UNIQUE,
    uploaded_by uuid NOT NULL REFERENCES users (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT document_versions_one UNIQUE (document_id, version)
);

-- An upload in progress: chunks arrive in order, each sealed with the clinic's field
-- key (its offset bound into the associated data), until the whole is checked and
-- sealed into the blob store; then the chunks are deleted.
CREATE TABLE document_uploads (
    id uuid PRIMARY KEY,
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    patient_id uuid NOT NULL REFERENCES users (id),
    document_id uuid REFERENCES documents (id),
    title_ct bytea,
    category text CHECK (category IN ('lab_result', 'image', 'report', 'other')),
    content_type text NOT NULL,
    size bigint NOT NULL CHECK (size > 0),
    sha256 bytea NOT NULL CHECK (length(sha256) = 32),
    received bigint NOT NULL DEFAULT 0 CHECK (received BETWEEN 0 AND size),
    created_by uuid NOT NULL REFERENCES users (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    CONSTRAINT document_uploads_target CHECK (
        (document_id IS NULL) = (title_ct IS NOT NULL AND category IS NOT NULL)
    )
);

CREATE TABLE document_upload_chunks (
    upload_id uuid NOT NULL REFERENCES document_uploads (id) ON DELETE CASCADE,
    "offset" bigint NOT NULL CHECK ("offset" >= 0),
    data_ct bytea NOT NULL,
    PRIMARY KEY (upload_id, "offset")
);
