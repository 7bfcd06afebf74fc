-- LiveKit webhooks (docs/rtc.md, "LiveKit"; issue 13).
--
-- livekit_webhook_events: the ids of the webhooks taken in, kept 24 hours, so a
-- replayed webhook (LiveKit's signature stays valid for the same body) is refused.
-- Webhooks older than a few minutes are refused by their own time, so an id
-- forgotten after 24 hours cannot come back.
CREATE TABLE livekit_webhook_events (
    event_id text PRIMARY KEY CHECK (length(event_id) BETWEEN 1 AND 200),
    event text NOT NULL CHECK (length(event) BETWEEN 1 AND 64),
    room text CHECK (length(room) <= 200),
    created_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX livekit_webhook_events_received ON livekit_webhook_events (received_at);

-- livekit_rooms: each room's state, merged from its events in any order
-- (teleconsult/rtc/livekit_state.py): connections per identity, recordings.
-- The reconciler's work lists: open_egress, some recording has no final state yet or
-- its end was not yet handed to the recording store; occupied, someone is in the room
-- by the events so far (rechecked with ListParticipants when there is no news).
CREATE TABLE livekit_rooms (
    room text PRIMARY KEY CHECK (length(room) BETWEEN 1 AND 200),
    consultation_id uuid NOT NULL,
    state jsonb NOT NULL CHECK (jsonb_typeof(state) = 'object'),
    open_egress boolean NOT NULL DEFAULT false,
    occupied boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX livekit_rooms_open_egress ON livekit_rooms (updated_at) WHERE open_egress;
CREATE INDEX livekit_rooms_occupied ON livekit_rooms (updated_at) WHERE occupied;
