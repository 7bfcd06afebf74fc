-- Patient records (issue 14): field-encryption keys, profiles, care relationships,
-- consents, break-glass, households, vital signs, versioned clinical notes.
-- docs/records.md describes every table for a data-protection officer and for the
-- FHIR views that read them.
--
-- Encrypted columns end in _ct: XChaCha20-Poly1305 ciphertexts made by
-- teleconsult/records/fieldcrypt.py (1 format byte, 4 bytes of record_keys.id,
-- 24 bytes of nonce, then the sealed text). Their associated data binds the table,
-- the column and the row id, so a ciphertext copied to another row or column does
-- not open. Columns ending in _bi are blind indexes: HMAC-SHA256 of the normalised
-- value under the clinic's index key, for equality search only.

-- One row per clinic data key. The key itself is stored only wrapped (sealed with
-- XChaCha20-Poly1305) by a master key that the database never holds; master_version
-- says which. The index key (blind indexes) is wrapped the same way and is carried
-- from key to key on rotation, so blind indexes stay valid.
CREATE TABLE record_keys (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    master_version integer NOT NULL CHECK (master_version > 0),
    wrapped_data_key bytea NOT NULL CHECK (length(wrapped_data_key) = 72),
    wrapped_index_key bytea NOT NULL CHECK (length(wrapped_index_key) = 72),
    created_at timestamptz NOT NULL DEFAULT now(),
    retired_at timestamptz
);

-- At most one current data key per clinic.
CREATE UNIQUE INDEX record_keys_current ON record_keys (clinic_id) WHERE retired_at IS NULL;

-- Profile: what is not in users (name, phone, date of birth stay there).
CREATE TABLE patient_profiles (
    patient_id uuid PRIMARY KEY REFERENCES users (id),
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    sex text CHECK (sex IN ('female', 'male', 'other', 'unknown')),
    national_id_ct bytea,
    national_id_bi bytea CHECK (length(national_id_bi) = 32),
    emergency_contacts_ct bytea,
    -- Clinical summary: blood type in the clear (a code), the rest encrypted JSON.
    blood_type text CHECK (blood_type IN ('A+', 'A-', 'B+', 'B-', 'AB+', 'AB-', 'O+', 'O-')),
    allergies_ct bytea,
    conditions_ct bytea,
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by uuid REFERENCES users (id),
    CONSTRAINT patient_profiles_national_id CHECK ((national_id_ct IS NULL) = (national_id_bi IS NULL))
);

CREATE INDEX patient_profiles_national_id ON patient_profiles (clinic_id, national_id_bi)
    WHERE national_id_bi IS NOT NULL;

-- A care team membership gives a clinician access for a bounded time.
CREATE TABLE care_team_members (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    patient_id uuid NOT NULL REFERENCES users (id),
    member_id uuid NOT NULL REFERENCES users (id),
    starts_at timestamptz NOT NULL DEFAULT now(),
    ends_at timestamptz NOT NULL,
    added_by uuid NOT NULL REFERENCES users (id),
    ended_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT care_team_members_order CHECK (ends_at > starts_at),
    CONSTRAINT care_team_members_people CHECK (patient_id <> member_id)
);

CREATE INDEX care_team_members_lookup ON care_team_members (patient_id, member_id);

-- Consents: the patient (or their guardian) lets a user, or every clinician of an
-- organisation (a clinic), see a scope of the record until it expires or is revoked.
CREATE TABLE consents (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    patient_id uuid NOT NULL REFERENCES users (id),
    grantee_user_id uuid REFERENCES users (id),
    grantee_clinic_id uuid REFERENCES clinics (id),
    scope text NOT NULL
        CHECK (scope IN ('all', 'summary', 'vitals', 'notes', 'medications', 'documents')),
    granted_by uuid NOT NULL REFERENCES users (id),
    granted_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz,
    revoked_by uuid REFERENCES users (id),
    CONSTRAINT consents_one_grantee CHECK (
        (grantee_user_id IS NULL) <> (grantee_clinic_id IS NULL)
    ),
    CONSTRAINT consents_order CHECK (expires_at > granted_at),
    CONSTRAINT consents_revocation CHECK ((revoked_at IS NULL) = (revoked_by IS NULL))
);

CREATE INDEX consents_patient ON consents (patient_id, granted_at);

-- Break-glass: emergency access with a reason, for a short window. Every use is
-- also an audit row of its own action and an outbox notice to the patient.
CREATE TABLE break_glass_accesses (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    patient_id uuid NOT NULL REFERENCES users (id),
    clinician_id uuid NOT NULL REFERENCES users (id),
    reason_ct bytea NOT NULL,
    opened_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    CONSTRAINT break_glass_order CHECK (expires_at > opened_at)
);

CREATE INDEX break_glass_accesses_lookup ON break_glass_accesses (patient_id, clinician_id);

-- Households: a carer manages a child's or an elder's record. Each dependant row
-- says what the household's guardians may do for that member.
CREATE TABLE households (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    label text NOT NULL CHECK (length(label) BETWEEN 1 AND 100),
    created_by uuid NOT NULL REFERENCES users (id),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE household_members (
    household_id uuid NOT NULL REFERENCES households (id),
    user_id uuid NOT NULL REFERENCES users (id),
    kind text NOT NULL CHECK (kind IN ('guardian', 'dependant')),
    -- For a dependant: what guardians may do ('read', 'write', 'consent').
    permissions text[] NOT NULL DEFAULT '{}'
        CHECK (permissions <@ ARRAY['read', 'write', 'consent']::text[]),
    added_by uuid NOT NULL REFERENCES users (id),
    added_at timestamptz NOT NULL DEFAULT now(),
    removed_at timestamptz,
    PRIMARY KEY (household_id, user_id),
    CONSTRAINT household_members_guardian_permissions CHECK (
        kind = 'dependant' OR permissions = '{}'
    )
);

CREATE INDEX household_members_user ON household_members (user_id);

-- Vital signs: structured numbers with a LOINC code; not encrypted (docs/records.md).
CREATE TABLE vital_signs (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    patient_id uuid NOT NULL REFERENCES users (id),
    kind text NOT NULL CHECK (kind ~ '^[a-z0-9_]{1,40}$'),
    loinc text NOT NULL CHECK (loinc ~ '^[0-9]{1,7}-[0-9]$'),
    value numeric NOT NULL,
    -- Blood pressure: value is systolic, value2 diastolic.
    value2 numeric,
    unit text NOT NULL CHECK (length(unit) BETWEEN 1 AND 20),
    measured_at timestamptz NOT NULL,
    recorded_by uuid NOT NULL REFERENCES users (id),
    source text NOT NULL CHECK (source IN ('clinician', 'patient', 'device')),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX vital_signs_patient ON vital_signs (patient_id, measured_at, id);

-- Clinical notes, append-only: each row is one version; an amendment is a new row
-- with the same note_id, the next version and supersedes = the previous row.
-- A trigger refuses DELETE, TRUNCATE and every UPDATE except re-keying (the
-- ciphertext alone changes, to another data key: `teleconsult records rotate-key`).
CREATE TABLE clinical_note_versions (
    id uuid PRIMARY KEY,
    note_id uuid NOT NULL,
    version integer NOT NULL CHECK (version >= 1),
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    patient_id uuid NOT NULL REFERENCES users (id),
    consultation_id uuid REFERENCES consultations (id),
    author_id uuid NOT NULL REFERENCES users (id),
    body_ct bytea NOT NULL,
    supersedes uuid REFERENCES clinical_note_versions (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT clinical_note_versions_one UNIQUE (note_id, version),
    CONSTRAINT clinical_note_versions_chain CHECK ((version = 1) = (supersedes IS NULL))
);

CREATE INDEX clinical_note_versions_patient ON clinical_note_versions (patient_id, created_at, id);

CREATE FUNCTION records_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        -- Re-keying only: the same row, another ciphertext under another data key.
        IF (to_jsonb(NEW) - TG_ARGV[0]) = (to_jsonb(OLD) - TG_ARGV[0])
            AND substring(to_jsonb(NEW) ->> TG_ARGV[0] FROM 3 FOR 10)
                <> substring(to_jsonb(OLD) ->> TG_ARGV[0] FROM 3 FOR 10) THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER clinical_note_versions_append_only
    BEFORE UPDATE OR DELETE ON clinical_note_versions
    FOR EACH ROW EXECUTE FUNCTION records_append_only('body_ct');
CREATE TRIGGER clinical_note_versions_no_truncate
    BEFORE TRUNCATE ON clinical_note_versions
    FOR EACH STATEMENT EXECUTE FUNCTION records_append_only('body_ct');

-- Account notices about records (break-glass) use the outbox's user-only rows; the
-- kind says what happened, the payload carries ids only.
