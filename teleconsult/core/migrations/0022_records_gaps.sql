-- Issue 14, part RG: a medication statement can be stopped, once, with an end date and a
-- reason (encrypted: it can hold clinical content). A stop is a new fact written into
-- the statement's own stop columns; nothing else of a statement is ever edited. The
-- guard below admits exactly two updates: the one stop (status active -> stopped, the
-- four stop columns set from NULL, everything else unchanged) and re-keying (a
-- ciphertext replaced by one under another data key, everything else unchanged).
ALTER TABLE medication_statements
    ADD COLUMN ended_on date,
    ADD COLUMN stop_reason_ct bytea,
    ADD COLUMN stopped_by uuid REFERENCES users (id),
    ADD COLUMN stopped_at timestamptz,
    ADD CONSTRAINT medication_statements_stop CHECK (
        (stopped_at IS NULL) = (stopped_by IS NULL)
        AND (stopped_at IS NULL) = (ended_on IS NULL)
        AND (stopped_at IS NULL) = (stop_reason_ct IS NULL)
        AND (stopped_at IS NULL OR status = 'stopped')
    );

CREATE FUNCTION medication_statements_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    fixed CONSTANT text[] := ARRAY['details_ct', 'stop_reason_ct'];
    stop CONSTANT text[] := ARRAY['status', 'ended_on', 'stop_reason_ct', 'stopped_by',
        'stopped_at'];
BEGIN
    IF TG_OP = 'UPDATE' THEN
        -- Re-keying: only ciphertexts change, each to one under another key id.
        IF (to_jsonb(NEW) - fixed) = (to_jsonb(OLD) - fixed)
            AND (NEW.details_ct = OLD.details_ct
                OR substring(NEW.details_ct FROM 2 FOR 4)
                    <> substring(OLD.details_ct FROM 2 FOR 4))
            AND (NEW.stop_reason_ct IS NOT DISTINCT FROM OLD.stop_reason_ct
                OR substring(NEW.stop_reason_ct FROM 2 FOR 4)
                    <> substring(OLD.stop_reason_ct FROM 2 FOR 4)) THEN
            RETURN NEW;
        END IF;
        -- The one stop.
        IF OLD.status = 'active' AND OLD.stopped_at IS NULL
            AND NEW.status = 'stopped' AND NEW.stopped_at IS NOT NULL
            AND (to_jsonb(NEW) - stop) = (to_jsonb(OLD) - stop) THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION 'medication statements are never edited: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER medication_statements_never_edited
    BEFORE UPDATE OR DELETE ON medication_statements
    FOR EACH ROW EXECUTE FUNCTION medication_statements_guard();

-- The sync feed (GET /api/v1/sync) covers documents (metadata and versions, never
-- content), consents, household links and care team memberships too.
ALTER TABLE record_changes DROP CONSTRAINT record_changes_kind_check;
ALTER TABLE record_changes ADD CONSTRAINT record_changes_kind_check CHECK (kind IN (
    'note', 'vital', 'medication', 'prescription', 'profile', 'care_plan',
    'document', 'consent', 'household', 'care_team'
));

CREATE TRIGGER documents_feed AFTER INSERT OR UPDATE ON documents
    FOR EACH ROW EXECUTE FUNCTION records_change_feed('document', 'id');
CREATE TRIGGER consents_feed AFTER INSERT OR UPDATE ON consents
    FOR EACH ROW EXECUTE FUNCTION records_change_feed('consent', 'id');
CREATE TRIGGER care_team_members_feed AFTER INSERT OR UPDATE ON care_team_members
    FOR EACH ROW EXECUTE FUNCTION records_change_feed('care_team', 'id');

-- A new version changes its document.
CREATE FUNCTION records_document_version_feed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO record_changes (clinic_id, patient_id, kind, object_id)
    SELECT d.clinic_id, d.patient_id, 'document', d.id FROM documents d
    WHERE d.id = NEW.document_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER document_versions_feed AFTER INSERT ON document_versions
    FOR EACH ROW EXECUTE FUNCTION records_document_version_feed();

-- A household's membership changed: a change of the household for each of its members
-- (a household is not one patient's; each member's record shows it).
CREATE FUNCTION records_household_feed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO record_changes (clinic_id, patient_id, kind, object_id)
    SELECT h.clinic_id, m.user_id, 'household', h.id
    FROM households h JOIN household_members m ON m.household_id = h.id
    WHERE h.id = NEW.household_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER household_members_feed AFTER INSERT OR UPDATE ON household_members
    FOR EACH ROW EXECUTE FUNCTION records_household_feed();
