-- Durable timers and external events (functions/80_events_in.sql).
--
-- A sleep or wait_for_event step parks in orchestration_steps itself (state
-- waiting_retry, next_attempt_at = its deadline, the deadline also in spec.wake_at), so
-- the claim's due-retry path wakes it; these tables hold what is not a step.

-- External events received by SendEvent, kept until expires_at so that a step that
-- starts waiting after the event was sent still receives it. event_id is the sender's
-- idempotency key.
CREATE TABLE external_events (
    organization_id  text NOT NULL REFERENCES organizations (id),
    event_id         text NOT NULL,
    name             text NOT NULL,
    key              text NOT NULL,
    payload          jsonb NOT NULL DEFAULT '{}',
    received_at      timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    delivered_steps  integer NOT NULL DEFAULT 0,
    PRIMARY KEY (organization_id, event_id)
);
CREATE INDEX external_events_match_idx
    ON external_events (organization_id, name, key, received_at);
CREATE INDEX external_events_expiry_idx ON external_events (expires_at);
COMMENT ON TABLE external_events IS
    'External events (SendEvent), kept for the retention window; delivered_steps counts '
    'the waiting steps the first send woke.';

-- wait_for_event steps parked now, by the name and resolved key they wait for.
CREATE TABLE event_waits (
    run_id           uuid NOT NULL,
    step_id          text NOT NULL,
    organization_id  text NOT NULL,
    name             text NOT NULL,
    key              text NOT NULL,
    since            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, step_id),
    FOREIGN KEY (run_id, step_id)
        REFERENCES orchestration_steps (run_id, step_id) ON DELETE CASCADE
);
CREATE INDEX event_waits_match_idx ON event_waits (organization_id, name, key);
COMMENT ON TABLE event_waits IS
    'wait_for_event steps parked on an event (name, resolved key); removed on delivery '
    'or timeout.';
