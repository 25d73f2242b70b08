-- The scheduler's claim: runnable steps are leased to a replica, expired leases return
-- to the queue. Lock order: see 30_runs.sql.

-- The claim's locks. No lock serializes every claim: claims of different replicas run
-- at once, each locking candidate runs and their queued steps FOR UPDATE SKIP LOCKED
-- (a run's max_parallel is counted under its row lock). A count shared by several runs
-- is read under a transaction advisory lock of its own, taken only when a limit applies,
-- just before the count is read and held to commit, so it is exact across replicas:
--   1886350959  one agent of an organization (max_concurrency and its rate windows)
--   1886350960  one concurrency key value of an organization (max_steps_per_key)
--   1886350961  one organization (p_org_cap, PODIUM_MAX_RUNNING_STEPS_PER_ORG)
-- A claim acquires these in no fixed order, so it waits for one only while it holds
-- none (and only the scheduler's claim waits: an eager claim holds a completion's run
-- rows); otherwise it only tries, and a step whose lock another claim holds stays
-- queued (that claim is deciding for the same agent, key or organization), with a
-- NOTIFY podium_work so the claimers look again once it committed. A holder of one of
-- these locks never waits for another, so no cycle can form.
-- p_locks: the claim's locks so far, 'classid:name' -> held (true) or refused (false);
-- p_lock: the one it needs now. Returns p_locks with p_lock's entry: waited for when
-- p_wait and no lock of p_locks is held, otherwise only tried (once per claim).
CREATE OR REPLACE FUNCTION podium_claim_lock(p_locks jsonb, p_lock text, p_wait boolean)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_class integer := split_part(p_lock, ':', 1)::integer;
    v_key integer := hashtext(substr(p_lock, position(':' IN p_lock) + 1));
BEGIN
    IF p_locks ? p_lock THEN
        RETURN p_locks;
    END IF;
    IF p_wait AND NOT EXISTS (SELECT 1 FROM jsonb_each(p_locks) e WHERE e.value = 'true') THEN
        PERFORM pg_advisory_xact_lock(v_class, v_key);
        RETURN p_locks || jsonb_build_object(p_lock, true);
    END IF;
    RETURN p_locks || jsonb_build_object(p_lock, pg_try_advisory_xact_lock(v_class, v_key));
END
$$;

-- The running steps that occupy an organization's share of PODIUM_MAX_RUNNING_STEPS_PER_ORG:
-- every running step but a sub-orchestration's, which waits for its child run without
-- executing anything (counting it would let a parent hold the slot its child needs).
CREATE OR REPLACE FUNCTION podium_org_running(p_org text) RETURNS integer
LANGUAGE plpgsql STABLE AS $$  -- PL/pgSQL: planned once per connection (10_events.sql)
BEGIN
    RETURN (SELECT count(*)::integer FROM orchestration_steps s
             WHERE s.state = 'running' AND s.organization_id = p_org
               AND s.child_run_id IS NULL);
END
$$;

-- Whether the agent lists of p_rules (routing_policies' row as JSON, or a definition's
-- execution.routing in protobuf JSON; NULL or JSON null: none) allow agent p_agent: on
-- allowed_agents when that is not empty, and not on denied_agents (engine/policies.py).
CREATE OR REPLACE FUNCTION podium_routing_allows(p_agent text, p_rules jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT NOT coalesce(p_rules -> 'denied_agents' ? p_agent, false)
       AND (coalesce(jsonb_array_length(p_rules -> 'allowed_agents'), 0) = 0
            OR coalesce(p_rules -> 'allowed_agents' ? p_agent, false))
$$;

-- Lease steps p_steps (of runs p_runs: p_runs[i] is p_steps[i]'s run; several runs may
-- share one statement) to p_owner for p_lease_seconds from p_now, as the claim decided
-- (the caller holds the runs' and the steps' row locks): each gets attempt + 1 (the
-- fencing token), agent p_agent (the agent its skill was routed to; NULL keeps the
-- step's own), its step_attempts row with the attempt's step credential (an agent or
-- skill step not on A2A: 'pds_' and 244 random bits of two gen_random_uuid(); only its
-- SHA-256 is stored) and its conversation on its first attempt (kept across attempts
-- and ContinueRun). The caller writes the step.started events (podium_append_started,
-- or with its own events): a statement that may write none still pays for opening the
-- run rows' and the events' indexes. Unknown agents and skills without agents are
-- leased anyway: the executor fails them with a clear error instead of leaving them
-- queued forever. Rows: the executor's, in the order given, the spec with
-- refused_agents = p_refused when given (a skill whose every agent is refused).
DROP FUNCTION IF EXISTS podium_lease_steps(
    uuid, text[], text, text[], text, double precision, timestamptz, boolean);
DROP FUNCTION IF EXISTS podium_lease_steps(
    uuid[], text[], text, text[], text, double precision, timestamptz, boolean);
CREATE OR REPLACE FUNCTION podium_lease_steps(
    p_runs uuid[], p_steps text[], p_agent text, p_refused text[], p_owner text,
    p_lease_seconds double precision, p_now timestamptz
)
RETURNS TABLE (
    run_id uuid, step_id text, attempt integer, organization_id text, agent text,
    skill text, endpoint text, agent_timeout_seconds double precision, protocol text,
    task_id uuid, conversation_id uuid, spec jsonb, timeout_seconds double precision,
    max_attempts integer, run_input jsonb, upstream jsonb, labels jsonb,
    definition_name text, definition_version integer, run_created_at timestamptz,
    run_started_at timestamptz, trace_context jsonb, credential text
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH target AS (  -- one primary-key probe per step, whatever the statistics say (a
        -- join of the table with the arrays made a hash join over a seq scan of a table
        -- that looked small when the plan was cached)
        SELECT t.tid, w.pick
          FROM unnest(p_runs, p_steps) WITH ORDINALITY AS w(run_id, step_id, pick),
               LATERAL (SELECT v.ctid AS tid FROM orchestration_steps v
                         WHERE v.run_id = w.run_id AND v.step_id = w.step_id
                         LIMIT 1) t
    ), leased AS (
        UPDATE orchestration_steps s
           SET state = 'running',
               attempt = s.attempt + 1,
               agent = coalesce(p_agent, s.agent),
               lease_owner = p_owner,
               lease_expires_at = p_now + make_interval(secs => p_lease_seconds),
               started_at = coalesce(s.started_at, p_now),
               error = NULL
          FROM target w
         WHERE s.ctid = w.tid
        RETURNING s.run_id, s.step_id, s.attempt, s.organization_id, s.agent, s.skill,
                  s.conversation_id, s.spec, s.timeout_seconds, s.max_attempts,
                  s.input_refs, w.pick
    ), c AS (  -- referenced several times: made once (one credential per step)
        SELECT l.*, a.endpoint, a.default_timeout_seconds AS agent_timeout, a.protocol,
               CASE WHEN (l.agent IS NOT NULL OR l.skill IS NOT NULL)
                         AND a.protocol IS DISTINCT FROM 'a2a' THEN
                   'pds_' || replace(gen_random_uuid()::text, '-', '')
                   || replace(gen_random_uuid()::text, '-', '')
               END AS credential
          FROM leased l
          LEFT JOIN LATERAL (SELECT a.endpoint, a.default_timeout_seconds, a.protocol
                               FROM agents a
                              WHERE a.organization_id = l.organization_id AND a.name = l.agent
                              LIMIT 1) a ON true
    ), attempt AS (
        INSERT INTO step_attempts
            (run_id, step_id, attempt, organization_id, agent, started_at, credential_hash)
        SELECT c.run_id, c.step_id, c.attempt, c.organization_id, c.agent, p_now,
               encode(sha256(convert_to(c.credential, 'UTF8')), 'hex')
          FROM c
        RETURNING step_attempts.run_id, step_attempts.step_id, step_attempts.task_id
    ), conversation AS (
        INSERT INTO conversations (id, organization_id, run_id, step_id, agent)
        SELECT c.conversation_id, c.organization_id, c.run_id, c.step_id, c.agent
          FROM c WHERE c.attempt = 1
        ON CONFLICT (id) DO NOTHING
    )
    SELECT c.run_id, c.step_id, c.attempt, c.organization_id, c.agent, c.skill,
           c.endpoint::text, c.agent_timeout::double precision, c.protocol::text,
           attempt.task_id, c.conversation_id,
           CASE WHEN p_refused IS NULL THEN c.spec
                ELSE c.spec || jsonb_build_object('refused_agents', p_refused) END,
           c.timeout_seconds, c.max_attempts, r.input,
           -- One primary-key probe per reference, whatever the statistics say (with
           -- step_id = ANY, a plan read every step of the run to find none: W3's 1,001
           -- rows per claimed step).
           (SELECT coalesce(jsonb_object_agg(u.step_id, u.output), '{}'::jsonb)
              FROM unnest(c.input_refs) AS ref(step_id),
                   LATERAL (SELECT v.step_id, v.output FROM orchestration_steps v
                             WHERE v.run_id = c.run_id AND v.step_id = ref.step_id
                             LIMIT 1) u),
           r.labels, r.definition_name, r.definition_version, r.created_at, r.started_at,
           r.trace_context, c.credential
      FROM c
      JOIN attempt ON attempt.run_id = c.run_id AND attempt.step_id = c.step_id
      CROSS JOIN LATERAL (SELECT r.input, r.labels, r.definition_name, r.definition_version,
                                 r.created_at, r.started_at, r.trace_context
                            FROM orchestration_runs r WHERE r.id = c.run_id LIMIT 1) r
     ORDER BY c.pick;
END
$$;

-- The step.started events of steps a claim leased: p_steps[i] of run p_runs[i], its
-- attempt p_attempts[i] on agent p_agents[i] (NULL: none), numbered with one update of
-- each run row, in the order given; watchers notified. The caller holds the runs' row
-- locks.
CREATE OR REPLACE FUNCTION podium_append_started(
    p_runs uuid[], p_steps text[], p_attempts integer[], p_agents text[]
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_ids uuid[];
    v_orgs text[];
BEGIN
    WITH e AS (
        SELECT e.*, row_number() OVER (PARTITION BY e.run_id ORDER BY e.pick) AS ord
          FROM unnest(p_runs, p_steps, p_attempts, p_agents)
               WITH ORDINALITY AS e(run_id, step_id, attempt, agent, pick)
    ), n AS (  -- each run's row found by a primary-key probe, whatever the statistics say
        SELECT g.run_id, g.n, t.tid
          FROM (SELECT e.run_id, count(*) AS n FROM e GROUP BY 1) g,
               LATERAL (SELECT x.ctid AS tid FROM orchestration_runs x
                         WHERE x.id = g.run_id LIMIT 1) t
    ), run AS (
        UPDATE orchestration_runs r
           SET last_event_sequence = r.last_event_sequence + n.n, updated_at = now()
          FROM n
         WHERE r.ctid = n.tid
        RETURNING r.id, r.organization_id, r.last_event_sequence - n.n AS base
    ), started AS (
        INSERT INTO orchestration_events
            (run_id, sequence, organization_id, type, step_id, attempt, run_state,
             step_state, payload, created_at)
        SELECT e.run_id, run.base + e.ord, run.organization_id, 'step.started', e.step_id,
               e.attempt, 'running', 'running',
               CASE WHEN e.agent IS NULL THEN '{}'::jsonb
                    ELSE jsonb_build_object('agent', e.agent) END,
               clock_timestamp()
          FROM e JOIN run ON run.id = e.run_id
    )
    SELECT array_agg(run.id), array_agg(run.organization_id) INTO v_ids, v_orgs FROM run;
    PERFORM podium_notify_runs(v_ids, v_orgs);
END
$$;

-- Whether the shares of runs p_runs (a share: the runs of one organization and
-- concurrency key value at one priority; see podium_claim_steps_of) are alone in the
-- queue: no other share of their priority and no higher priority has queued steps
-- (primary-key probes of the runs, index probes on
-- orchestration_steps_queued_share_idx). An eager claim may keep the slots its
-- completion freed only then; otherwise they go by turns. Always true while the calling
-- statement has set podium.claim_turns to 'off' (podium_complete_steps and
-- podium_create_run_and_claim, p_turns false: the replica's slots are not contended,
-- so the other shares' queued steps are held by their own limits, not waiting for
-- these slots).
CREATE OR REPLACE FUNCTION podium_shares_alone(p_runs uuid[]) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$  -- PL/pgSQL: planned once per connection (10_events.sql)
BEGIN
    IF current_setting('podium.claim_turns', true) = 'off' THEN
        RETURN true;
    END IF;
    RETURN NOT EXISTS (
        SELECT 1
          FROM (SELECT DISTINCT r.priority, r.organization_id,
                       coalesce(r.concurrency_key, '') AS share_key
                  FROM unnest(p_runs) AS u(id),
                       LATERAL (SELECT r.priority, r.organization_id, r.concurrency_key
                                  FROM orchestration_runs r WHERE r.id = u.id LIMIT 1) r) m
         WHERE EXISTS (SELECT 1 FROM orchestration_steps p
                        WHERE p.state = 'queued' AND p.priority > m.priority)
            OR EXISTS (SELECT 1 FROM orchestration_steps p
                        WHERE p.state = 'queued' AND p.priority = m.priority
                          AND (p.organization_id, p.concurrency_key)
                              < (m.organization_id, m.share_key))
            OR EXISTS (SELECT 1 FROM orchestration_steps p
                        WHERE p.state = 'queued' AND p.priority = m.priority
                          AND (p.organization_id, p.concurrency_key)
                              > (m.organization_id, m.share_key)));
END
$$;

-- The claim of runs p_runs where it takes its simplest path, decided before it is made:
-- the runs among them still running with no key limit, no retry due and every queued
-- step naming an agent without limits (no skill, max_concurrency or rate limit),
-- locked, and the queued steps their free slots (max_parallel) allow, at most p_limit
-- in all, locked SKIP LOCKED, in the claim's order (runs by created_at, then their
-- steps by queued_at, position). No organization cap is counted: callers pass none.
-- Nothing is written: the caller leases the picks (podium_lease_steps) and writes
-- their step.started events (podium_append_started, or with its own events: a
-- completion that made them runnable, podium_record_outcome and
-- podium_complete_successes). Each run and its steps are reached by primary-key and
-- partial-index probes, whatever the statistics say (a plan made while the table was
-- small read every running run): a run's queued, running or retrying steps are
-- selected by the predicate of orchestration_steps_active_idx (run_id, state) with the
-- other states excluded, a condition that no index of one state's steps can serve (a
-- plan cached while the table looked small scanned the whole of one: every queued or
-- running step of every run, ordered by queued_at, or by organization and agent); the
-- NOT EXISTS checks stay per run (OFFSET 0), not joined with every such step. Returns
-- the picks in the claim's order (steps[i] of run runs[i]; attempts[i]: the attempt
-- its lease gives; agents[i]) and the runs whose claim this decided, picks or not
-- (decided).
CREATE OR REPLACE FUNCTION podium_pick_steps(
    p_runs uuid[], p_limit integer,
    OUT runs uuid[], OUT steps text[], OUT attempts integer[], OUT agents text[],
    OUT decided uuid[]
)
LANGUAGE plpgsql AS $$
BEGIN
    WITH r AS (
        SELECT r.*
          FROM (SELECT DISTINCT u FROM unnest(p_runs) AS u) AS u(id),
               LATERAL (
               SELECT r.id, r.max_parallel, r.created_at
                 FROM (SELECT r.id, r.max_parallel, r.created_at, r.state,
                              r.max_steps_per_key
                         FROM orchestration_runs r WHERE r.id = u.id
                        LIMIT 1 FOR UPDATE) r  -- the caller holds the lock already
                WHERE r.state = 'running'
                  AND r.max_steps_per_key = 0
                  AND NOT EXISTS (SELECT 1 FROM orchestration_steps w
                                   WHERE w.run_id = r.id
                                     AND w.state = ANY ('{queued,running,waiting_retry}')
                                     AND w.state NOT IN ('queued', 'running')
                                     AND w.next_attempt_at <= now()
                                  OFFSET 0)  -- probed per run, never joined
                  AND NOT EXISTS (SELECT 1 FROM orchestration_steps q
                                    LEFT JOIN agents a
                                           ON a.organization_id = q.organization_id
                                          AND a.name = q.agent
                                   WHERE q.run_id = r.id
                                     AND q.state = ANY ('{queued,running,waiting_retry}')
                                     AND q.state NOT IN ('running', 'waiting_retry')
                                     AND (q.skill IS NOT NULL OR a.max_concurrency > 0
                                          OR a.rate_period_seconds > 0)
                                  OFFSET 0)) r
    ), picks AS (
        SELECT r.id, q.step_id, q.attempt + 1 AS attempt, q.agent,
               row_number() OVER (ORDER BY r.created_at, r.id, q.queued_at, q.position) AS n
          FROM r, LATERAL (
               SELECT q.step_id, q.attempt, q.agent, q.queued_at, q.position
                 FROM orchestration_steps q
                WHERE q.run_id = r.id
                  AND q.state = ANY ('{queued,running,waiting_retry}')
                  AND q.state NOT IN ('running', 'waiting_retry')
                ORDER BY q.queued_at, q.position
                LIMIT greatest(r.max_parallel
                               - (SELECT count(*) FROM orchestration_steps x
                                   WHERE x.run_id = r.id
                                     AND x.state = ANY ('{queued,running,waiting_retry}')
                                     AND x.state NOT IN ('queued', 'waiting_retry')), 0)
                  FOR UPDATE SKIP LOCKED) q
    )
    SELECT coalesce(array_agg(p.id ORDER BY p.n) FILTER (WHERE p.n <= p_limit), '{}'),
           coalesce(array_agg(p.step_id ORDER BY p.n) FILTER (WHERE p.n <= p_limit), '{}'),
           coalesce(array_agg(p.attempt ORDER BY p.n) FILTER (WHERE p.n <= p_limit), '{}'),
           coalesce(array_agg(p.agent ORDER BY p.n) FILTER (WHERE p.n <= p_limit), '{}'),
           (SELECT coalesce(array_agg(r.id), '{}') FROM r)
      INTO runs, steps, attempts, agents, decided
      FROM picks p;
END
$$;

-- Claim up to p_limit runnable steps for p_owner, leasing them for p_lease_seconds, from
-- every run with runnable work (p_runs NULL: podium_claim_steps) or only from p_runs (an
-- eager claim inside a completion or StartRun, which holds those runs' locks already).
--
-- Each candidate run is locked (SKIP LOCKED), its due retries re-queued, and its queued
-- steps taken FOR UPDATE SKIP LOCKED while the run's max_parallel and the agents'
-- max_concurrency allow and the agents' rate limits (45_rate_limits.sql) have room: a
-- held step stays queued, its attempts untouched. A skill is routed to the least busy
-- agent offering it that is under its limits and that the routing policies allow (the
-- organization's routing_policies row, read once per organization and claim by its
-- primary key, and the definition's execution.routing in the step's spec: their
-- allowed_agents / denied_agents, podium_routing_allows); the step stays queued while
-- every allowed agent is full, and is claimed without an agent when none is allowed,
-- its spec as returned (not as stored) then naming the refused agents in
-- refused_agents (at most 10), so the executor fails it with POLICY_DENIED at once.
-- Each claimed step gets
-- attempt + 1 (the fencing token), a step_attempts row, its conversation and a
-- step.started event; its resolved-reference outputs come back with it. The counts shared
-- by several runs are read under the locks described above (podium_claim_lock).
--
-- Priorities and fair share: candidate runs are visited by priority (higher first),
-- then round-robin across shares (a share: the runs of one organization and concurrency
-- key value at one priority), ranking each run by its position in its share plus the
-- share's running steps, so the share with the fewest running steps goes first and a
-- share with thousands of queued steps cannot hold back another's single step beyond
-- one claim. Runs are locked SKIP LOCKED in that order (a run a completer or another
-- claim holds is left to it; a completer claims or notifies when it leaves work). An
-- eager claim (p_runs) becomes the claim over every run when another share of its runs'
-- priority or a higher priority has queued steps (index probes on
-- orchestration_steps_queued_share_idx), so freed slots go by turns. max_steps_per_key
-- holds a step while the running steps of its run's key value reach it (counted once
-- per key value and claim). Claimed steps are leased by podium_lease_steps, which also
-- makes an agent step attempt's step credential, so issuing it costs no round trip
-- (server/engine/step_credentials.py).
-- p_org_cap
-- (PODIUM_MAX_RUNNING_STEPS_PER_ORG, 0: none) while its organization's running steps
-- (podium_org_running) reach it; both are counted once per claim under their lock and
-- decremented by each start. Organizations at their cap are left out of the candidate
-- runs, so their queue costs the claim nothing; so are the queued steps of an agent
-- whose running steps reach its max_concurrency, and of a run whose running steps
-- reach its max_parallel (both counted before their locks are taken: a step left out
-- as a slot frees is taken by the next claim, which the completion that freed it wakes,
-- or by that completion's own eager claim), so a backlog waiting on its limits costs
-- each claim one count of the running steps by agent and one count per run instead of
-- a visit of each of its runs (a run lock, its retries, its counts, its steps' locks).
-- A run with a due retry is visited whatever its counts: its retry is re-queued.
DROP FUNCTION IF EXISTS podium_claim_steps_of(text, integer, double precision, uuid[]);
CREATE OR REPLACE FUNCTION podium_claim_steps_of(
    p_owner text, p_limit integer, p_lease_seconds double precision, p_runs uuid[],
    p_org_cap integer DEFAULT 0
)
RETURNS TABLE (
    run_id uuid, step_id text, attempt integer, organization_id text, agent text,
    skill text, endpoint text, agent_timeout_seconds double precision, protocol text,
    task_id uuid, conversation_id uuid, spec jsonb, timeout_seconds double precision,
    max_attempts integer, run_input jsonb, upstream jsonb, labels jsonb,
    definition_name text, definition_version integer, run_created_at timestamptz,
    run_started_at timestamptz, trace_context jsonb, credential text
)
LANGUAGE plpgsql AS $$
DECLARE
    v_runs refcursor;
    v_run record;
    v_step record;
    v_agent record;
    v_free integer;
    v_picked integer := 0;
    v_started_ids text[];
    v_started_attempts integer[];
    v_started_agents text[];
    v_now timestamptz;
    v_room jsonb := '{}';  -- rate-limited agent -> attempts it may still start in this claim
    v_key_free jsonb := '{}';  -- key value -> steps it may still start (max_steps_per_key)
    v_org_free jsonb := '{}';  -- organization -> steps it may still start (p_org_cap)
    v_policies jsonb := '{}';  -- organization -> its routing_policies agent lists (or null)
    v_org_rules jsonb;  -- v_policies' entry of the run's organization
    v_offer record;  -- the agents offering a skill when none of them could take it
    v_refused text[];  -- the refused agents offering the step's skill (none allowed)
    v_run_key text;  -- the run's key value, '' without one (rate windows per key)
    v_window text;  -- v_room's entry of the agent: its name, then the key for per-key limits
    v_cap integer := greatest(coalesce(p_org_cap, 0), 0);
    v_wait boolean := p_runs IS NULL;  -- only the scheduler's claim waits for a lock
    v_locks jsonb := '{}';  -- 'classid:name' -> held (true) or refused (false) in this claim
    v_lock text;
    v_contended boolean := false;  -- a step stayed queued behind another claim's lock
    v_count integer;
    v_ids text[];
    v_lease_runs uuid[] := '{}';  -- the fast path's picks, leased after the loop
    v_lease_steps text[] := '{}';
    v_lease_attempts integer[] := '{}';  -- their attempts and agents once leased
    v_lease_agents text[] := '{}';
    v_attempts integer[];
    v_agents text[];
    v_fast_runs uuid[] := '{}';  -- the runs the multi-run pre-pass visited
    v_full text[];  -- 'organization<US>agent' of the agents whose running steps reach
                    -- their max_concurrency (the claim over every run)
BEGIN
    IF p_limit <= 0 THEN
        RETURN;
    END IF;
    -- An eager claim whose runs' shares are not alone in the queue becomes the
    -- scheduler's claim over every run, so the freed slots go by turns. Its SKIP LOCKED
    -- keeps the lock order safe while this transaction holds the completed runs.
    IF p_runs IS NOT NULL AND NOT podium_shares_alone(p_runs) THEN
        p_runs := NULL;
    END IF;
    IF cardinality(p_runs) > 1 AND v_cap = 0 THEN
        -- An eager claim's runs that take the fast path (below: no key limit, no due
        -- retry, every queued step names an agent without limits) are picked here in
        -- one statement, in the loop's order and within the same limits, instead of
        -- five statements per run in the loop; the loop visits the others. For a
        -- single run (StartRun) the loop costs less.
        SELECT * INTO v_lease_runs, v_lease_steps, v_lease_attempts, v_lease_agents,
                      v_fast_runs
          FROM podium_pick_steps(p_runs, p_limit);
        v_picked := cardinality(v_lease_runs);
        p_runs := ARRAY(SELECT u FROM unnest(p_runs) AS u WHERE NOT u = ANY (v_fast_runs));
    END IF;
    IF p_runs IS NULL THEN
        -- The full agents, before their locks (a filter only: see above): an agent with
        -- running steps, counted on orchestration_steps_running_agent_idx, then probed
        -- by its key.
        SELECT coalesce(array_agg(f.organization_id || chr(31) || f.agent), '{}')
          INTO v_full
          FROM (SELECT g.organization_id, g.agent, count(*) AS running
                  FROM orchestration_steps g
                 WHERE g.state = 'running' AND g.agent IS NOT NULL
                 GROUP BY 1, 2) f,
               LATERAL (SELECT a.max_concurrency FROM agents a
                         WHERE a.organization_id = f.organization_id AND a.name = f.agent
                         LIMIT 1) a
         WHERE a.max_concurrency > 0 AND f.running >= a.max_concurrency;
        OPEN v_runs FOR
        SELECT r.id, r.max_parallel, r.organization_id, r.input, r.labels,
               r.definition_name, r.definition_version, r.created_at, r.started_at,
               r.trace_context, r.priority, r.concurrency_key, r.max_steps_per_key
          FROM (SELECT o.id, o.priority, o.created_at, o.rn + coalesce(b.busy, 0) AS rank
                  FROM (SELECT x.id, x.priority, x.created_at, x.organization_id,
                               coalesce(x.concurrency_key, '') AS share_key,
                               row_number() OVER (PARTITION BY x.priority, x.organization_id,
                                                               x.concurrency_key
                                                  ORDER BY x.created_at, x.id) AS rn
                          FROM orchestration_runs x
                         WHERE x.state = 'running'
                           AND (x.id IN (SELECT w.run_id FROM orchestration_steps w
                                          WHERE w.state = 'waiting_retry'
                                            AND w.next_attempt_at <= now())
                                -- queued steps, not all behind their run's max_parallel
                                -- or a full agent (v_full)
                                OR (x.id IN (SELECT q.run_id FROM orchestration_steps q
                                              WHERE q.state = 'queued'
                                                AND (cardinality(v_full) = 0
                                                     OR q.agent IS NULL
                                                     OR NOT q.organization_id || chr(31)
                                                            || q.agent = ANY (v_full)))
                                    AND x.max_parallel > (
                                        SELECT count(*) FROM orchestration_steps c
                                         WHERE c.run_id = x.id
                                           AND c.state = ANY ('{queued,running,waiting_retry}')
                                           AND c.state NOT IN ('queued', 'waiting_retry'))))
                           AND (v_cap = 0 OR x.organization_id NOT IN (
                                    SELECT f.organization_id FROM orchestration_steps f
                                     WHERE f.state = 'running' AND f.child_run_id IS NULL
                                     GROUP BY 1 HAVING count(*) >= v_cap))) o
                  LEFT JOIN (SELECT g.organization_id, g.concurrency_key, g.priority,
                                    count(*) AS busy
                               FROM orchestration_steps g WHERE g.state = 'running'
                              GROUP BY 1, 2, 3) b
                    ON b.organization_id = o.organization_id
                   AND b.concurrency_key = o.share_key AND b.priority = o.priority) c
          JOIN orchestration_runs r ON r.id = c.id
         ORDER BY c.priority DESC, c.rank, c.created_at, c.id
           FOR UPDATE OF r SKIP LOCKED;
    ELSE
        -- An eager claim: the runs a completion just locked (see podium_complete_steps),
        -- each by a primary-key probe, whatever the statistics say (a plan made while
        -- the table was small walked orchestration_runs_running_idx: every running run).
        OPEN v_runs FOR
        SELECT r.*
          FROM (SELECT DISTINCT u FROM unnest(p_runs) AS u) AS u(id),
               LATERAL (SELECT r.id, r.max_parallel, r.organization_id, r.input, r.labels,
                               r.definition_name, r.definition_version, r.created_at,
                               r.started_at, r.trace_context, r.priority, r.concurrency_key,
                               r.max_steps_per_key, r.state
                          FROM orchestration_runs r
                         WHERE r.id = u.id
                         LIMIT 1 FOR UPDATE) r
         WHERE r.state = 'running'  -- not in the probe: no index of running runs serves it
         ORDER BY r.created_at, r.id;
    END IF;
    LOOP
        FETCH v_runs INTO v_run;
        EXIT WHEN NOT FOUND OR v_picked >= p_limit;
        v_run_key := coalesce(v_run.concurrency_key, '');
        IF v_cap > 0 THEN
            v_lock := '1886350961:' || v_run.organization_id;
            v_locks := podium_claim_lock(v_locks, v_lock, v_wait);
            IF NOT (v_locks ->> v_lock)::boolean THEN
                v_contended := true;
                CONTINUE;
            END IF;
            IF NOT v_org_free ? v_run.organization_id THEN  -- counted once the lock is held
                v_org_free := v_org_free || jsonb_build_object(v_run.organization_id,
                    v_cap - podium_org_running(v_run.organization_id));
            END IF;
            CONTINUE WHEN (v_org_free ->> v_run.organization_id)::integer <= 0;
        END IF;
        IF v_run.max_steps_per_key > 0 THEN
            v_lock := '1886350960:' || v_run.organization_id || chr(31) || v_run.concurrency_key;
            v_locks := podium_claim_lock(v_locks, v_lock, v_wait);
            IF NOT (v_locks ->> v_lock)::boolean THEN
                v_contended := true;
                CONTINUE;
            END IF;
            IF NOT v_key_free ? v_lock THEN
                v_key_free := v_key_free || jsonb_build_object(v_lock,
                    v_run.max_steps_per_key - (SELECT count(*) FROM orchestration_steps k
                                                WHERE k.state = 'running'
                                                  AND k.organization_id = v_run.organization_id
                                                  AND k.concurrency_key = v_run.concurrency_key));
            END IF;
        END IF;
        -- The run's steps of one state are read through orchestration_steps_active_idx,
        -- whatever the statistics say: see podium_pick_steps.
        UPDATE orchestration_steps w
           SET state = 'queued', queued_at = now(), next_attempt_at = NULL
         WHERE w.run_id = v_run.id AND w.state = ANY ('{queued,running,waiting_retry}')
           AND w.state NOT IN ('queued', 'running') AND w.next_attempt_at <= now();
        SELECT v_run.max_parallel - count(*) INTO v_free
          FROM orchestration_steps x
         WHERE x.run_id = v_run.id AND x.state = ANY ('{queued,running,waiting_retry}')
           AND x.state NOT IN ('queued', 'waiting_retry');
        CONTINUE WHEN v_free <= 0;
        -- A run whose queued steps all name an agent without limits (no skill to route,
        -- no max_concurrency, no rate limit) and no organization cap or key limit to
        -- count: the steps its free slots allow are leased at once (podium_lease_steps,
        -- with their step.started events), as the loop below leases them one by one.
        IF v_cap = 0 AND v_run.max_steps_per_key = 0 AND NOT EXISTS (
               SELECT 1 FROM orchestration_steps q
                 LEFT JOIN agents a ON a.organization_id = q.organization_id
                                   AND a.name = q.agent
                WHERE q.run_id = v_run.id AND q.state = ANY ('{queued,running,waiting_retry}')
                  AND q.state NOT IN ('running', 'waiting_retry')
                  AND (q.skill IS NOT NULL OR a.max_concurrency > 0
                       OR a.rate_period_seconds > 0)) THEN
            -- Picked here, leased after the loop with those of the other runs in one
            -- statement (a completion batch's eager claim: one per batch, not per run).
            -- Nothing later in this claim counts them: their agents have no limits, and
            -- a skill's least-busy choice among agents is a preference, not a limit.
            SELECT coalesce(array_agg(q.step_id ORDER BY q.queued_at, q.position), '{}'),
                   coalesce(array_agg(q.attempt + 1 ORDER BY q.queued_at, q.position), '{}'),
                   coalesce(array_agg(q.agent ORDER BY q.queued_at, q.position), '{}')
              INTO v_ids, v_attempts, v_agents
              FROM (SELECT q.step_id, q.attempt, q.agent, q.queued_at, q.position
                      FROM orchestration_steps q
                     WHERE q.run_id = v_run.id
                       AND q.state = ANY ('{queued,running,waiting_retry}')
                       AND q.state NOT IN ('running', 'waiting_retry')
                     ORDER BY q.queued_at, q.position
                     LIMIT least(v_free, p_limit - v_picked)
                       FOR UPDATE SKIP LOCKED) q;
            v_count := cardinality(v_ids);
            IF v_count > 0 THEN
                v_picked := v_picked + v_count;
                v_lease_runs := v_lease_runs || array_fill(v_run.id, ARRAY[v_count]);
                v_lease_steps := v_lease_steps || v_ids;
                v_lease_attempts := v_lease_attempts || v_attempts;
                v_lease_agents := v_lease_agents || v_agents;
            END IF;
            CONTINUE;
        END IF;
        v_started_ids := '{}';
        v_started_attempts := '{}';
        v_started_agents := '{}';
        FOR v_step IN
            SELECT s.step_id, s.attempt, s.agent, s.skill, s.spec -> 'routing' AS routing
              FROM orchestration_steps s
             WHERE s.run_id = v_run.id AND s.state = ANY ('{queued,running,waiting_retry}')
               AND s.state NOT IN ('running', 'waiting_retry')
             ORDER BY s.queued_at, s.position
               FOR UPDATE OF s SKIP LOCKED
        LOOP
            EXIT WHEN v_free <= 0 OR v_picked >= p_limit;
            EXIT WHEN v_run.max_steps_per_key > 0
                  AND (v_key_free ->> ('1886350960:' || v_run.organization_id || chr(31)
                                       || v_run.concurrency_key))::integer <= 0;
            EXIT WHEN v_cap > 0 AND (v_org_free ->> v_run.organization_id)::integer <= 0;
            SELECT NULL::text AS name, NULL::text AS endpoint,
                   NULL::double precision AS default_timeout_seconds, NULL::text AS protocol,
                   0 AS max_concurrency, 0::bigint AS busy, 0::double precision AS rate_period,
                   0 AS requests_per_period, 0::bigint AS tokens_per_period,
                   false AS rate_per_key
              INTO v_agent;
            v_refused := NULL;
            IF v_step.skill IS NOT NULL THEN
                IF NOT v_policies ? v_run.organization_id THEN
                    v_policies := v_policies || jsonb_build_object(v_run.organization_id,
                        (SELECT jsonb_build_object('allowed_agents', to_jsonb(p.allowed_agents),
                                                   'denied_agents', to_jsonb(p.denied_agents))
                           FROM routing_policies p
                          WHERE p.organization_id = v_run.organization_id));
                END IF;
                v_org_rules := v_policies -> v_run.organization_id;
                -- Lock every limited agent offering the skill that the routing policies
                -- allow (a lock refused to this claim is left out).
                FOR v_lock IN
                    SELECT '1886350959:' || a.organization_id || chr(31) || a.name
                      FROM agents a
                     WHERE a.organization_id = v_run.organization_id
                       AND v_step.skill = ANY (a.skills)
                       AND (a.max_concurrency > 0 OR a.rate_period_seconds > 0)
                       AND podium_routing_allows(a.name, v_org_rules)
                       AND podium_routing_allows(a.name, v_step.routing)
                     ORDER BY a.name
                LOOP
                    v_locks := podium_claim_lock(v_locks, v_lock, v_wait);
                    v_contended := v_contended OR NOT (v_locks ->> v_lock)::boolean;
                END LOOP;
                -- The least busy agent offering the skill that has a free slot.
                SELECT c.name, c.endpoint, c.default_timeout_seconds, c.protocol,
                       c.max_concurrency, c.busy, c.rate_period_seconds AS rate_period,
                       c.requests_per_period, c.tokens_per_period, c.rate_per_key
                  INTO v_agent
                  FROM (SELECT a.name, a.endpoint, a.default_timeout_seconds, a.protocol,
                               a.max_concurrency, a.rate_period_seconds,
                               a.requests_per_period, a.tokens_per_period, a.rate_per_key,
                               (SELECT count(*) FROM orchestration_steps b
                                 WHERE b.state = 'running'
                                   AND b.organization_id = a.organization_id
                                   AND b.agent = a.name) AS busy
                          FROM agents a
                         WHERE a.organization_id = v_run.organization_id
                           AND v_step.skill = ANY (a.skills)
                           AND podium_routing_allows(a.name, v_org_rules)
                           AND podium_routing_allows(a.name, v_step.routing)
                           AND ((a.max_concurrency = 0 AND a.rate_period_seconds = 0)
                                OR (v_locks ->> ('1886350959:' || a.organization_id
                                                 || chr(31) || a.name))::boolean)) c
                 WHERE (c.max_concurrency = 0 OR c.busy < c.max_concurrency)
                   AND (c.rate_period_seconds = 0
                        OR coalesce((v_room ->> (c.name || CASE WHEN c.rate_per_key
                                                     THEN chr(31) || v_run_key ELSE '' END))::integer,
                                    podium_rate_room(v_run.organization_id, c.name,
                                                     c.requests_per_period, c.tokens_per_period,
                                                     c.rate_period_seconds, clock_timestamp(),
                                                     CASE WHEN c.rate_per_key THEN v_run_key
                                                          ELSE '' END))
                           > 0)
                 ORDER BY c.busy, c.name
                 LIMIT 1;
                IF NOT FOUND THEN
                    SELECT coalesce(bool_or(podium_routing_allows(a.name, v_org_rules)
                                            AND podium_routing_allows(a.name, v_step.routing)),
                                    false) AS allowed,
                           (array_agg(a.name ORDER BY a.name))[1:10] AS names
                      INTO v_offer
                      FROM agents a
                     WHERE a.organization_id = v_run.organization_id
                       AND v_step.skill = ANY (a.skills);
                    -- Every allowed agent with the skill is full, limited or locked.
                    CONTINUE WHEN v_offer.allowed;
                    v_refused := v_offer.names;  -- NULL: no agent offers the skill
                END IF;
            ELSIF v_step.agent IS NOT NULL THEN
                SELECT a.name, a.endpoint, a.default_timeout_seconds, a.protocol,
                       a.max_concurrency, 0::bigint AS busy, a.rate_period_seconds AS rate_period,
                       a.requests_per_period, a.tokens_per_period, a.rate_per_key
                  INTO v_agent
                  FROM agents a
                 WHERE a.organization_id = v_run.organization_id AND a.name = v_step.agent;
                IF v_agent.name IS NOT NULL
                   AND (v_agent.max_concurrency > 0 OR v_agent.rate_period > 0) THEN
                    v_lock := '1886350959:' || v_run.organization_id || chr(31) || v_agent.name;
                    v_locks := podium_claim_lock(v_locks, v_lock, v_wait);
                    IF NOT (v_locks ->> v_lock)::boolean THEN
                        v_contended := true;
                        CONTINUE;  -- another claim decides for this agent: stays queued
                    END IF;
                END IF;
                IF v_agent.name IS NOT NULL AND v_agent.max_concurrency > 0 THEN
                    -- Counted after the agent's lock was taken: exact across replicas
                    -- (the steps this claim started count: it sees its own writes).
                    SELECT count(*) INTO v_agent.busy
                      FROM orchestration_steps b
                     WHERE b.state = 'running' AND b.organization_id = v_run.organization_id
                       AND b.agent = v_agent.name;
                    IF v_agent.busy >= v_agent.max_concurrency THEN
                        CONTINUE;  -- the agent is full: stays queued
                    END IF;
                END IF;
            END IF;
            IF v_agent.rate_period > 0 THEN
                v_window := v_agent.name || CASE WHEN v_agent.rate_per_key
                                                 THEN chr(31) || v_run_key ELSE '' END;
                IF NOT v_room ? v_window THEN
                    v_room := v_room || jsonb_build_object(v_window,
                        podium_rate_room(v_run.organization_id, v_agent.name,
                                         v_agent.requests_per_period, v_agent.tokens_per_period,
                                         v_agent.rate_period, clock_timestamp(),
                                         CASE WHEN v_agent.rate_per_key THEN v_run_key
                                              ELSE '' END));
                END IF;
                IF (v_room ->> v_window)::integer <= 0 THEN
                    CONTINUE;  -- the agent's rate window is used up: stays queued
                END IF;
            END IF;
            -- clock_timestamp(), not now(): this claim may have waited for the
            -- completion that made the step runnable; it starts after that ended.
            v_now := clock_timestamp();
            IF v_agent.rate_period > 0 THEN  -- the window's log (45_rate_limits.sql)
                INSERT INTO agent_rate_usage
                    (organization_id, agent, at, requests, concurrency_key)
                VALUES (v_run.organization_id, v_agent.name, v_now, 1,
                        CASE WHEN v_agent.rate_per_key THEN v_run_key ELSE '' END);
                v_room := jsonb_set(v_room, ARRAY[v_window],
                                    to_jsonb((v_room ->> v_window)::integer - 1));
            END IF;
            v_started_ids := v_started_ids || v_step.step_id;
            v_started_attempts := v_started_attempts || (v_step.attempt + 1);
            v_started_agents := v_started_agents || coalesce(v_agent.name, v_step.agent);
            v_free := v_free - 1;
            v_picked := v_picked + 1;
            IF v_run.max_steps_per_key > 0 THEN
                v_lock := '1886350960:' || v_run.organization_id || chr(31)
                          || v_run.concurrency_key;
                v_key_free := jsonb_set(v_key_free, ARRAY[v_lock],
                    to_jsonb((v_key_free ->> v_lock)::integer - 1));
            END IF;
            IF v_cap > 0 THEN
                v_org_free := jsonb_set(v_org_free, ARRAY[v_run.organization_id],
                    to_jsonb((v_org_free ->> v_run.organization_id)::integer - 1));
            END IF;
            -- Leased now, not after the loop: the next step's counts see this one.
            RETURN QUERY
            SELECT * FROM podium_lease_steps(ARRAY[v_run.id], ARRAY[v_step.step_id],
                                             v_agent.name,
                                             v_refused, p_owner, p_lease_seconds, v_now);
        END LOOP;
        IF cardinality(v_started_ids) > 0 THEN
            -- One step.started event per claimed step, numbered with one run update.
            PERFORM podium_append_started(
                array_fill(v_run.id, ARRAY[cardinality(v_started_ids)]), v_started_ids,
                v_started_attempts, v_started_agents);
        END IF;
    END LOOP;
    CLOSE v_runs;
    IF cardinality(v_lease_runs) > 0 THEN
        RETURN QUERY
        SELECT * FROM podium_lease_steps(v_lease_runs, v_lease_steps, NULL, NULL, p_owner,
                                         p_lease_seconds, clock_timestamp());
        PERFORM podium_append_started(v_lease_runs, v_lease_steps, v_lease_attempts,
                                      v_lease_agents);
    END IF;
    IF v_contended THEN
        -- Steps stayed queued behind another claim's lock: look again once it committed.
        PERFORM pg_notify('podium_work', '');
    END IF;
END
$$;


-- The scheduler's claim over every run with runnable work (podium_claim_steps_of).
DROP FUNCTION IF EXISTS podium_claim_steps(text, integer, double precision);
CREATE OR REPLACE FUNCTION podium_claim_steps(
    p_owner text, p_limit integer, p_lease_seconds double precision,
    p_org_cap integer DEFAULT 0
)
RETURNS TABLE (
    run_id uuid, step_id text, attempt integer, organization_id text, agent text,
    skill text, endpoint text, agent_timeout_seconds double precision, protocol text,
    task_id uuid, conversation_id uuid, spec jsonb, timeout_seconds double precision,
    max_attempts integer, run_input jsonb, upstream jsonb, labels jsonb,
    definition_name text, definition_version integer, run_created_at timestamptz,
    run_started_at timestamptz, trace_context jsonb, credential text
)
LANGUAGE sql
SET plan_cache_mode = force_generic_plan  -- as podium_complete_steps, 50_complete.sql
AS $$
    SELECT * FROM podium_claim_steps_of(p_owner, p_limit, p_lease_seconds, NULL, p_org_cap)
$$;

-- Return steps whose lease expired (their replica died or stalled) to the queue.
-- Their attempt stays counted; the next claim takes attempt + 1, so a late result of
-- the expired attempt is fenced. A lost lease is rarely the step's fault, so it may
-- happen twice beyond max_attempts; a step that keeps losing it (e.g. it crashes its
-- replica every time) then fails with LEASE_EXPIRED instead of looping forever.
-- Returns the number of steps re-queued or failed.
CREATE OR REPLACE FUNCTION podium_requeue_expired(p_limit integer) RETURNS integer
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
            PERFORM podium_cancel_step_children(v_run.id, v_step.step_id,
                                                'the step attempt that started it lost its lease');
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

-- StartRun with its eager claim: podium_create_run, then, when it created and started
-- the run, up to p_claim_limit of its runnable steps claimed for p_owner (the replica
-- that served the call) in the same transaction, so they need no wake and no claim of
-- their own. Like every eager claim it only tries the claim's locks: a step whose
-- agent, key or organization another claim is deciding for stays queued for the
-- claimers. NOTIFY podium_work (the claimers) only when the run still has queued steps
-- after the claim: a StartRun whose steps all went to its replica sends no NOTIFY
-- (podium.defer_work_notify holds back podium_queue_root_steps'). p_org_cap: as
-- podium_claim_steps_of. p_turns: as podium_complete_steps.
-- Rows: one per claimed step (the claim's columns; the run's columns NULL but run_id),
-- then podium_create_run's row (the claim's columns NULL).
DROP FUNCTION IF EXISTS podium_create_run_and_claim(
    text, text, integer, jsonb, jsonb, jsonb, jsonb, text, integer, boolean, text, jsonb,
    uuid, text, integer, uuid, text[], jsonb, boolean, boolean, text, integer,
    double precision);
DROP FUNCTION IF EXISTS podium_create_run_and_claim(
    text, text, integer, jsonb, jsonb, jsonb, jsonb, text, integer, boolean, text, jsonb,
    uuid, text, integer, uuid, text[], jsonb, boolean, boolean, text, integer,
    double precision, jsonb);
DROP FUNCTION IF EXISTS podium_create_run_and_claim(
    text, text, integer, jsonb, jsonb, jsonb, jsonb, text, integer, boolean, text, jsonb,
    uuid, text, integer, uuid, text[], jsonb, boolean, boolean, text, integer,
    double precision, jsonb, integer);
CREATE OR REPLACE FUNCTION podium_create_run_and_claim(
    p_org text, p_definition_name text, p_definition_version integer, p_plan jsonb,
    p_input jsonb, p_metadata jsonb, p_labels jsonb, p_request_id text,
    p_max_parallel integer, p_bypass_cache boolean, p_webhook_url text,
    p_trace_context jsonb, p_parent_run uuid, p_parent_step text, p_depth integer,
    p_forked_from uuid, p_copy text[], p_steps jsonb, p_start boolean,
    p_return_steps boolean, p_owner text, p_claim_limit integer,
    p_lease_seconds double precision, p_keying jsonb DEFAULT NULL,
    p_org_cap integer DEFAULT 0, p_turns boolean DEFAULT true
) RETURNS TABLE (
    run_id uuid, created boolean, state text, run_attempt integer,
    last_event_sequence bigint, created_at timestamptz, started_at timestamptz,
    step_ids text[], step_states text[], step_attempts integer[],
    conversation_ids uuid[], queued_at timestamptz[], step_started_at timestamptz[],
    step_ended_at timestamptz[], step_inputs jsonb[], step_outputs jsonb[],
    step_id text, attempt integer, organization_id text, agent text,
    skill text, endpoint text, agent_timeout_seconds double precision, protocol text,
    task_id uuid, conversation_id uuid, spec jsonb, timeout_seconds double precision,
    max_attempts integer, run_input jsonb, upstream jsonb, labels jsonb,
    definition_name text, definition_version integer, run_created_at timestamptz,
    run_started_at timestamptz, trace_context jsonb, credential text
)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan  -- as podium_complete_steps, 50_complete.sql
AS $$
DECLARE
    v_run record;
BEGIN
    IF p_start AND p_claim_limit > 0 THEN
        PERFORM set_config('podium.defer_work_notify', 'on', true);
    END IF;
    IF NOT p_turns THEN  -- read by podium_shares_alone; reset when this function returns
        PERFORM set_config('podium.claim_turns', 'off', true);
    END IF;
    SELECT * INTO v_run
      FROM podium_create_run(p_org, p_definition_name, p_definition_version, p_plan,
                             p_input, p_metadata, p_labels, p_request_id, p_max_parallel,
                             p_bypass_cache, p_webhook_url, p_trace_context, p_parent_run,
                             p_parent_step, p_depth, p_forked_from, p_copy, p_steps,
                             p_start, p_return_steps, p_keying) c;
    PERFORM set_config('podium.defer_work_notify', '', true);
    IF v_run.created AND p_start AND p_claim_limit > 0 THEN
        RETURN QUERY
        SELECT c.run_id, NULL::boolean, NULL::text, NULL::integer, NULL::bigint,
               NULL::timestamptz, NULL::timestamptz, NULL::text[], NULL::text[],
               NULL::integer[], NULL::uuid[], NULL::timestamptz[], NULL::timestamptz[],
               NULL::timestamptz[], NULL::jsonb[], NULL::jsonb[],
               c.step_id, c.attempt, c.organization_id, c.agent, c.skill, c.endpoint,
               c.agent_timeout_seconds, c.protocol, c.task_id, c.conversation_id, c.spec,
               c.timeout_seconds, c.max_attempts, c.run_input, c.upstream, c.labels,
               c.definition_name, c.definition_version, c.run_created_at,
               c.run_started_at, c.trace_context, c.credential
          FROM podium_claim_steps_of(p_owner, p_claim_limit, p_lease_seconds,
                                     ARRAY[v_run.run_id], p_org_cap) c;
    END IF;
    IF p_start AND p_claim_limit > 0 AND EXISTS (
           SELECT 1 FROM orchestration_steps s
            WHERE s.run_id = v_run.run_id AND s.state = 'queued') THEN
        PERFORM pg_notify('podium_work', v_run.run_id::text);
    END IF;
    RETURN QUERY
    SELECT v_run.run_id, v_run.created, v_run.state, v_run.run_attempt,
           v_run.last_event_sequence, v_run.created_at, v_run.started_at, v_run.step_ids,
           v_run.step_states, v_run.step_attempts, v_run.conversation_ids, v_run.queued_at,
           v_run.step_started_at, v_run.step_ended_at, v_run.step_inputs,
           v_run.step_outputs,
           NULL::text, NULL::integer, NULL::text, NULL::text, NULL::text, NULL::text,
           NULL::double precision, NULL::text, NULL::uuid, NULL::uuid, NULL::jsonb,
           NULL::double precision, NULL::integer, NULL::jsonb, NULL::jsonb, NULL::jsonb,
           NULL::text, NULL::integer, NULL::timestamptz, NULL::timestamptz, NULL::jsonb,
           NULL::text;
END
$$;
