-- FHIR Bulk Data $export jobs (issue 14, part F; docs/fhir.md).
--
-- A job is claimed by one server process at a time with a lease (lease_owner,
-- lease_until) that the worker renews while it writes. A process that dies leaves
-- the lease to run out; another (or the restarted one) claims the job and resumes
-- it: the resource types whose file is recorded in fhir_export_files are kept, the
-- type that was being written is written again from the start. Rows hold ids,
-- types and counts only, never patient data (that is in the files, on disk).
CREATE TABLE fhir_export_jobs (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    clinic_id uuid NOT NULL REFERENCES clinics (id),
    requested_by uuid NOT NULL REFERENCES users (id),
    requester_role text NOT NULL CHECK (requester_role ~ '^[a-z_]{1,20}$'),
    level text NOT NULL CHECK (level IN ('system', 'patient', 'group')),
    group_id uuid,
    types text[] NOT NULL CHECK (cardinality(types) > 0),
    since timestamptz,
    request_url text NOT NULL CHECK (length(request_url) <= 2000),
    status text NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    transaction_time timestamptz NOT NULL DEFAULT now(),
    types_done integer NOT NULL DEFAULT 0 CHECK (types_done >= 0),
    resources_written bigint NOT NULL DEFAULT 0 CHECK (resources_written >= 0),
    attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    lease_owner text,
    lease_until timestamptz,
    last_polled_at timestamptz,
    failure text CHECK (length(failure) <= 500),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    CONSTRAINT fhir_export_jobs_group CHECK ((level = 'group') = (group_id IS NOT NULL))
);

-- The worker's claim: the oldest unfinished job whose lease is free or ran out.
CREATE INDEX fhir_export_jobs_pending ON fhir_export_jobs (created_at)
    WHERE status IN ('queued', 'running');
CREATE INDEX fhir_export_jobs_by_requester ON fhir_export_jobs (requested_by, created_at);

CREATE TABLE fhir_export_files (
    job_id uuid NOT NULL REFERENCES fhir_export_jobs (id) ON DELETE CASCADE,
    seq integer NOT NULL CHECK (seq >= 0),
    resource_type text NOT NULL CHECK (resource_type ~ '^[A-Z][A-Za-z]{1,63}$'),
    file_name text NOT NULL CHECK (file_name ~ '^[A-Za-z0-9_.-]{1,100}$'),
    count bigint NOT NULL CHECK (count >= 0),
    -- 'output' files hold resources; 'error' files hold OperationOutcomes.
    kind text NOT NULL DEFAULT 'output' CHECK (kind IN ('output', 'error')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, seq),
    UNIQUE (job_id, file_name)
);
