-- The complete Podium schema: what the migrations in migrations/ produce, written out
-- for readers. It is not executed by the server (migrations are the only path); the
-- test tests/integration/test_migrations.py::test_schema_sql_matches_migrations builds
-- one database from this file and one from the migrations and fails when they differ.
-- Change both together: add a migration, then update this file.
--
-- Conventions: every table carries organization_id (tenancy); times are timestamptz;
-- payloads are jsonb; state columns hold lowercase state names guarded by CHECK
-- constraints; children of a run are deleted with it (ON DELETE CASCADE).

-- Created by the migrator itself (podium.server.storage.migrations).
CREATE TABLE schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE schema_migrations IS
    'Applied migrations (migrations/NNNN_name.sql), with the SHA-256 of each file.';

CREATE TABLE organizations (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE organizations IS
    'Tenants. Every other row belongs to exactly one organization.';

INSERT INTO organizations (id, name) VALUES ('default', 'Default organization');

CREATE TABLE orchestration_definitions (
    organization_id  text NOT NULL REFERENCES organizations (id),
    name             text NOT NULL,
    version          integer NOT NULL CHECK (version > 0),
    description      text NOT NULL DEFAULT '',
    spec             jsonb NOT NULL,
    content_hash     text NOT NULL,
    archived         boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- Also the "latest version per name" index: (organization_id, name) then a backward
    -- scan on version.
    PRIMARY KEY (organization_id, name, version)
);
COMMENT ON TABLE orchestration_definitions IS
    'Immutable versions of named DAG definitions; versions count 1, 2, ... per name.';

CREATE TABLE orchestration_runs (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id      text NOT NULL REFERENCES organizations (id),
    definition_name      text,
    definition_version   integer,
    plan                 jsonb NOT NULL,
    state                text NOT NULL DEFAULT 'created'
        CHECK (state IN ('created', 'running', 'paused', 'succeeded', 'failed', 'cancelled')),
    input                jsonb NOT NULL DEFAULT '{}',
    output               jsonb,
    metadata             jsonb NOT NULL DEFAULT '{}',
    labels               jsonb NOT NULL DEFAULT '{}',
    request_id           text,
    max_parallel         integer NOT NULL DEFAULT 1 CHECK (max_parallel > 0),
    run_attempt          integer NOT NULL DEFAULT 1 CHECK (run_attempt > 0),
    parent_run_id        uuid REFERENCES orchestration_runs (id) ON DELETE CASCADE,
    parent_step_id       text,
    error                jsonb,
    rollback_hints       jsonb,
    input_tokens         bigint NOT NULL DEFAULT 0,
    output_tokens        bigint NOT NULL DEFAULT 0,
    cost_usd             numeric NOT NULL DEFAULT 0,
    bypass_cache         boolean NOT NULL DEFAULT false,
    webhook_url          text,
    trace_context        jsonb,
    last_event_sequence  bigint NOT NULL DEFAULT 0,
    steps_remaining      integer NOT NULL DEFAULT 0 CHECK (steps_remaining >= 0),
    depth                integer NOT NULL DEFAULT 0 CHECK (depth >= 0),
    forked_from_run_id   uuid REFERENCES orchestration_runs (id) ON DELETE SET NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    started_at           timestamptz,
    ended_at             timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT orchestration_runs_request_id_key UNIQUE (organization_id, request_id),
    CONSTRAINT orchestration_runs_definition_check
        CHECK ((definition_name IS NULL) = (definition_version IS NULL)),
    CONSTRAINT orchestration_runs_definition_fkey
        FOREIGN KEY (organization_id, definition_name, definition_version)
        REFERENCES orchestration_definitions (organization_id, name, version)
);
COMMENT ON TABLE orchestration_runs IS
    'One execution of a plan (a definition version or an inline plan). plan is a '
    'snapshot, so later definition versions never change a run. request_id makes a '
    'retried StartRun return the same run.';
-- Listing: newest first, keyset on (created_at, id).
CREATE INDEX orchestration_runs_list_idx
    ON orchestration_runs (organization_id, created_at DESC, id DESC);
CREATE INDEX orchestration_runs_state_idx
    ON orchestration_runs (organization_id, state, created_at DESC, id DESC);
CREATE INDEX orchestration_runs_definition_idx
    ON orchestration_runs (organization_id, definition_name, created_at DESC, id DESC);
CREATE INDEX orchestration_runs_labels_idx
    ON orchestration_runs USING gin (labels jsonb_path_ops);
CREATE INDEX orchestration_runs_parent_idx
    ON orchestration_runs (parent_run_id) WHERE parent_run_id IS NOT NULL;

CREATE TABLE orchestration_steps (
    run_id                uuid NOT NULL REFERENCES orchestration_runs (id) ON DELETE CASCADE,
    step_id               text NOT NULL,
    organization_id       text NOT NULL REFERENCES organizations (id),
    position              integer NOT NULL,
    state                 text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'queued', 'running', 'waiting_retry', 'awaiting_approval',
                         'succeeded', 'failed', 'skipped', 'cancelled')),
    agent                 text,
    skill                 text,
    depends_on            text[] NOT NULL DEFAULT '{}',
    pending_dependencies  integer NOT NULL DEFAULT 0 CHECK (pending_dependencies >= 0),
    spec                  jsonb NOT NULL,
    input                 jsonb,
    output                jsonb,
    error                 jsonb,
    attempt               integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts          integer NOT NULL DEFAULT 1 CHECK (max_attempts > 0),
    conversation_id       uuid,
    lease_owner           text,
    lease_expires_at      timestamptz,
    next_attempt_at       timestamptz,
    queued_at             timestamptz,
    started_at            timestamptz,
    ended_at              timestamptz,
    cached                boolean NOT NULL DEFAULT false,
    cache_source_run_id   uuid,
    child_run_id          uuid,
    approval_id           uuid,
    timeout_seconds       double precision,
    input_tokens          bigint NOT NULL DEFAULT 0,
    output_tokens         bigint NOT NULL DEFAULT 0,
    cost_usd              numeric NOT NULL DEFAULT 0,
    input_refs            text[] NOT NULL DEFAULT '{}',
    is_sink               boolean NOT NULL DEFAULT false,
    PRIMARY KEY (run_id, step_id)
);
COMMENT ON TABLE orchestration_steps IS
    'The steps of a run, created with it. pending_dependencies counts unfinished '
    'upstream steps; a running step is leased (lease_owner, lease_expires_at) by one '
    'replica, and attempt fences late results from stale attempts.';
-- Scheduler claim: oldest queued first; expired leases; retries that are due.
CREATE INDEX orchestration_steps_queued_idx
    ON orchestration_steps (queued_at) WHERE state = 'queued';
CREATE INDEX orchestration_steps_lease_idx
    ON orchestration_steps (lease_expires_at) WHERE state = 'running';
CREATE INDEX orchestration_steps_retry_idx
    ON orchestration_steps (next_attempt_at) WHERE state = 'waiting_retry';

CREATE TABLE step_attempts (
    run_id           uuid NOT NULL,
    step_id          text NOT NULL,
    attempt          integer NOT NULL CHECK (attempt > 0),
    organization_id  text NOT NULL REFERENCES organizations (id),
    task_id          uuid NOT NULL DEFAULT gen_random_uuid(),
    agent            text,
    started_at       timestamptz NOT NULL DEFAULT now(),
    ended_at         timestamptz,
    error            jsonb,
    PRIMARY KEY (run_id, step_id, attempt),
    FOREIGN KEY (run_id, step_id)
        REFERENCES orchestration_steps (run_id, step_id) ON DELETE CASCADE
);
COMMENT ON TABLE step_attempts IS
    'One row per agent call of a step; task_id is the id sent to the agent.';

CREATE TABLE human_approvals (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  text NOT NULL REFERENCES organizations (id),
    run_id           uuid NOT NULL,
    step_id          text NOT NULL,
    kind             text NOT NULL
        CHECK (kind IN ('checkpoint_before', 'checkpoint_after', 'failure_review',
                        'input_required')),
    state            text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'decided', 'expired', 'cancelled')),
    prompt           text NOT NULL DEFAULT '',
    subject          jsonb,
    approvers        text[] NOT NULL DEFAULT '{}',
    expires_at       timestamptz,
    on_expiry        text,
    on_reject        text,
    decision         text,
    actor            text,
    comment          text,
    request_id       text,
    conversation_id  uuid,
    created_at       timestamptz NOT NULL DEFAULT now(),
    decided_at       timestamptz,
    FOREIGN KEY (run_id, step_id)
        REFERENCES orchestration_steps (run_id, step_id) ON DELETE CASCADE
);
COMMENT ON TABLE human_approvals IS
    'A human decision a step waits for: a checkpoint before/after it, or a failure review.';
CREATE INDEX human_approvals_pending_idx
    ON human_approvals (organization_id, created_at) WHERE state = 'pending';
CREATE INDEX human_approvals_expiry_idx
    ON human_approvals (expires_at) WHERE state = 'pending' AND expires_at IS NOT NULL;
CREATE INDEX human_approvals_step_idx ON human_approvals (run_id, step_id);

CREATE TABLE orchestration_events (
    run_id           uuid NOT NULL REFERENCES orchestration_runs (id) ON DELETE CASCADE,
    sequence         bigint NOT NULL CHECK (sequence > 0),
    organization_id  text NOT NULL REFERENCES organizations (id),
    type             text NOT NULL,
    step_id          text,
    attempt          integer,
    run_state        text,
    step_state       text,
    payload          jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, sequence)
);
COMMENT ON TABLE orchestration_events IS
    'Per-run ordered event log (sequence 1, 2, ...), written in the transaction of the '
    'change it reports; WatchRun replays it after a given sequence.';
CREATE INDEX orchestration_events_org_idx ON orchestration_events (organization_id, created_at);
-- Retention deletes by age.
CREATE INDEX orchestration_events_created_idx ON orchestration_events (created_at);

CREATE TABLE step_cache (
    organization_id     text NOT NULL REFERENCES organizations (id),
    cache_key           text NOT NULL,
    definition_name     text,
    definition_version  integer,
    step_id             text NOT NULL,
    output              jsonb NOT NULL,
    source_run_id       uuid,
    created_at          timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz,
    PRIMARY KEY (organization_id, cache_key)
);
COMMENT ON TABLE step_cache IS
    'Shared step-output cache. cache_key is the SHA-256 of the canonical JSON of '
    '(definition name+version, organization, step id, agent, resolved input).';
CREATE INDEX step_cache_expires_idx ON step_cache (expires_at);

CREATE TABLE agents (
    organization_id          text NOT NULL REFERENCES organizations (id),
    name                     text NOT NULL,
    endpoint                 text NOT NULL,
    skills                   text[] NOT NULL DEFAULT '{}',
    max_concurrency          integer NOT NULL DEFAULT 0 CHECK (max_concurrency >= 0),
    default_timeout_seconds  double precision NOT NULL DEFAULT 0
        CHECK (default_timeout_seconds >= 0),
    labels                   jsonb NOT NULL DEFAULT '{}',
    protocol                 text NOT NULL DEFAULT 'podium_v1',
    source                   text NOT NULL DEFAULT 'registered'
        CHECK (source IN ('registered', 'static')),
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, name)
);
COMMENT ON TABLE agents IS
    'Registered agents: gRPC endpoint, skills; max_concurrency and '
    'default_timeout_seconds use 0 for "no limit" / "server default".';
CREATE INDEX agents_skills_idx ON agents USING gin (skills);

CREATE TABLE conversations (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  text NOT NULL REFERENCES organizations (id),
    run_id           uuid REFERENCES orchestration_runs (id) ON DELETE CASCADE,
    step_id          text,
    agent            text,
    metadata         jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE conversations IS
    'Conversation ids handed to agents, so a step (or a retry) can continue a dialogue.';
CREATE INDEX conversations_run_idx ON conversations (run_id, step_id);

CREATE TABLE deliverables (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  text NOT NULL REFERENCES organizations (id),
    run_id           uuid NOT NULL REFERENCES orchestration_runs (id) ON DELETE CASCADE,
    step_id          text,
    attempt          integer,
    conversation_id  uuid,
    name             text NOT NULL,
    media_type       text NOT NULL DEFAULT 'application/octet-stream',
    size_bytes       bigint NOT NULL DEFAULT 0 CHECK (size_bytes >= 0),
    uri              text,
    data             bytea,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT deliverables_content_check CHECK (uri IS NOT NULL OR data IS NOT NULL)
);
COMMENT ON TABLE deliverables IS
    'Artifacts produced by agents: inline bytes (data) or a reference (uri).';
CREATE INDEX deliverables_run_idx ON deliverables (run_id, created_at);

CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  text NOT NULL REFERENCES organizations (id),
    url              text NOT NULL,
    run_id           uuid REFERENCES orchestration_runs (id) ON DELETE CASCADE,
    sequence         bigint,
    payload          jsonb NOT NULL,
    state            text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error       text,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz
);
COMMENT ON TABLE webhook_deliveries IS
    'Webhook outbox: written with the event it carries, delivered with retries until '
    'delivered or dead.';
CREATE INDEX webhook_deliveries_due_idx
    ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_run_idx ON webhook_deliveries (run_id);

CREATE TABLE api_keys (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  text NOT NULL REFERENCES organizations (id),
    name             text NOT NULL,
    key_prefix       text NOT NULL,
    key_hash         text NOT NULL UNIQUE,
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_used_at     timestamptz,
    revoked_at       timestamptz
);
COMMENT ON TABLE api_keys IS
    'API keys. Only a hash of each key is stored (key_hash), never the key itself; '
    'key_prefix is its first characters, shown to help people recognise a key.';
COMMENT ON COLUMN api_keys.key_hash IS 'Hash of the secret key; the key itself is never stored.';

COMMENT ON COLUMN orchestration_steps.input_refs IS
    'Ids of the steps whose outputs the input references (${steps.ID...}); their outputs '
    'are returned with the claim so dispatch needs no extra query.';
COMMENT ON COLUMN orchestration_steps.is_sink IS
    'No step depends on this one: its output is part of the run output.';
COMMENT ON COLUMN orchestration_runs.steps_remaining IS
    'Steps not yet in a terminal state; the run completes when it reaches 0.';
COMMENT ON COLUMN orchestration_runs.depth IS
    'Nesting depth of a sub-orchestration: 0 for a top-level run, parent depth + 1 for a child.';
COMMENT ON COLUMN orchestration_runs.forked_from_run_id IS
    'ForkRun: the finished run whose outputs upstream of the forked steps were copied.';

-- The engine's functions (migrations/0002_engine.sql).

-- Per-agent concurrency: running steps by agent.
CREATE INDEX orchestration_steps_running_agent_idx
    ON orchestration_steps (organization_id, agent) WHERE state = 'running';

-- Append one event to a run's log with the next gap-free sequence and notify
-- watchers. The caller holds (or takes here) the run row lock, which orders events.
CREATE FUNCTION podium_emit_event(
    p_run uuid, p_type text, p_step text, p_attempt integer, p_step_state text,
    p_payload jsonb
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_seq bigint;
    v_org text;
    v_state text;
BEGIN
    UPDATE orchestration_runs
       SET last_event_sequence = last_event_sequence + 1, updated_at = now()
     WHERE id = p_run
    RETURNING last_event_sequence, organization_id, state INTO v_seq, v_org, v_state;
    -- clock_timestamp(), not now(): a transaction that waited for a lock must not
    -- stamp its events earlier than events with lower sequences.
    INSERT INTO orchestration_events
        (run_id, sequence, organization_id, type, step_id, attempt, run_state, step_state,
         payload, created_at)
    VALUES (p_run, v_seq, v_org, p_type, p_step, p_attempt, v_state, p_step_state,
            coalesce(p_payload, '{}'), clock_timestamp());
    -- The payload is the run id only: PostgreSQL folds identical notifications of one
    -- transaction into one, and watchers read the log after their last sequence anyway.
    PERFORM pg_notify('podium_events', p_run::text);
    RETURN v_seq;
END
$$;

-- Append agent stream events (step.progress, step.output_chunk) of one attempt, already
-- coalesced by the replica, with the run's next sequence numbers. Fenced like a
-- completion: nothing is written unless the step is still running that attempt.
CREATE FUNCTION podium_append_step_events(
    p_run uuid, p_step text, p_attempt integer, p_types text[], p_payloads jsonb[]
) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_seq bigint;
    v_org text;
    v_count integer := cardinality(p_types);
BEGIN
    PERFORM 1 FROM orchestration_runs WHERE id = p_run FOR UPDATE;
    PERFORM 1 FROM orchestration_steps
     WHERE run_id = p_run AND step_id = p_step AND attempt = p_attempt AND state = 'running';
    IF NOT FOUND OR v_count = 0 THEN
        RETURN false;
    END IF;
    UPDATE orchestration_runs
       SET last_event_sequence = last_event_sequence + v_count, updated_at = now()
     WHERE id = p_run
    RETURNING last_event_sequence, organization_id INTO v_seq, v_org;
    INSERT INTO orchestration_events
        (run_id, sequence, organization_id, type, step_id, attempt, run_state, step_state,
         payload, created_at)
    SELECT p_run, v_seq - v_count + e.ord, v_org, e.type, p_step, p_attempt, 'running',
           'running', e.payload, clock_timestamp()
      FROM unnest(p_types, p_payloads) WITH ORDINALITY AS e(type, payload, ord);
    PERFORM pg_notify('podium_events', p_run::text);
    RETURN true;
END
$$;

-- Move a created run to running: run.started, then queue every step without
-- dependencies (steps are created pending) with a step.queued event each.
CREATE FUNCTION podium_start_run(p_run uuid) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_base bigint;
    v_count integer;
BEGIN
    UPDATE orchestration_runs
       SET state = 'running', started_at = coalesce(started_at, now()), updated_at = now()
     WHERE id = p_run AND state = 'created';
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM podium_emit_event(p_run, 'run.started', NULL, NULL, NULL, '{}');
    UPDATE orchestration_steps
       SET state = 'queued', queued_at = clock_timestamp()
     WHERE run_id = p_run AND state = 'pending' AND pending_dependencies = 0;
    SELECT last_event_sequence INTO v_base FROM orchestration_runs WHERE id = p_run;
    INSERT INTO orchestration_events
        (run_id, sequence, organization_id, type, step_id, attempt, run_state, step_state,
         created_at)
    SELECT s.run_id, v_base + row_number() OVER (ORDER BY s.position), s.organization_id,
           'step.queued', s.step_id, 0, 'running', 'queued', clock_timestamp()
      FROM orchestration_steps s
     WHERE s.run_id = p_run AND s.state = 'queued';
    GET DIAGNOSTICS v_count = ROW_COUNT;
    UPDATE orchestration_runs SET last_event_sequence = v_base + v_count WHERE id = p_run;
    IF v_count > 0 THEN
        PERFORM pg_notify('podium_events', p_run::text);
        PERFORM pg_notify('podium_work', '');
    END IF;
    RETURN true;
END
$$;

-- Claim up to p_limit runnable steps for p_owner, leasing them for p_lease_seconds.
--
-- Claimers are serialized by a transaction advisory lock, so the counts they read
-- (running steps per run and per agent) are exact across replicas. Inside, each
-- candidate run is locked, its due retries re-queued, and its queued steps taken
-- FOR UPDATE SKIP LOCKED while the run's max_parallel and the agents' max_concurrency
-- allow. A skill is routed to the least busy agent offering it. Each claimed step gets
-- attempt + 1 (the fencing token), a step_attempts row, its conversation and a
-- step.started event; its resolved-reference outputs come back with it.
CREATE FUNCTION podium_claim_steps(p_owner text, p_limit integer, p_lease_seconds double precision)
RETURNS TABLE (
    run_id uuid, step_id text, attempt integer, organization_id text, agent text,
    skill text, endpoint text, agent_timeout_seconds double precision, protocol text,
    task_id uuid, conversation_id uuid, spec jsonb, timeout_seconds double precision,
    max_attempts integer, run_input jsonb, upstream jsonb, labels jsonb,
    definition_name text, definition_version integer, run_created_at timestamptz,
    run_started_at timestamptz, trace_context jsonb
)
LANGUAGE plpgsql AS $$
DECLARE
    v_run record;
    v_step record;
    v_agent record;
    v_free integer;
    v_picked integer := 0;
    v_used jsonb := '{}';
    v_attempt integer;
    v_task uuid;
    v_started_ids text[];
    v_started_attempts integer[];
    v_started_agents text[];
    v_seq bigint;
    v_now timestamptz;
BEGIN
    IF p_limit <= 0 THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(1886350957, 1);
    FOR v_run IN
        SELECT r.id, r.max_parallel, r.organization_id, r.input, r.labels,
               r.definition_name, r.definition_version, r.created_at, r.started_at,
               r.trace_context
          FROM orchestration_runs r
         WHERE r.state = 'running'
           AND r.id IN (SELECT q.run_id FROM orchestration_steps q WHERE q.state = 'queued'
                        UNION
                        SELECT w.run_id FROM orchestration_steps w
                         WHERE w.state = 'waiting_retry' AND w.next_attempt_at <= now())
         ORDER BY r.created_at, r.id
           FOR UPDATE OF r
    LOOP
        EXIT WHEN v_picked >= p_limit;
        UPDATE orchestration_steps w
           SET state = 'queued', queued_at = now(), next_attempt_at = NULL
         WHERE w.run_id = v_run.id AND w.state = 'waiting_retry' AND w.next_attempt_at <= now();
        SELECT v_run.max_parallel - count(*) INTO v_free
          FROM orchestration_steps x WHERE x.run_id = v_run.id AND x.state = 'running';
        CONTINUE WHEN v_free <= 0;
        v_started_ids := '{}';
        v_started_attempts := '{}';
        v_started_agents := '{}';
        FOR v_step IN
            SELECT s.step_id, s.agent, s.skill, s.input_refs
              FROM orchestration_steps s
             WHERE s.run_id = v_run.id AND s.state = 'queued'
             ORDER BY s.queued_at, s.position
               FOR UPDATE OF s SKIP LOCKED
        LOOP
            EXIT WHEN v_free <= 0 OR v_picked >= p_limit;
            SELECT NULL::text AS name, NULL::text AS endpoint,
                   NULL::double precision AS default_timeout_seconds, NULL::text AS protocol,
                   0 AS max_concurrency, 0::bigint AS busy
              INTO v_agent;
            IF v_step.skill IS NOT NULL THEN
                -- The least busy agent offering the skill that has a free slot.
                SELECT c.name, c.endpoint, c.default_timeout_seconds, c.protocol,
                       c.max_concurrency, c.busy
                  INTO v_agent
                  FROM (SELECT a.name, a.endpoint, a.default_timeout_seconds, a.protocol,
                               a.max_concurrency,
                               (SELECT count(*) FROM orchestration_steps b
                                 WHERE b.state = 'running'
                                   AND b.organization_id = a.organization_id
                                   AND b.agent = a.name)
                               + coalesce((v_used ->> a.name)::integer, 0) AS busy
                          FROM agents a
                         WHERE a.organization_id = v_run.organization_id
                           AND v_step.skill = ANY (a.skills)) c
                 WHERE c.max_concurrency = 0 OR c.busy < c.max_concurrency
                 ORDER BY c.busy, c.name
                 LIMIT 1;
                IF NOT FOUND AND EXISTS (SELECT 1 FROM agents a
                                          WHERE a.organization_id = v_run.organization_id
                                            AND v_step.skill = ANY (a.skills)) THEN
                    CONTINUE;  -- every agent with the skill is full: stays queued
                END IF;
            ELSIF v_step.agent IS NOT NULL THEN
                SELECT a.name, a.endpoint, a.default_timeout_seconds, a.protocol,
                       a.max_concurrency,
                       CASE WHEN a.max_concurrency > 0 THEN
                           (SELECT count(*) FROM orchestration_steps b
                             WHERE b.state = 'running' AND b.organization_id = a.organization_id
                               AND b.agent = a.name)
                           + coalesce((v_used ->> a.name)::integer, 0)
                       ELSE 0 END AS busy
                  INTO v_agent
                  FROM agents a
                 WHERE a.organization_id = v_run.organization_id AND a.name = v_step.agent;
                IF FOUND AND v_agent.max_concurrency > 0 AND v_agent.busy >= v_agent.max_concurrency THEN
                    CONTINUE;  -- the agent is full: stays queued
                END IF;
            END IF;
            -- clock_timestamp(), not now(): this claim may have waited for the
            -- completion that made the step runnable; it starts after that ended.
            v_now := clock_timestamp();
            -- Unknown agents and skills without agents are claimed anyway: the executor
            -- fails them with a clear error instead of leaving them queued forever.
            UPDATE orchestration_steps s
               SET state = 'running',
                   attempt = s.attempt + 1,
                   agent = coalesce(v_agent.name, s.agent),
                   lease_owner = p_owner,
                   lease_expires_at = v_now + make_interval(secs => p_lease_seconds),
                   started_at = coalesce(s.started_at, v_now),
                   error = NULL
             WHERE s.run_id = v_run.id AND s.step_id = v_step.step_id
            RETURNING s.attempt INTO v_attempt;
            INSERT INTO step_attempts
                (run_id, step_id, attempt, organization_id, agent, started_at)
            VALUES (v_run.id, v_step.step_id, v_attempt, v_run.organization_id,
                    coalesce(v_agent.name, v_step.agent), v_now)
            RETURNING step_attempts.task_id INTO v_task;
            IF v_attempt = 1 THEN
                -- The step's conversation, kept across its attempts (and ContinueRun).
                INSERT INTO conversations (id, organization_id, run_id, step_id, agent)
                SELECT s.conversation_id, v_run.organization_id, v_run.id, v_step.step_id,
                       coalesce(v_agent.name, v_step.agent)
                  FROM orchestration_steps s
                 WHERE s.run_id = v_run.id AND s.step_id = v_step.step_id
                ON CONFLICT (id) DO NOTHING;
            END IF;
            v_started_ids := v_started_ids || v_step.step_id;
            v_started_attempts := v_started_attempts || v_attempt;
            v_started_agents := v_started_agents || coalesce(v_agent.name, v_step.agent);
            IF v_agent.name IS NOT NULL THEN
                v_used := jsonb_set(v_used, ARRAY[v_agent.name],
                                    to_jsonb(coalesce((v_used ->> v_agent.name)::integer, 0) + 1));
            END IF;
            v_free := v_free - 1;
            v_picked := v_picked + 1;
            RETURN QUERY
            SELECT s.run_id, s.step_id, s.attempt, s.organization_id, s.agent, s.skill,
                   v_agent.endpoint::text, v_agent.default_timeout_seconds::double precision,
                   v_agent.protocol::text, v_task, s.conversation_id, s.spec, s.timeout_seconds,
                   s.max_attempts, v_run.input,
                   (SELECT coalesce(jsonb_object_agg(u.step_id, u.output), '{}'::jsonb)
                      FROM orchestration_steps u
                     WHERE u.run_id = s.run_id AND u.step_id = ANY (s.input_refs)),
                   v_run.labels, v_run.definition_name, v_run.definition_version,
                   v_run.created_at, v_run.started_at, v_run.trace_context
              FROM orchestration_steps s
             WHERE s.run_id = v_run.id AND s.step_id = v_step.step_id;
        END LOOP;
        IF cardinality(v_started_ids) > 0 THEN
            -- One step.started event per claimed step, numbered with one run update.
            UPDATE orchestration_runs
               SET last_event_sequence = last_event_sequence + cardinality(v_started_ids),
                   updated_at = now()
             WHERE id = v_run.id
            RETURNING last_event_sequence INTO v_seq;
            INSERT INTO orchestration_events
                (run_id, sequence, organization_id, type, step_id, attempt, run_state,
                 step_state, payload, created_at)
            SELECT v_run.id, v_seq - cardinality(v_started_ids) + e.ord, v_run.organization_id,
                   'step.started', e.step_id, e.attempt, 'running', 'running',
                   CASE WHEN e.agent IS NULL THEN '{}'::jsonb
                        ELSE jsonb_build_object('agent', e.agent) END,
                   clock_timestamp()
              FROM unnest(v_started_ids, v_started_attempts, v_started_agents)
                   WITH ORDINALITY AS e(step_id, attempt, agent, ord);
            PERFORM pg_notify('podium_events', v_run.id::text);
        END IF;
    END LOOP;
END
$$;

-- Cancel every unfinished step of a run (the caller holds the run row lock), with a
-- step.cancelled event each carrying the state the run is moving to, written
-- set-based so a large run costs one statement; also cancel its pending approvals and
-- its unfinished child runs (parent before child: the lock order).
CREATE FUNCTION podium_cancel_steps(p_run uuid, p_run_state text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_base bigint;
    v_count integer;
    v_child record;
BEGIN
    SELECT last_event_sequence INTO v_base FROM orchestration_runs WHERE id = p_run;
    WITH cancelled AS (
        UPDATE orchestration_steps
           SET state = 'cancelled', ended_at = now(), lease_owner = NULL,
               lease_expires_at = NULL
         WHERE run_id = p_run
           AND state IN ('pending', 'queued', 'running', 'waiting_retry', 'awaiting_approval')
        RETURNING run_id, step_id, organization_id, position, attempt
    )
    INSERT INTO orchestration_events
        (run_id, sequence, organization_id, type, step_id, attempt, run_state, step_state,
         created_at)
    SELECT c.run_id, v_base + row_number() OVER (ORDER BY c.position), c.organization_id,
           'step.cancelled', c.step_id, c.attempt, p_run_state, 'cancelled', clock_timestamp()
      FROM cancelled c;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    UPDATE orchestration_runs SET last_event_sequence = v_base + v_count WHERE id = p_run;
    UPDATE human_approvals SET state = 'cancelled'
     WHERE run_id = p_run AND state = 'pending';
    -- Lock every unfinished descendant (children, theirs, ...) first, in one statement
    -- in (created_at, id) order, the order claimers and completers lock runs in: the
    -- depth-first walk below would lock a grandchild before an uncle created earlier.
    PERFORM 1 FROM orchestration_runs r
     WHERE r.id IN (WITH RECURSIVE below (id) AS (
                        SELECT c.id FROM orchestration_runs c
                         WHERE c.parent_run_id = p_run
                           AND c.state IN ('created', 'running', 'paused')
                        UNION
                        SELECT c.id FROM orchestration_runs c
                          JOIN below b ON c.parent_run_id = b.id
                         WHERE c.state IN ('created', 'running', 'paused'))
                    SELECT below.id FROM below)
     ORDER BY r.created_at, r.id
       FOR UPDATE OF r;
    FOR v_child IN
        SELECT c.id, c.organization_id FROM orchestration_runs c
         WHERE c.parent_run_id = p_run AND c.state IN ('created', 'running', 'paused')
         ORDER BY c.created_at, c.id
    LOOP
        PERFORM podium_cancel_run(v_child.id, v_child.organization_id,
                                  format('its parent run %s', p_run_state));
    END LOOP;
    RETURN v_count;
END
$$;

-- Fail a run whose step failed for good: cancel what is left, record the error and the
-- rollback hints of the completed steps (newest first, then the definition's), emit
-- run.failed and tell every replica to cancel the run's agent calls. The caller holds
-- the run row lock.
CREATE FUNCTION podium_fail_run(p_run uuid, p_step text, p_error jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM podium_cancel_steps(p_run, 'failed');
    UPDATE step_attempts
       SET ended_at = now(), error = '{"code": "CANCELLED", "message": "the run failed"}'
     WHERE run_id = p_run AND ended_at IS NULL;
    UPDATE orchestration_runs r
       SET state = 'failed', ended_at = now(), updated_at = now(), steps_remaining = 0,
           error = coalesce(p_error, '{}'::jsonb) || jsonb_build_object('step_id', p_step),
           rollback_hints = (
               SELECT coalesce(jsonb_agg(h.hint ORDER BY h.ord), '[]'::jsonb)
                 FROM (SELECT s.spec -> 'rollback' ->> 'hint' AS hint, s.ended_at AS ended,
                              row_number() OVER (ORDER BY s.ended_at DESC, s.position DESC) AS ord
                         FROM orchestration_steps s
                        WHERE s.run_id = p_run AND s.state = 'succeeded'
                          AND s.spec -> 'rollback' ->> 'hint' <> ''
                       UNION ALL
                       SELECT r2.plan -> 'error_handling' -> 'rollback' ->> 'hint', NULL,
                              1000000000
                         FROM orchestration_runs r2
                        WHERE r2.id = p_run
                          AND r2.plan -> 'error_handling' -> 'rollback' ->> 'hint' <> '') h
           )
     WHERE r.id = p_run;
    PERFORM podium_emit_event(p_run, 'run.failed', p_step, NULL, NULL,
                              jsonb_build_object('error', p_error));
    PERFORM pg_notify('podium_cancel', p_run::text);
END
$$;

-- Record the outcome of one attempt, fenced: nothing happens unless the step is still
-- running that attempt (a late result from a stale attempt or a cancelled run changes
-- nothing; returns NULL). p_outcome: 'succeeded', 'failed' (final), 'retry' (waits
-- until p_next_attempt_at), or 'checkpoint_before', 'checkpoint_after', 'review',
-- 'skipped' (see podium_park_step, 0004). Success promotes dependents whose last dependency this was
-- and completes the run after its last step; failure fails the run. Returns the run's
-- state afterwards ('succeeded' or 'failed' when this outcome ended it), NULL when fenced.
CREATE FUNCTION podium_complete_step(
    p_run uuid, p_step text, p_attempt integer, p_outcome text, p_output jsonb,
    p_error jsonb, p_input jsonb, p_next_attempt_at timestamptz,
    p_input_tokens bigint, p_output_tokens bigint, p_cost_usd numeric
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_state text := CASE p_outcome WHEN 'retry' THEN 'waiting_retry' ELSE p_outcome END;
    v_queued text[];
    v_count integer;
    v_done boolean;
    v_seq bigint;
    v_org text;
    v_run_state text;
BEGIN
    PERFORM 1 FROM orchestration_runs WHERE id = p_run FOR UPDATE;
    IF p_outcome NOT IN ('succeeded', 'failed', 'retry') THEN
        RETURN podium_park_step(p_run, p_step, p_attempt, p_outcome, p_output, p_error,
                                p_input, p_input_tokens, p_output_tokens, p_cost_usd);
    END IF;
    UPDATE orchestration_steps
       SET state = v_state,
           output = CASE WHEN v_state = 'succeeded' THEN p_output END,
           error = p_error,
           input = coalesce(p_input, input),
           ended_at = CASE WHEN v_state = 'waiting_retry' THEN NULL ELSE now() END,
           next_attempt_at = p_next_attempt_at,
           lease_owner = NULL,
           lease_expires_at = NULL,
           input_tokens = input_tokens + p_input_tokens,
           output_tokens = output_tokens + p_output_tokens,
           cost_usd = cost_usd + p_cost_usd
     WHERE run_id = p_run AND step_id = p_step AND attempt = p_attempt AND state = 'running';
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE step_attempts SET ended_at = now(), error = p_error
     WHERE run_id = p_run AND step_id = p_step AND attempt = p_attempt;

    IF v_state = 'failed' THEN
        UPDATE orchestration_runs
           SET input_tokens = input_tokens + p_input_tokens,
               output_tokens = output_tokens + p_output_tokens,
               cost_usd = cost_usd + p_cost_usd
         WHERE id = p_run;
        PERFORM podium_emit_event(p_run, 'step.failed', p_step, p_attempt, v_state,
                                  jsonb_build_object('error', p_error));
        PERFORM podium_fail_run(p_run, p_step, p_error);
        RETURN 'failed';
    END IF;

    IF v_state = 'succeeded' THEN
        -- Dependents whose last dependency this was become runnable.
        WITH promoted AS (
            UPDATE orchestration_steps d
               SET pending_dependencies = d.pending_dependencies - 1,
                   state = CASE WHEN d.pending_dependencies = 1 THEN 'queued' ELSE d.state END,
                   queued_at = CASE WHEN d.pending_dependencies = 1 THEN clock_timestamp()
                                    ELSE d.queued_at END
             WHERE d.run_id = p_run AND d.state = 'pending' AND p_step = ANY (d.depends_on)
            RETURNING d.step_id, d.state, d.position
        )
        SELECT coalesce(array_agg(step_id ORDER BY position) FILTER (WHERE state = 'queued'),
                        '{}')
          INTO v_queued FROM promoted;
    ELSE
        v_queued := '{}';
    END IF;
    v_count := cardinality(v_queued);

    -- One update of the run row: usage, progress, the events' sequence numbers, and
    -- completion after its last step (output = the outputs of the sink steps).
    UPDATE orchestration_runs r
       SET input_tokens = r.input_tokens + p_input_tokens,
           output_tokens = r.output_tokens + p_output_tokens,
           cost_usd = r.cost_usd + p_cost_usd,
           steps_remaining = r.steps_remaining - CASE WHEN v_state = 'succeeded' THEN 1 ELSE 0 END,
           last_event_sequence = r.last_event_sequence + 1 + v_count
               + CASE WHEN v_state = 'succeeded' AND r.steps_remaining = 1 THEN 1 ELSE 0 END,
           state = CASE WHEN v_state = 'succeeded' AND r.steps_remaining = 1 THEN 'succeeded'
                        ELSE r.state END,
           ended_at = CASE WHEN v_state = 'succeeded' AND r.steps_remaining = 1 THEN now()
                           ELSE r.ended_at END,
           output = CASE WHEN v_state = 'succeeded' AND r.steps_remaining = 1 THEN
                        (SELECT coalesce(jsonb_object_agg(s.step_id, s.output), '{}'::jsonb)
                           FROM orchestration_steps s WHERE s.run_id = p_run AND s.is_sink)
                    ELSE r.output END,
           updated_at = now()
     WHERE r.id = p_run
    RETURNING r.last_event_sequence, r.organization_id, r.state, r.steps_remaining = 0
         INTO v_seq, v_org, v_run_state, v_done;
    v_done := v_done AND v_state = 'succeeded';

    -- The events of this transition, numbered after the previous last sequence.
    INSERT INTO orchestration_events
        (run_id, sequence, organization_id, type, step_id, attempt, run_state, step_state,
         payload, created_at)
    SELECT p_run, v_seq - 1 - v_count - CASE WHEN v_done THEN 1 ELSE 0 END + e.ord, v_org,
           e.type, e.step_id, e.attempt,
           CASE WHEN e.type = 'run.completed' THEN v_run_state ELSE 'running' END,
           e.step_state, e.payload, clock_timestamp()
      FROM (SELECT 1::bigint AS ord,
                   CASE v_state WHEN 'succeeded' THEN 'step.completed'
                                ELSE 'step.retrying' END AS type,
                   p_step AS step_id, p_attempt AS attempt, v_state AS step_state,
                   CASE v_state
                       WHEN 'succeeded' THEN jsonb_build_object('output', p_output)
                       ELSE jsonb_build_object('error', p_error,
                                               'next_attempt', p_attempt + 1,
                                               'next_attempt_at', p_next_attempt_at)
                   END AS payload
            UNION ALL
            SELECT 1 + q.ord, 'step.queued', q.step_id, 0, 'queued', '{}'::jsonb
              FROM unnest(v_queued) WITH ORDINALITY AS q(step_id, ord)
            UNION ALL
            SELECT 2 + v_count, 'run.completed', NULL, NULL, NULL, '{}'::jsonb
             WHERE v_done) e;
    -- Only a run with a pending approval can end up held by humans (a probe of a
    -- small partial index; nothing else on the hot path).
    IF v_state = 'succeeded' AND v_count = 0 AND NOT v_done
       AND EXISTS (SELECT 1 FROM human_approvals
                    WHERE run_id = p_run AND state = 'pending') THEN
        IF podium_pause_if_held(p_run) THEN
            v_run_state := 'paused';
        END IF;
    END IF;
    PERFORM pg_notify('podium_events', p_run::text);
    IF v_count > 0 OR v_state = 'waiting_retry' THEN
        PERFORM pg_notify('podium_work', '');
    END IF;
    RETURN v_run_state;
END
$$;

-- Cancel a run: every unfinished step is cancelled (a late result is then fenced),
-- run.cancelled is emitted and every replica is told to cancel the run's agent calls.
-- Returns the run's state afterwards, or NULL when the run does not exist.
CREATE FUNCTION podium_cancel_run(p_run uuid, p_org text, p_reason text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_state text;
BEGIN
    SELECT state INTO v_state FROM orchestration_runs
     WHERE id = p_run AND organization_id = p_org FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF v_state IN ('succeeded', 'failed', 'cancelled') THEN
        RETURN v_state;
    END IF;
    PERFORM podium_cancel_steps(p_run, 'cancelled');
    UPDATE step_attempts
       SET ended_at = now(),
           error = jsonb_build_object('code', 'CANCELLED', 'message', 'the run was cancelled')
     WHERE run_id = p_run AND ended_at IS NULL;
    UPDATE orchestration_runs
       SET state = 'cancelled', ended_at = now(), updated_at = now(), steps_remaining = 0,
           error = jsonb_build_object('code', 'CANCELLED',
                                      'message', coalesce(nullif(p_reason, ''), 'cancelled'))
     WHERE id = p_run;
    PERFORM podium_emit_event(p_run, 'run.cancelled', NULL, NULL, NULL,
                              jsonb_build_object('reason', p_reason));
    PERFORM pg_notify('podium_cancel', p_run::text);
    RETURN 'cancelled';
END
$$;

-- Return steps whose lease expired (their replica died or stalled) to the queue.
-- Their attempt stays counted; the next claim takes attempt + 1, so a late result of
-- the expired attempt is fenced. A lost lease is rarely the step's fault, so it may
-- happen twice beyond max_attempts; a step that keeps losing it (e.g. it crashes its
-- replica every time) then fails with LEASE_EXPIRED instead of looping forever.
-- Returns the number of steps re-queued or failed.
CREATE FUNCTION podium_requeue_expired(p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_run record;
    v_step record;
    v_count integer := 0;
    v_error jsonb := '{"code": "LEASE_EXPIRED", "message": "every attempt lost its lease (the replica executing it stopped renewing)", "retryable": false}';
BEGIN
    FOR v_run IN
        SELECT r.id FROM orchestration_runs r
         WHERE r.id IN (SELECT e.run_id FROM orchestration_steps e
                         WHERE e.state = 'running' AND e.lease_expires_at < now()
                         LIMIT p_limit)
         ORDER BY r.created_at, r.id
           FOR UPDATE OF r SKIP LOCKED
    LOOP
        FOR v_step IN
            UPDATE orchestration_steps s
               SET state = 'queued', queued_at = now(), lease_owner = NULL,
                   lease_expires_at = NULL
             WHERE s.run_id = v_run.id AND s.state = 'running' AND s.lease_expires_at < now()
               AND s.attempt < s.max_attempts + 2
            RETURNING s.step_id, s.attempt
        LOOP
            UPDATE step_attempts
               SET ended_at = now(),
                   error = '{"code": "LEASE_EXPIRED", "message": "the replica executing this attempt stopped renewing its lease", "retryable": true}'
             WHERE run_id = v_run.id AND step_id = v_step.step_id AND attempt = v_step.attempt;
            PERFORM podium_emit_event(v_run.id, 'step.queued', v_step.step_id, v_step.attempt,
                                      'queued', '{"reason": "lease_expired"}');
            v_count := v_count + 1;
        END LOOP;
        FOR v_step IN
            UPDATE orchestration_steps s
               SET state = 'failed', ended_at = now(), lease_owner = NULL,
                   lease_expires_at = NULL, error = v_error
             WHERE s.run_id = v_run.id AND s.state = 'running' AND s.lease_expires_at < now()
            RETURNING s.step_id, s.attempt
        LOOP
            UPDATE step_attempts SET ended_at = now(), error = v_error
             WHERE run_id = v_run.id AND step_id = v_step.step_id AND attempt = v_step.attempt;
            PERFORM podium_emit_event(v_run.id, 'step.failed', v_step.step_id, v_step.attempt,
                                      'failed', jsonb_build_object('error', v_error));
            PERFORM podium_fail_run(v_run.id, v_step.step_id, v_error);
            v_count := v_count + 1;
            EXIT;  -- the run failed: its other steps are cancelled
        END LOOP;
    END LOOP;
    IF v_count > 0 THEN
        PERFORM pg_notify('podium_work', '');
    END IF;
    RETURN v_count;
END
$$;

-- == 0003_webhooks: webhook targets, the outbox trigger, delivery and retention indexes ==
-- Every INSERT into orchestration_events writes one webhook_deliveries row per (event,
-- target) in the same transaction (podium_enqueue_webhooks); see
-- migrations/0003_webhooks.sql and server/events/webhooks.py.

CREATE TABLE webhook_targets (
    organization_id  text NOT NULL REFERENCES organizations (id),
    url              text NOT NULL,
    source           text NOT NULL DEFAULT 'config' CHECK (source IN ('config')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, url)
);
COMMENT ON TABLE webhook_targets IS
    'Webhook URLs receiving every event of an organization''s runs, in addition to a '
    'run''s own webhook_url. source config: ORCHESTRATION_PROGRESS_WEBHOOK_URL, '
    'synchronised by each server at start.';

-- ListWebhookDeliveries: newest first, keyset on (created_at, id).
CREATE INDEX webhook_deliveries_list_idx
    ON webhook_deliveries (organization_id, created_at DESC, id DESC);
-- Retention deletes finished deliveries by age.
CREATE INDEX webhook_deliveries_finished_idx
    ON webhook_deliveries (created_at) WHERE state <> 'pending';

-- One delivery per (new event, target), after each INSERT statement on the event log.
-- The common case, no target at all, costs one query: webhook_targets is empty (it holds
-- a handful of rows at most) and the runs of the new events (usually one) have no
-- webhook_url (a primary key probe each, whatever the planner's estimates). A delivery
-- takes its event's created_at, so listings (newest first) follow the log.
CREATE FUNCTION podium_enqueue_webhooks() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_targets)
       AND NOT EXISTS (SELECT 1
                         FROM (SELECT DISTINCT run_id FROM new_events) e
                        WHERE (SELECT r.webhook_url FROM orchestration_runs r
                                WHERE r.id = e.run_id) IS NOT NULL) THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_deliveries (organization_id, url, run_id, sequence, created_at, payload)
    SELECT e.organization_id, t.url, e.run_id, e.sequence, e.created_at,
           -- The body, per Standard Webhooks: {type, timestamp, data}; the time is
           -- RFC 3339 in UTC whatever the session's TimeZone.
           jsonb_build_object(
               'type', e.type,
               'timestamp', to_char(e.created_at AT TIME ZONE 'UTC',
                                    'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
               'data', jsonb_build_object(
                   'organization_id', e.organization_id,
                   'run_id', e.run_id,
                   'definition_name', r.definition_name,
                   'sequence', e.sequence,
                   'step_id', e.step_id,
                   'attempt', e.attempt,
                   'run_state', e.run_state,
                   'step_state', e.step_state,
                   'payload', e.payload))
      FROM new_events e
      JOIN orchestration_runs r ON r.id = e.run_id
     CROSS JOIN LATERAL (
           SELECT r.webhook_url AS url WHERE r.webhook_url IS NOT NULL
           UNION
           SELECT w.url FROM webhook_targets w WHERE w.organization_id = e.organization_id
     ) t;
    IF FOUND THEN
        PERFORM pg_notify('podium_webhooks', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER orchestration_events_webhooks
    AFTER INSERT ON orchestration_events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION podium_enqueue_webhooks();

-- Failure handling, approvals, continue/resume, sub-orchestrations
-- (migrations/0004_failure_handling.sql).

-- The parent's sweep: running steps that wait on a child run.
CREATE INDEX orchestration_steps_child_idx
    ON orchestration_steps (child_run_id) WHERE state = 'running' AND child_run_id IS NOT NULL;

-- Pending approvals of a run (cancelled with it).
CREATE INDEX human_approvals_run_pending_idx
    ON human_approvals (run_id) WHERE state = 'pending';

-- Re-count the unfinished dependencies of every pending step of a run from the rows (a
-- skipped dependency counts as finished). The caller holds the run row lock.
CREATE FUNCTION podium_recount_dependencies(p_run uuid) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE orchestration_steps s
       SET pending_dependencies = (
               SELECT count(*) FROM orchestration_steps u
                WHERE u.run_id = p_run AND u.step_id = ANY (s.depends_on)
                  AND u.state NOT IN ('succeeded', 'skipped'))
     WHERE s.run_id = p_run AND s.state = 'pending';
END
$$;

-- Re-count every pending step's unfinished dependencies (a skipped dependency counts as
-- finished: its dependents see a null output), queue those with none left, and complete
-- the run when no step is left unfinished. The slow path after a skip, an approval or a
-- resume; the hot path (a plain success) keeps the incremental counts of
-- podium_complete_step. The caller holds the run row lock. Returns the run's state.
CREATE FUNCTION podium_refresh_run(p_run uuid) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_step record;
    v_queued integer := 0;
    v_remaining integer;
    v_state text;
BEGIN
    PERFORM podium_recount_dependencies(p_run);
    FOR v_step IN
        UPDATE orchestration_steps s
           SET state = 'queued', queued_at = clock_timestamp()
         WHERE s.run_id = p_run AND s.state = 'pending' AND s.pending_dependencies = 0
        RETURNING s.step_id, s.attempt, s.position
    LOOP
        PERFORM podium_emit_event(p_run, 'step.queued', v_step.step_id, v_step.attempt,
                                  'queued', '{}');
        v_queued := v_queued + 1;
    END LOOP;
    SELECT count(*) INTO v_remaining FROM orchestration_steps
     WHERE run_id = p_run
       AND state NOT IN ('succeeded', 'skipped', 'failed', 'cancelled');
    UPDATE orchestration_runs r
       SET steps_remaining = v_remaining,
           state = CASE WHEN v_remaining = 0 AND r.state = 'running' THEN 'succeeded'
                        ELSE r.state END,
           ended_at = CASE WHEN v_remaining = 0 AND r.state = 'running' THEN now()
                           ELSE r.ended_at END,
           output = CASE WHEN v_remaining = 0 AND r.state = 'running' THEN
                        (SELECT coalesce(jsonb_object_agg(s.step_id, s.output), '{}'::jsonb)
                           FROM orchestration_steps s WHERE s.run_id = p_run AND s.is_sink)
                    ELSE r.output END,
           updated_at = now()
     WHERE r.id = p_run
    RETURNING r.state INTO v_state;
    IF v_remaining = 0 AND v_state = 'succeeded' THEN
        PERFORM podium_emit_event(p_run, 'run.completed', NULL, NULL, NULL, '{}');
    ELSIF v_remaining > 0 AND v_queued = 0 AND v_state = 'running' THEN
        IF podium_pause_if_held(p_run) THEN
            v_state := 'paused';
        END IF;
    END IF;
    IF v_queued > 0 THEN
        PERFORM pg_notify('podium_work', '');
    END IF;
    RETURN v_state;
END
$$;

-- A running run whose remaining steps are all held by a human (awaiting approval, or
-- pending behind such a step: nothing queued, running or waiting for a retry) becomes
-- `paused` with a run.paused event. Any decision makes it running again
-- (podium_decide_approval). The caller holds the run row lock. Returns whether it paused.
CREATE FUNCTION podium_pause_if_held(p_run uuid) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM orchestration_steps
                WHERE run_id = p_run AND state IN ('queued', 'running', 'waiting_retry'))
       OR NOT EXISTS (SELECT 1 FROM orchestration_steps
                       WHERE run_id = p_run AND state = 'awaiting_approval') THEN
        RETURN false;
    END IF;
    UPDATE orchestration_runs SET state = 'paused', updated_at = now()
     WHERE id = p_run AND state = 'running';
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM podium_emit_event(
        p_run, 'run.paused', NULL, NULL, NULL,
        jsonb_build_object('awaiting', (SELECT jsonb_agg(step_id ORDER BY position)
                                          FROM orchestration_steps
                                         WHERE run_id = p_run
                                           AND state = 'awaiting_approval')));
    RETURN true;
END
$$;

-- Skip every (transitive) dependent of a skipped step whose failure policy says
-- skip_dependents; they are all still pending. The caller holds the run row lock.
CREATE FUNCTION podium_skip_dependents(p_run uuid, p_step text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_step record;
    v_count integer := 0;
    v_error jsonb := jsonb_build_object(
        'code', 'UPSTREAM_SKIPPED',
        'message', format('step %s was skipped and its policy skips its dependents', p_step),
        'retryable', false);
BEGIN
    FOR v_step IN
        WITH RECURSIVE below (step_id) AS (
            SELECT d.step_id FROM orchestration_steps d
             WHERE d.run_id = p_run AND p_step = ANY (d.depends_on)
            UNION
            SELECT d.step_id FROM orchestration_steps d
              JOIN below b ON b.step_id = ANY (d.depends_on)
             WHERE d.run_id = p_run
        )
        UPDATE orchestration_steps s
           SET state = 'skipped', ended_at = now(), error = v_error
          FROM below b
         WHERE s.run_id = p_run AND s.step_id = b.step_id AND s.state = 'pending'
        RETURNING s.step_id, s.attempt, s.position
    LOOP
        PERFORM podium_emit_event(p_run, 'step.skipped', v_step.step_id, v_step.attempt,
                                  'skipped', jsonb_build_object('error', v_error));
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END
$$;

-- Skip one step (its error kept for operators), then its dependents when its policy
-- says so, then refresh the run. The caller holds the run row lock and has already
-- moved the step out of its previous state. Returns the run's state.
CREATE FUNCTION podium_skip_step(p_run uuid, p_step text, p_error jsonb) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_attempt integer;
    v_skip_deps boolean;
BEGIN
    UPDATE orchestration_steps
       SET state = 'skipped', ended_at = now(), error = p_error, output = NULL,
           approval_id = NULL, lease_owner = NULL, lease_expires_at = NULL
     WHERE run_id = p_run AND step_id = p_step
    RETURNING attempt, coalesce((spec -> 'on_failure' ->> 'skip_dependents')::boolean, false)
         INTO v_attempt, v_skip_deps;
    PERFORM podium_emit_event(p_run, 'step.skipped', p_step, v_attempt, 'skipped',
                              jsonb_build_object('error', p_error));
    IF v_skip_deps THEN
        PERFORM podium_skip_dependents(p_run, p_step);
    END IF;
    RETURN podium_refresh_run(p_run);
END
$$;

-- Fail one step for good and, with it, the run. The caller holds the run row lock.
CREATE FUNCTION podium_fail_step(p_run uuid, p_step text, p_error jsonb) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_attempt integer;
BEGIN
    UPDATE orchestration_steps
       SET state = 'failed', ended_at = now(), error = p_error, approval_id = NULL,
           lease_owner = NULL, lease_expires_at = NULL
     WHERE run_id = p_run AND step_id = p_step
    RETURNING attempt INTO v_attempt;
    PERFORM podium_emit_event(p_run, 'step.failed', p_step, v_attempt, 'failed',
                              jsonb_build_object('error', p_error));
    PERFORM podium_fail_run(p_run, p_step, p_error);
    RETURN 'failed';
END
$$;

-- Record an attempt outcome that parks or skips the step instead of finishing it the
-- hot way (called by podium_complete_step, which holds the run row lock):
--   checkpoint_before  the input was resolved, the agent not called: the attempt is
--                      given back and the step waits on a checkpoint_before approval
--                      (p_output = {"task_id": the claim's task id}, its fence);
--   checkpoint_after   the agent succeeded: the output is kept and the step waits on a
--                      checkpoint_after approval before its dependents see it;
--   review             the last attempt failed and the policy says notify_human: the
--                      step waits on a failure_review approval (retry, skip or fail);
--   skipped            the last attempt failed and the policy says allow_skip;
--   input_required     an A2A agent asked for more input (INPUT_REQUIRED): the step
--                      waits on an input_required approval whose subject (p_output) is
--                      the question and the A2A task id; the answer (DecideApproval
--                      APPROVE with input, or ContinueRun) continues that task.
-- Fenced like every completion. Returns the run's state, NULL when fenced.
CREATE FUNCTION podium_park_step(
    p_run uuid, p_step text, p_attempt integer, p_outcome text, p_output jsonb,
    p_error jsonb, p_input jsonb, p_input_tokens bigint, p_output_tokens bigint,
    p_cost_usd numeric
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_step record;
    v_cp jsonb;
    v_kind text;
    v_subject jsonb;
    v_approval uuid;
    v_prompt text;
    v_expires double precision;
BEGIN
    SELECT s.organization_id, s.spec, s.conversation_id INTO v_step
      FROM orchestration_steps s
     WHERE s.run_id = p_run AND s.step_id = p_step AND s.attempt = p_attempt
       AND s.state = 'running'
       FOR UPDATE;
    -- A checkpoint_before park gives its attempt number back, so the attempt dispatched
    -- after the approval runs under the same number: a late copy of the park (a batch
    -- retried after an unconfirmed commit) must not park that approved attempt again.
    IF NOT FOUND OR (p_outcome = 'checkpoint_before'
                     AND coalesce((v_step.spec ->> 'checkpoint_passed')::boolean, false)) THEN
        RETURN NULL;
    END IF;
    -- The attempt number alone cannot fence a checkpoint_before park (it is reused, also
    -- after a ResumeRun that clears checkpoint_passed): the park names the task id of its
    -- claim (p_output.task_id), and only the attempt row of that claim matches.
    IF p_outcome = 'checkpoint_before' AND NOT EXISTS (
           SELECT 1 FROM step_attempts a
            WHERE a.run_id = p_run AND a.step_id = p_step AND a.attempt = p_attempt
              AND a.task_id::text = p_output ->> 'task_id') THEN
        RETURN NULL;
    END IF;
    UPDATE orchestration_runs
       SET input_tokens = input_tokens + p_input_tokens,
           output_tokens = output_tokens + p_output_tokens,
           cost_usd = cost_usd + p_cost_usd
     WHERE id = p_run;
    IF p_outcome = 'checkpoint_before' THEN
        -- No agent was called: this was not an attempt.
        DELETE FROM step_attempts
         WHERE run_id = p_run AND step_id = p_step AND attempt = p_attempt;
        UPDATE orchestration_steps
           SET attempt = p_attempt - 1,
               started_at = CASE WHEN p_attempt = 1 THEN NULL ELSE started_at END
         WHERE run_id = p_run AND step_id = p_step;
    ELSE
        UPDATE step_attempts SET ended_at = now(), error = p_error
         WHERE run_id = p_run AND step_id = p_step AND attempt = p_attempt;
    END IF;
    UPDATE orchestration_steps
       SET input = coalesce(p_input, input),
           output = CASE WHEN p_outcome = 'checkpoint_after' THEN p_output END,
           error = p_error,
           lease_owner = NULL,
           lease_expires_at = NULL,
           input_tokens = input_tokens + p_input_tokens,
           output_tokens = output_tokens + p_output_tokens,
           cost_usd = cost_usd + p_cost_usd
     WHERE run_id = p_run AND step_id = p_step;

    IF p_outcome = 'skipped' THEN
        RETURN podium_skip_step(p_run, p_step, p_error);
    END IF;

    v_cp := coalesce(v_step.spec -> 'checkpoint', '{}'::jsonb);
    IF p_outcome = 'input_required' THEN
        v_kind := 'input_required';
        v_subject := p_output;
        v_prompt := coalesce(nullif(p_output ->> 'question', ''),
                             format('The agent of step %s needs more input.', p_step));
        v_expires := 0;
        v_cp := '{}'::jsonb;
    ELSIF p_outcome = 'review' THEN
        v_kind := 'failure_review';
        v_subject := jsonb_build_object('error', p_error, 'input', p_input);
        v_prompt := format('Step %s failed after its last attempt: %s. Retry, skip or fail?',
                           p_step, coalesce(p_error ->> 'message', 'unknown error'));
        v_expires := 0;
    ELSE
        v_kind := p_outcome;  -- checkpoint_before or checkpoint_after
        v_subject := CASE p_outcome WHEN 'checkpoint_before'
                         THEN jsonb_build_object('input', p_input)
                         ELSE jsonb_build_object('output', p_output) END;
        v_prompt := coalesce(nullif(v_cp ->> 'prompt', ''),
                             format('Approve step %s %s it runs?', p_step,
                                    CASE p_outcome WHEN 'checkpoint_before' THEN 'before'
                                                   ELSE 'after' END));
        v_expires := coalesce((v_cp ->> 'expires_after_seconds')::double precision, 0);
    END IF;
    INSERT INTO human_approvals
        (organization_id, run_id, step_id, kind, prompt, subject, approvers, expires_at,
         on_expiry, on_reject, conversation_id)
    VALUES (
        v_step.organization_id, p_run, p_step, v_kind, v_prompt, v_subject,
        CASE WHEN v_kind = 'failure_review' THEN '{}'::text[]
             ELSE ARRAY(SELECT jsonb_array_elements_text(coalesce(v_cp -> 'approvers',
                                                                  '[]'::jsonb))) END,
        CASE WHEN v_expires > 0 THEN now() + make_interval(secs => v_expires) END,
        CASE WHEN v_kind = 'failure_review' THEN 'fail'
             WHEN v_cp ->> 'on_expiry' = 'EXPIRY_ACTION_APPROVE' THEN 'approve'
             ELSE 'reject' END,
        CASE WHEN v_cp ->> 'on_reject' = 'REJECT_ACTION_SKIP' THEN 'skip' ELSE 'fail' END,
        v_step.conversation_id)
    RETURNING id INTO v_approval;
    UPDATE orchestration_steps
       SET state = 'awaiting_approval', approval_id = v_approval
     WHERE run_id = p_run AND step_id = p_step;
    PERFORM podium_emit_event(
        p_run, 'step.awaiting_approval', p_step,
        CASE WHEN p_outcome = 'checkpoint_before' THEN p_attempt - 1 ELSE p_attempt END,
        'awaiting_approval',
        jsonb_strip_nulls(jsonb_build_object('approval_id', v_approval, 'kind', v_kind,
                                             'prompt', v_prompt, 'error', p_error)));
    IF podium_pause_if_held(p_run) THEN
        RETURN 'paused';
    END IF;
    RETURN 'running';
END
$$;

-- Decide a pending approval (p_state 'decided'), or apply its default action on expiry
-- (p_state 'expired'). Lock order: the run, then the approval. Returns a status:
--   'ok'                 decided now;
--   'unchanged'          already decided with the same request_id and decision (a
--                        retried call);
--   'not_found', 'already_decided', 'already_expired', 'already_cancelled',
--   'invalid_decision'   (the decision does not fit the approval's kind),
--   'forbidden'          (the actor is not one of the approvers).
-- p_input: on approval, more input for the step (merged over its resolved input when
-- it runs; checkpoint_before) or a replacement output (checkpoint_after).
CREATE FUNCTION podium_decide_approval(
    p_org text, p_approval uuid, p_decision text, p_actor text, p_comment text,
    p_request_id text, p_state text, p_input jsonb
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_run uuid;
    v_a record;
    v_action text;
    v_error jsonb;
BEGIN
    SELECT run_id INTO v_run FROM human_approvals
     WHERE id = p_approval AND organization_id = p_org;
    IF NOT FOUND THEN
        RETURN 'not_found';
    END IF;
    PERFORM 1 FROM orchestration_runs WHERE id = v_run FOR UPDATE;
    SELECT * INTO v_a FROM human_approvals WHERE id = p_approval FOR UPDATE;
    IF v_a.state <> 'pending' THEN
        IF p_request_id IS NOT NULL AND v_a.request_id = p_request_id
           AND v_a.decision = p_decision THEN
            RETURN 'unchanged';
        END IF;
        RETURN 'already_' || v_a.state;
    END IF;
    IF (v_a.kind = 'failure_review') <> (p_decision IN ('retry', 'skip', 'fail'))
       OR p_decision NOT IN ('approve', 'reject', 'retry', 'skip', 'fail') THEN
        RETURN 'invalid_decision';
    END IF;
    IF p_state = 'decided' AND cardinality(v_a.approvers) > 0
       AND NOT (coalesce(p_actor, '') = ANY (v_a.approvers)) THEN
        RETURN 'forbidden';
    END IF;
    UPDATE human_approvals
       SET state = p_state, decision = p_decision, actor = p_actor, comment = p_comment,
           request_id = p_request_id, decided_at = now()
     WHERE id = p_approval;
    -- A decision lets the run go on (podium_refresh_run pauses it again if every
    -- remaining step is still held).
    UPDATE orchestration_runs SET state = 'running', updated_at = now()
     WHERE id = v_run AND state = 'paused';
    UPDATE orchestration_steps SET approval_id = NULL
     WHERE run_id = v_run AND step_id = v_a.step_id;
    PERFORM podium_emit_event(
        v_run, 'approval.decided', v_a.step_id, NULL, 'awaiting_approval',
        jsonb_strip_nulls(jsonb_build_object(
            'approval_id', p_approval, 'decision', p_decision, 'actor', p_actor,
            'comment', nullif(p_comment, ''), 'kind', v_a.kind,
            'expired', CASE WHEN p_state = 'expired' THEN true END)));

    v_action := CASE
        WHEN p_decision = 'approve' AND v_a.kind = 'checkpoint_before' THEN 'queue'
        WHEN p_decision = 'approve' AND v_a.kind = 'input_required' THEN 'answer'
        WHEN p_decision = 'approve' THEN 'succeed'
        WHEN p_decision = 'reject' THEN coalesce(v_a.on_reject, 'fail')
        ELSE p_decision END;  -- retry, skip, fail
    IF v_a.kind = 'failure_review' THEN
        SELECT error INTO v_error FROM orchestration_steps
         WHERE run_id = v_run AND step_id = v_a.step_id;
    ELSE
        v_error := jsonb_build_object(
            'code', CASE WHEN p_state = 'expired' THEN 'APPROVAL_EXPIRED'
                         WHEN v_a.kind = 'input_required' THEN 'INPUT_REFUSED'
                         ELSE 'CHECKPOINT_REJECTED' END,
            'message', CASE WHEN p_state = 'expired'
                            THEN 'the checkpoint expired without a decision'
                            ELSE format('rejected by %s%s', coalesce(nullif(p_actor, ''), 'an approver'),
                                        coalesce(': ' || nullif(p_comment, ''), '')) END,
            'retryable', false);
    END IF;

    IF v_action = 'answer' THEN
        -- The next attempt continues the agent's task with the answer as its input.
        UPDATE orchestration_steps
           SET state = 'queued', queued_at = clock_timestamp(), error = NULL,
               max_attempts = greatest(max_attempts, attempt + 1),
               spec = spec || jsonb_build_object('answer', jsonb_build_object(
                   'attempt', attempt + 1,
                   'task_id', v_a.subject ->> 'task_id',
                   'input', coalesce(p_input, '{}'::jsonb)))
         WHERE run_id = v_run AND step_id = v_a.step_id;
        PERFORM podium_emit_event(v_run, 'step.queued', v_a.step_id, NULL, 'queued',
                                  '{"reason": "answered"}');
        PERFORM pg_notify('podium_work', '');
    ELSIF v_action IN ('queue', 'retry') THEN
        UPDATE orchestration_steps
           SET state = 'queued', queued_at = clock_timestamp(),
               spec = CASE WHEN v_action = 'queue'
                           THEN jsonb_set(spec, '{checkpoint_passed}', 'true')
                                || CASE WHEN p_input IS NOT NULL
                                        THEN jsonb_build_object('approved_input', p_input)
                                        ELSE '{}'::jsonb END
                           ELSE spec END,
               max_attempts = CASE WHEN v_action = 'retry' THEN attempt + 1
                                   ELSE max_attempts END
         WHERE run_id = v_run AND step_id = v_a.step_id;
        PERFORM podium_emit_event(v_run, 'step.queued', v_a.step_id, NULL, 'queued',
                                  jsonb_build_object('reason', p_decision));
        PERFORM pg_notify('podium_work', '');
    ELSIF v_action = 'succeed' THEN
        UPDATE orchestration_steps
           SET state = 'succeeded', ended_at = now(), error = NULL,
               output = coalesce(p_input, output)
         WHERE run_id = v_run AND step_id = v_a.step_id;
        PERFORM podium_emit_event(
            v_run, 'step.completed', v_a.step_id, NULL, 'succeeded',
            (SELECT jsonb_build_object('output', s.output) FROM orchestration_steps s
              WHERE s.run_id = v_run AND s.step_id = v_a.step_id));
        PERFORM podium_refresh_run(v_run);
    ELSIF v_action = 'skip' THEN
        PERFORM podium_skip_step(v_run, v_a.step_id, v_error);
    ELSE
        PERFORM podium_fail_step(v_run, v_a.step_id, v_error);
    END IF;
    RETURN 'ok';
END
$$;

-- Apply the default action of up to p_limit expired approvals (approve or reject for a
-- checkpoint as configured; fail for a failure review). Returns how many. Runs are
-- visited in the claimers' lock order.
CREATE FUNCTION podium_expire_approvals(p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_a record;
    v_count integer := 0;
BEGIN
    FOR v_a IN
        SELECT a.id, a.organization_id, a.kind, a.on_expiry
          FROM human_approvals a
          JOIN orchestration_runs r ON r.id = a.run_id
         WHERE a.state = 'pending' AND a.expires_at <= now()
         ORDER BY r.created_at, r.id, a.created_at
         LIMIT p_limit
    LOOP
        IF podium_decide_approval(
               v_a.organization_id, v_a.id,
               CASE WHEN v_a.kind = 'failure_review' THEN 'fail'
                    ELSE coalesce(v_a.on_expiry, 'reject') END,
               'podium', 'expired', NULL, 'expired', NULL) = 'ok' THEN
            v_count := v_count + 1;
        END IF;
    END LOOP;
    RETURN v_count;
END
$$;

-- ContinueRun: start a created run, or give more input to a running run that waits on
-- a checkpoint (the input is merged over the run's; steps resolved later see it) or on
-- an agent's question (A2A INPUT_REQUIRED: the input is the answer sent to the agent).
-- Returns 'started', 'continued', the run's state when neither applies, or NULL when the
-- run does not exist.
CREATE FUNCTION podium_continue_run(p_run uuid, p_org text, p_input jsonb) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_state text;
    v_answer record;
BEGIN
    SELECT state INTO v_state FROM orchestration_runs
     WHERE id = p_run AND organization_id = p_org FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF v_state = 'created' THEN
        IF p_input IS NOT NULL THEN
            UPDATE orchestration_runs SET input = input || p_input WHERE id = p_run;
        END IF;
        PERFORM podium_start_run(p_run);
        RETURN 'started';
    END IF;
    IF v_state IN ('running', 'paused') AND EXISTS (
           SELECT 1 FROM human_approvals a
            WHERE a.run_id = p_run AND a.state = 'pending'
              AND a.kind IN ('checkpoint_before', 'checkpoint_after', 'input_required')) THEN
        PERFORM podium_emit_event(
            p_run, 'run.continued', NULL, NULL, NULL,
            jsonb_build_object('input_keys',
                               coalesce((SELECT jsonb_agg(k) FROM jsonb_object_keys(
                                            coalesce(p_input, '{}'::jsonb)) k), '[]')));
        -- Steps waiting for input (A2A INPUT_REQUIRED) get p_input as their answer.
        FOR v_answer IN
            SELECT a.id FROM human_approvals a
             WHERE a.run_id = p_run AND a.state = 'pending' AND a.kind = 'input_required'
             ORDER BY a.created_at, a.id
        LOOP
            PERFORM podium_decide_approval(p_org, v_answer.id, 'approve', 'ContinueRun', '',
                                           NULL, 'decided', coalesce(p_input, '{}'::jsonb));
        END LOOP;
        IF p_input IS NOT NULL AND EXISTS (
               SELECT 1 FROM human_approvals a
                WHERE a.run_id = p_run AND a.state = 'pending'
                  AND a.kind IN ('checkpoint_before', 'checkpoint_after')) THEN
            UPDATE orchestration_runs SET input = input || p_input, updated_at = now()
             WHERE id = p_run;
        END IF;
        RETURN 'continued';
    END IF;
    RETURN v_state;
END
$$;

-- ResumeRun: a failed or cancelled run runs again. Its failed, cancelled and skipped
-- steps and every step downstream of them go back to pending (succeeded steps keep
-- their outputs); attempts keep counting (they fence late results) and each re-run step
-- gets its full max_attempts again; run_attempt + 1. Returns the run's state before the
-- call (the caller refuses anything but failed or cancelled), 'child' for the child run of
-- a sub-orchestration (resumed through its parent), NULL when it does not exist.
CREATE FUNCTION podium_resume_run(p_run uuid, p_org text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_state text;
    v_attempt integer;
    v_parent uuid;
BEGIN
    SELECT state, parent_run_id INTO v_state, v_parent FROM orchestration_runs
     WHERE id = p_run AND organization_id = p_org FOR UPDATE;
    IF NOT FOUND OR v_state NOT IN ('failed', 'cancelled') THEN
        RETURN v_state;
    END IF;
    IF v_parent IS NOT NULL THEN
        -- A child run is re-run through its parent (ResumeRun of the parent starts a new
        -- child): resumed alone, nobody would wait for it.
        RETURN 'child';
    END IF;
    WITH RECURSIVE redo (step_id) AS (
        SELECT s.step_id FROM orchestration_steps s
         WHERE s.run_id = p_run AND s.state <> 'succeeded'
        UNION
        SELECT d.step_id FROM orchestration_steps d
          JOIN redo r ON r.step_id = ANY (d.depends_on)
         WHERE d.run_id = p_run
    )
    UPDATE orchestration_steps s
       SET state = 'pending', output = NULL, error = NULL, ended_at = NULL,
           next_attempt_at = NULL, queued_at = NULL, lease_owner = NULL,
           lease_expires_at = NULL, approval_id = NULL, child_run_id = NULL,
           cached = false, cache_source_run_id = NULL,
           spec = s.spec - 'checkpoint_passed' - 'approved_input' - 'answer',
           max_attempts = s.attempt
               + greatest(1, coalesce((s.spec -> 'on_failure' ->> 'max_attempts')::integer, 1))
      FROM redo r
     WHERE s.run_id = p_run AND s.step_id = r.step_id;
    UPDATE orchestration_runs
       SET state = 'running', run_attempt = run_attempt + 1, error = NULL, ended_at = NULL,
           rollback_hints = NULL, output = NULL, started_at = coalesce(started_at, now()),
           updated_at = now()
     WHERE id = p_run
    RETURNING run_attempt INTO v_attempt;
    PERFORM podium_emit_event(p_run, 'run.resumed', NULL, NULL, NULL,
                              jsonb_build_object('run_attempt', v_attempt,
                                                 'previous_state', v_state));
    PERFORM podium_refresh_run(p_run);
    RETURN v_state;
END
$$;

-- ForkRun: in a new run (created, not started, in the caller's transaction), mark the
-- steps of p_copy succeeded with the outputs (and inputs) they had in the finished run
-- p_source, each with a step.completed event naming that run; re-count the others'
-- dependencies and the steps left. The caller then starts the run, which queues the
-- re-executed steps whose dependencies are all copied. Returns the steps copied.
CREATE FUNCTION podium_fork_steps(p_run uuid, p_source uuid, p_copy text[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_step record;
    v_count integer := 0;
BEGIN
    FOR v_step IN
        UPDATE orchestration_steps s
           SET state = 'succeeded', output = src.output, input = src.input,
               queued_at = now(), started_at = now(), ended_at = now()
          FROM orchestration_steps src
         WHERE s.run_id = p_run AND s.step_id = ANY (p_copy)
           AND src.run_id = p_source AND src.step_id = s.step_id AND src.state = 'succeeded'
        RETURNING s.step_id, s.output, s.position
    LOOP
        PERFORM podium_emit_event(p_run, 'step.completed', v_step.step_id, 0, 'succeeded',
                                  jsonb_build_object('output', v_step.output,
                                                     'copied_from_run_id', p_source));
        v_count := v_count + 1;
    END LOOP;
    PERFORM podium_recount_dependencies(p_run);
    UPDATE orchestration_runs
       SET steps_remaining = (SELECT count(*) FROM orchestration_steps
                               WHERE run_id = p_run AND state <> 'succeeded')
     WHERE id = p_run;
    RETURN v_count;
END
$$;

-- A child run that finished wakes the schedulers: their sweep completes the parent's
-- step waiting on it (podium_finished_children), in a transaction of its own, so a
-- child never locks its parent.
CREATE FUNCTION podium_notify_child_finished() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('podium_work', 'child');
    RETURN NULL;
END
$$;

CREATE TRIGGER orchestration_runs_child_finished
    AFTER UPDATE OF state ON orchestration_runs
    FOR EACH ROW
    WHEN (NEW.parent_run_id IS NOT NULL AND OLD.state IS DISTINCT FROM NEW.state
          AND NEW.state IN ('succeeded', 'failed', 'cancelled'))
    EXECUTE FUNCTION podium_notify_child_finished();

-- The step-output cache's single flight and functions (migrations/0005_cache.sql).
-- step_cache_flights: per key, the step attempt calling the agent for it now; alive
-- while that attempt is running (the step's lease covers it).

CREATE TABLE step_cache_flights (
    organization_id  text NOT NULL REFERENCES organizations (id),
    cache_key        text NOT NULL,
    run_id           uuid NOT NULL REFERENCES orchestration_runs (id) ON DELETE CASCADE,
    step_id          text NOT NULL,
    attempt          integer NOT NULL,
    started_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, cache_key)
);
COMMENT ON TABLE step_cache_flights IS
    'Single flight of the step-output cache: the step attempt computing each missing '
    'key. Alive while that attempt is running; taken over once it is not.';

-- InvalidateCache deletes by definition.
CREATE INDEX step_cache_definition_idx
    ON step_cache (organization_id, definition_name, definition_version);

-- Look up a cache key for a running step attempt, in one round trip. Returns one row:
--   'hit'   the entry exists and has not expired: the step is marked cached (fenced
--           like a completion) and step.cached is emitted. output is NULL when
--           p_known_created equals the entry's created_at (the replica's in-process
--           copy is current), else the stored output.
--   'lead'  no entry, and this attempt now owns the key's flight: call the agent, then
--           podium_cache_release.
--   'wait'  no entry, and another running attempt owns the flight: wait for
--           NOTIFY podium_cache (payload: the key) or a timer, then look up again.
--   'stale' the entry exists but this attempt is no longer running (fenced).
-- An expired entry is ignored and deleted. Only a hit writes what others must never see
-- lost (its event's sequence number): the other answers commit without waiting for the
-- WAL flush (a lost flight is taken over, like a dead one; a later synchronous commit
-- flushes it anyway).
CREATE FUNCTION podium_cache_lookup(
    p_org text, p_key text, p_run uuid, p_step text, p_attempt integer,
    p_known_created timestamptz
) RETURNS TABLE (
    status text, output jsonb, source_run_id uuid, created_at timestamptz,
    expires_at timestamptz
)
LANGUAGE plpgsql AS $$
DECLARE
    v_entry record;
    v_found boolean;
BEGIN
    SELECT c.output, c.source_run_id, c.created_at, c.expires_at INTO v_entry
      FROM step_cache c
     WHERE c.organization_id = p_org AND c.cache_key = p_key;
    v_found := FOUND;
    IF v_found AND v_entry.expires_at <= now() THEN
        DELETE FROM step_cache c
         WHERE c.organization_id = p_org AND c.cache_key = p_key AND c.expires_at <= now();
        v_found := false;
    END IF;
    IF NOT v_found THEN
        -- Take the flight when nobody holds it, or when its attempt no longer runs
        -- (finished without an output, cancelled, or its replica died).
        INSERT INTO step_cache_flights AS f (organization_id, cache_key, run_id, step_id, attempt)
        VALUES (p_org, p_key, p_run, p_step, p_attempt)
        ON CONFLICT (organization_id, cache_key) DO UPDATE
           SET run_id = excluded.run_id, step_id = excluded.step_id,
               attempt = excluded.attempt, started_at = now()
         WHERE (f.run_id = excluded.run_id AND f.step_id = excluded.step_id)
            OR NOT EXISTS (SELECT 1 FROM orchestration_steps s
                            WHERE s.run_id = f.run_id AND s.step_id = f.step_id
                              AND s.attempt = f.attempt AND s.state = 'running');
        IF NOT FOUND THEN
            PERFORM set_config('synchronous_commit', 'off', true);
            RETURN QUERY SELECT 'wait'::text, NULL::jsonb, NULL::uuid, NULL::timestamptz,
                                NULL::timestamptz;
            RETURN;
        END IF;
        -- A leader may have stored the output and left the flight between the first
        -- read and the insert: read again (a new snapshot) before calling the agent.
        SELECT c.output, c.source_run_id, c.created_at, c.expires_at INTO v_entry
          FROM step_cache c
         WHERE c.organization_id = p_org AND c.cache_key = p_key
           AND (c.expires_at IS NULL OR c.expires_at > now());
        IF NOT FOUND THEN
            -- An earlier attempt of this step may have been marked cached before its
            -- replica died: this attempt calls the agent, so the flag goes.
            UPDATE orchestration_steps s
               SET cached = false, cache_source_run_id = NULL
             WHERE s.run_id = p_run AND s.step_id = p_step AND s.cached;
            PERFORM set_config('synchronous_commit', 'off', true);
            RETURN QUERY SELECT 'lead'::text, NULL::jsonb, NULL::uuid, NULL::timestamptz,
                                NULL::timestamptz;
            RETURN;
        END IF;
        DELETE FROM step_cache_flights f
         WHERE f.organization_id = p_org AND f.cache_key = p_key AND f.run_id = p_run
           AND f.step_id = p_step AND f.attempt = p_attempt;
    END IF;
    -- A hit: mark the step (run row first: the lock order of every transition).
    PERFORM 1 FROM orchestration_runs r WHERE r.id = p_run FOR UPDATE;
    UPDATE orchestration_steps s
       SET cached = true, cache_source_run_id = v_entry.source_run_id
     WHERE s.run_id = p_run AND s.step_id = p_step AND s.attempt = p_attempt
       AND s.state = 'running';
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'stale'::text, NULL::jsonb, NULL::uuid, NULL::timestamptz,
                            NULL::timestamptz;
        RETURN;
    END IF;
    PERFORM podium_emit_event(
        p_run, 'step.cached', p_step, p_attempt, 'running',
        jsonb_build_object('source_run_id', v_entry.source_run_id,
                           'cache_key', p_key,
                           'cached_at', v_entry.created_at,
                           'expires_at', v_entry.expires_at));
    RETURN QUERY
    SELECT 'hit'::text,
           CASE WHEN v_entry.created_at = p_known_created THEN NULL ELSE v_entry.output END,
           v_entry.source_run_id, v_entry.created_at, v_entry.expires_at;
END
$$;

-- The leader of a flight is done: store its output (p_output NULL when the attempt did
-- not succeed: nothing is stored), leave the flight and wake the waiters. Each store
-- also deletes up to 16 expired entries, so expired rows never accumulate faster than
-- they are written. p_ttl_seconds NULL or 0: the entry does not expire. Returns the
-- stored entry's created_at (its version), NULL when nothing was stored. Commits without
-- waiting for the WAL flush: a lost entry is only a later miss, and a hit on it commits
-- synchronously, which flushes it first.
CREATE FUNCTION podium_cache_release(
    p_org text, p_key text, p_run uuid, p_step text, p_attempt integer, p_output jsonb,
    p_definition_name text, p_definition_version integer, p_ttl_seconds double precision
) RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE
    v_created timestamptz;
    v_now timestamptz := clock_timestamp();
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    IF p_output IS NOT NULL THEN
        DELETE FROM step_cache c
         USING (SELECT e.organization_id, e.cache_key FROM step_cache e
                 WHERE e.expires_at < now()
                 ORDER BY e.expires_at
                 LIMIT 16
                   FOR UPDATE SKIP LOCKED) x
         WHERE c.organization_id = x.organization_id AND c.cache_key = x.cache_key;
        INSERT INTO step_cache AS c
            (organization_id, cache_key, definition_name, definition_version, step_id,
             output, source_run_id, created_at, expires_at)
        VALUES (p_org, p_key, p_definition_name, p_definition_version, p_step, p_output,
                p_run, v_now,
                CASE WHEN p_ttl_seconds > 0 THEN v_now + make_interval(secs => p_ttl_seconds) END)
        ON CONFLICT (organization_id, cache_key) DO UPDATE
           SET definition_name = excluded.definition_name,
               definition_version = excluded.definition_version,
               step_id = excluded.step_id, output = excluded.output,
               source_run_id = excluded.source_run_id, created_at = excluded.created_at,
               expires_at = excluded.expires_at
        RETURNING c.created_at INTO v_created;
    END IF;
    DELETE FROM step_cache_flights f
     WHERE f.organization_id = p_org AND f.cache_key = p_key AND f.run_id = p_run
       AND f.step_id = p_step AND f.attempt = p_attempt;
    PERFORM pg_notify('podium_cache', p_key);
    RETURN v_created;
END
$$;

-- StartRun in one round trip (migrations/0006_start_run.sql).

-- Create a run with its steps (p_steps: a JSON array of objects, as insert_steps takes
-- them), emit run.created, copy p_copy's outputs from p_forked_from (ForkRun) and start
-- it when p_start. Idempotent on (p_org, p_request_id): when that run exists nothing is
-- written and its id comes back with created = false (the caller reads its state).
-- One row: the run's generated fields, then, when p_return_steps, what its steps hold
-- that the caller did not send, as parallel arrays in no particular order (step_ids[i]
-- is the step of every other array's [i]; NULL arrays without p_return_steps).
CREATE FUNCTION podium_create_run(
    p_org text, p_definition_name text, p_definition_version integer, p_plan jsonb,
    p_input jsonb, p_metadata jsonb, p_labels jsonb, p_request_id text,
    p_max_parallel integer, p_bypass_cache boolean, p_webhook_url text,
    p_trace_context jsonb, p_parent_run uuid, p_parent_step text, p_depth integer,
    p_forked_from uuid, p_copy text[], p_steps jsonb, p_start boolean,
    p_return_steps boolean
) RETURNS TABLE (
    run_id uuid, created boolean, state text, run_attempt integer,
    last_event_sequence bigint, created_at timestamptz, started_at timestamptz,
    step_ids text[], step_states text[], step_attempts integer[],
    conversation_ids uuid[], queued_at timestamptz[], step_started_at timestamptz[],
    step_ended_at timestamptz[], step_inputs jsonb[], step_outputs jsonb[]
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_run uuid;
    v_count integer := jsonb_array_length(p_steps);
BEGIN
    INSERT INTO orchestration_runs
        (organization_id, definition_name, definition_version, plan, state, input,
         metadata, labels, request_id, max_parallel, bypass_cache, webhook_url,
         steps_remaining, trace_context, parent_run_id, parent_step_id, depth,
         forked_from_run_id)
    VALUES (p_org, p_definition_name, p_definition_version, p_plan, 'created', p_input,
            p_metadata, p_labels, p_request_id, p_max_parallel, p_bypass_cache,
            p_webhook_url, v_count, p_trace_context, p_parent_run, p_parent_step, p_depth,
            p_forked_from)
    ON CONFLICT (organization_id, request_id) DO NOTHING
    RETURNING id INTO v_run;
    IF v_run IS NULL THEN
        RETURN QUERY
        SELECT r.id, false, r.state, r.run_attempt, r.last_event_sequence, r.created_at,
               r.started_at, NULL::text[], NULL::text[], NULL::integer[], NULL::uuid[],
               NULL::timestamptz[], NULL::timestamptz[], NULL::timestamptz[],
               NULL::jsonb[], NULL::jsonb[]
          FROM orchestration_runs r
         WHERE r.organization_id = p_org AND r.request_id = p_request_id;
        RETURN;
    END IF;
    INSERT INTO orchestration_steps
        (run_id, step_id, organization_id, position, state, agent, skill, depends_on,
         pending_dependencies, spec, max_attempts, timeout_seconds, queued_at,
         conversation_id, input_refs, is_sink)
    SELECT v_run, s.step_id, p_org, s.position, s.state, s.agent, s.skill, s.depends_on,
           s.pending_dependencies, s.spec, s.max_attempts, s.timeout_seconds,
           CASE WHEN s.state = 'queued' THEN now() END, gen_random_uuid(), s.input_refs,
           s.is_sink
      FROM jsonb_to_recordset(p_steps) AS s(
           step_id text, position integer, state text, agent text, skill text,
           depends_on text[], pending_dependencies integer, spec jsonb,
           max_attempts integer, timeout_seconds double precision, input_refs text[],
           is_sink boolean);
    PERFORM podium_emit_event(
        v_run, 'run.created', NULL, NULL, NULL,
        CASE WHEN p_forked_from IS NULL THEN jsonb_build_object('steps', v_count)
             ELSE jsonb_build_object('steps', v_count, 'forked_from_run_id', p_forked_from)
        END);
    IF p_forked_from IS NOT NULL THEN
        PERFORM podium_fork_steps(v_run, p_forked_from, p_copy);
    END IF;
    IF p_start THEN
        PERFORM podium_start_run(v_run);
    END IF;
    RETURN QUERY
    SELECT r.id, true, r.state, r.run_attempt, r.last_event_sequence, r.created_at,
           r.started_at, s.ids, s.states, s.attempts, s.conversations, s.queued,
           s.started, s.ended, s.inputs, s.outputs
      FROM orchestration_runs r,
           (SELECT array_agg(t.step_id) AS ids, array_agg(t.state) AS states,
                   array_agg(t.attempt) AS attempts,
                   array_agg(t.conversation_id) AS conversations,
                   array_agg(t.queued_at) AS queued, array_agg(t.started_at) AS started,
                   array_agg(t.ended_at) AS ended, array_agg(t.input) AS inputs,
                   array_agg(t.output) AS outputs
              FROM orchestration_steps t
             WHERE t.run_id = v_run AND p_return_steps) s
     WHERE r.id = v_run;
END
$$;
