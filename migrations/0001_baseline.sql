-- 0001_baseline: every table, index, constraint, comment and seed row.
--
-- Numbered migrations hold DDL and data changes only; the SQL functions (and the
-- triggers that call them) live in server/storage/functions/*.sql, applied by the
-- migrator after the migrations. A landed migration is never edited: its SHA-256 is
-- in migrations/checksums.txt (tests/unit/test_migration_checksums.py).
--
-- Conventions: every table carries organization_id (tenancy); times are timestamptz;
-- payloads are jsonb; state columns hold lowercase state names guarded by CHECK
-- constraints; children of a run are deleted with it (ON DELETE CASCADE).

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
    created_at           timestamptz NOT NULL DEFAULT now(),
    started_at           timestamptz,
    ended_at             timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    steps_remaining      integer NOT NULL DEFAULT 0 CHECK (steps_remaining >= 0),
    depth                integer NOT NULL DEFAULT 0 CHECK (depth >= 0),
    forked_from_run_id   uuid REFERENCES orchestration_runs (id) ON DELETE SET NULL,
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
COMMENT ON COLUMN orchestration_runs.steps_remaining IS
    'Steps not yet in a terminal state; the run completes when it reaches 0.';
COMMENT ON COLUMN orchestration_runs.depth IS
    'Nesting depth of a sub-orchestration: 0 for a top-level run, parent depth + 1 for a child.';
COMMENT ON COLUMN orchestration_runs.forked_from_run_id IS
    'ForkRun: the finished run whose outputs upstream of the forked steps were copied.';
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
COMMENT ON COLUMN orchestration_steps.input_refs IS
    'Ids of the steps whose outputs the input references (${steps.ID...}); their outputs '
    'are returned with the claim so dispatch needs no extra query.';
COMMENT ON COLUMN orchestration_steps.is_sink IS
    'No step depends on this one: its output is part of the run output.';
-- Scheduler claim: oldest queued first; expired leases; retries that are due.
CREATE INDEX orchestration_steps_queued_idx
    ON orchestration_steps (queued_at) WHERE state = 'queued';
CREATE INDEX orchestration_steps_lease_idx
    ON orchestration_steps (lease_expires_at) WHERE state = 'running';
CREATE INDEX orchestration_steps_retry_idx
    ON orchestration_steps (next_attempt_at) WHERE state = 'waiting_retry';
-- Per-agent concurrency: running steps by agent.
CREATE INDEX orchestration_steps_running_agent_idx
    ON orchestration_steps (organization_id, agent) WHERE state = 'running';
-- The parent's sweep: running steps that wait on a child run.
CREATE INDEX orchestration_steps_child_idx
    ON orchestration_steps (child_run_id) WHERE state = 'running' AND child_run_id IS NOT NULL;

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
-- (kind input_required: an A2A agent's question, INPUT_REQUIRED, parks its step like an
-- approval.)
CREATE INDEX human_approvals_pending_idx
    ON human_approvals (organization_id, created_at) WHERE state = 'pending';
CREATE INDEX human_approvals_expiry_idx
    ON human_approvals (expires_at) WHERE state = 'pending' AND expires_at IS NOT NULL;
CREATE INDEX human_approvals_step_idx ON human_approvals (run_id, step_id);
-- Pending approvals of a run (cancelled with it).
CREATE INDEX human_approvals_run_pending_idx
    ON human_approvals (run_id) WHERE state = 'pending';

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
-- InvalidateCache deletes by definition.
CREATE INDEX step_cache_definition_idx
    ON step_cache (organization_id, definition_name, definition_version);

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
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    source                   text NOT NULL DEFAULT 'registered'
        CHECK (source IN ('registered', 'static')),
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
-- ListWebhookDeliveries: newest first, keyset on (created_at, id).
CREATE INDEX webhook_deliveries_list_idx
    ON webhook_deliveries (organization_id, created_at DESC, id DESC);
-- Retention deletes finished deliveries by age.
CREATE INDEX webhook_deliveries_finished_idx
    ON webhook_deliveries (created_at) WHERE state <> 'pending';

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
