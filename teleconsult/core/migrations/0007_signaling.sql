-- Video consultations: who else the doctor invited, and what happened in the
-- room (who joined when, admitted, left; started, ended). No clinical content:
-- kinds, user ids, roles and times only.

CREATE TABLE consultation_invites (
    consultation_id uuid NOT NULL REFERENCES consultations (id) ON DELETE CASCADE,
    user_id uuid NOT NULL REFERENCES users (id),
    invited_by uuid NOT NULL REFERENCES users (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    PRIMARY KEY (consultation_id, user_id)
);

CREATE TABLE consultation_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consultation_id uuid NOT NULL REFERENCES consultations (id) ON DELETE CASCADE,
    kind text NOT NULL CHECK (kind IN (
        'started', 'ended', 'waiting', 'joined', 'admitted', 'declined', 'removed',
        'disconnected', 'reconnected', 'left', 'invited'
    )),
    user_id uuid REFERENCES users (id),
    role text CHECK (role ~ '^[a-z_]{1,20}$'),
    peer_id text CHECK (peer_id ~ '^[A-Za-z0-9_-]{8,64}$'),
    at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX consultation_events_by_consultation ON consultation_events (consultation_id, id);
