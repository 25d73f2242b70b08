-- 0009_keyed: concurrency keys, run priorities and fair share (functions/40_claim.sql,
-- functions/46_keys.sql).
--
-- A run may carry a concurrency key value (the definition's execution.concurrency.key
-- over its input, computed once at StartRun), with the limits of its definition:
-- max_runs_per_key (runs of one key value executing at once) and max_steps_per_key
-- (steps of them running at once). key_admitted is false while a started run waits for
-- its key (its steps stay pending). priority orders the claim (higher first).
-- Steps carry their run's priority and key (copied at creation) so the claim and the
-- eager claim of a completion can probe for other keys' queued work by index.
ALTER TABLE orchestration_runs
    ADD COLUMN concurrency_key text CHECK (length(concurrency_key) <= 256),
    ADD COLUMN priority smallint NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 9),
    ADD COLUMN max_runs_per_key integer NOT NULL DEFAULT 0 CHECK (max_runs_per_key >= 0),
    ADD COLUMN max_steps_per_key integer NOT NULL DEFAULT 0 CHECK (max_steps_per_key >= 0),
    ADD COLUMN key_admitted boolean NOT NULL DEFAULT true;
COMMENT ON COLUMN orchestration_runs.concurrency_key IS
    'Value of the definition''s concurrency key for this run; NULL without a key.';
COMMENT ON COLUMN orchestration_runs.key_admitted IS
    'False while a started run waits for its concurrency key (max_runs_per_key).';

ALTER TABLE orchestration_steps
    ADD COLUMN concurrency_key text NOT NULL DEFAULT '',
    ADD COLUMN priority smallint NOT NULL DEFAULT 0;
COMMENT ON COLUMN orchestration_steps.concurrency_key IS
    'The run''s concurrency key value ('''' without one), copied for the claim.';

-- Admission: the admitted unfinished runs of a key value, and the waiting ones in order.
CREATE INDEX orchestration_runs_key_admitted_idx
    ON orchestration_runs (organization_id, concurrency_key)
    WHERE concurrency_key IS NOT NULL AND key_admitted AND state IN ('running', 'paused');
CREATE INDEX orchestration_runs_key_waiting_idx
    ON orchestration_runs (organization_id, concurrency_key, priority DESC, created_at, id)
    WHERE NOT key_admitted AND state = 'running';
-- Fair share: is another (priority, organization, key) waiting in the queue?
CREATE INDEX orchestration_steps_queued_share_idx
    ON orchestration_steps (priority, organization_id, concurrency_key) WHERE state = 'queued';

-- Rate limits per concurrency key: an agent whose rate limit is per key keeps one window
-- per key value (runs without a key share the window of ''); other agents log ''.
ALTER TABLE agents ADD COLUMN rate_per_key boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN agents.rate_per_key IS
    'The rate limit applies to each concurrency key value separately.';
ALTER TABLE agent_rate_usage ADD COLUMN concurrency_key text NOT NULL DEFAULT '';
DROP INDEX agent_rate_usage_idx;
CREATE INDEX agent_rate_usage_idx ON agent_rate_usage (organization_id, agent, concurrency_key, at);
