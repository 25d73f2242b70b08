-- The run's event log: gap-free per-run sequences, written in the transaction of the
-- change they report, and a NOTIFY podium_events per transaction for the watchers
-- (server/events/hub.py), sent only for organizations a replica watches.
--
-- Every file of this directory is repeatable: the migrator (server/storage/migrations.py)
-- applies a whole file again whenever its text changes, after the numbered migrations.
-- Each statement must therefore be re-runnable: CREATE OR REPLACE FUNCTION (and CREATE
-- OR REPLACE TRIGGER); a function that is removed or renamed is dropped by a migration.

-- Whether a replica watches the organization's events now: its event hub keeps a row in
-- event_listeners while it has WatchRun/WatchRuns watchers of the organization.
-- PL/pgSQL, not SQL, like every function the hot path calls: PostgreSQL 15 plans a
-- SQL-language function's body again in every transaction that calls it (its EXISTS
-- keeps it from being inlined), PL/pgSQL once per connection.
CREATE OR REPLACE FUNCTION podium_events_watched(p_org text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM event_listeners l
                    WHERE l.organization_id = p_org AND l.expires_at > now());
END
$$;

-- NOTIFY podium_events, '<run id>' when a replica watches the run's organization
-- (p_org, or the run's). A NOTIFY makes its transaction take a database-wide lock at
-- commit, one transaction at a time: nobody watching, nobody pays it.
CREATE OR REPLACE FUNCTION podium_notify_events(p_run uuid, p_org text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_org text := p_org;
BEGIN
    IF v_org IS NULL THEN
        SELECT r.organization_id INTO v_org FROM orchestration_runs r WHERE r.id = p_run;
    END IF;
    IF podium_events_watched(v_org) THEN
        PERFORM pg_notify('podium_events', p_run::text);
    END IF;
END
$$;

-- podium_notify_events for several runs at once: p_orgs[i] is p_runs[i]'s organization;
-- each organization is looked up once.
CREATE OR REPLACE FUNCTION podium_notify_runs(p_runs uuid[], p_orgs text[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_org text;
BEGIN
    FOR v_org IN SELECT DISTINCT o FROM unnest(p_orgs) AS o LOOP
        IF podium_events_watched(v_org) THEN
            PERFORM pg_notify('podium_events', u.run::text)
               FROM unnest(p_runs, p_orgs) AS u(run, org) WHERE u.org = v_org;
        END IF;
    END LOOP;
END
$$;

-- The event hub of replica p_replica watches organizations p_orgs for p_seconds more
-- (p_all: p_orgs are all it watches, its other rows are removed). Rows long expired
-- (replicas that stopped without removing theirs) are removed on the way, SKIP LOCKED.
CREATE OR REPLACE FUNCTION podium_listen_events(
    p_replica text, p_orgs text[], p_seconds double precision, p_all boolean
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_all THEN
        DELETE FROM event_listeners
         WHERE replica = p_replica AND NOT organization_id = ANY (p_orgs);
        DELETE FROM event_listeners
         WHERE ctid IN (SELECT l.ctid FROM event_listeners l
                         WHERE l.expires_at < now() - interval '1 hour'
                           FOR UPDATE SKIP LOCKED);
    END IF;
    INSERT INTO event_listeners (organization_id, replica, expires_at)
    SELECT o, p_replica, now() + make_interval(secs => p_seconds) FROM unnest(p_orgs) o
    ON CONFLICT (organization_id, replica) DO UPDATE SET expires_at = excluded.expires_at;
END
$$;

-- Append one event to a run's log with the next gap-free sequence and notify
-- watchers. The caller holds (or takes here) the run row lock, which orders events.
CREATE OR REPLACE FUNCTION podium_emit_event(
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
    PERFORM podium_notify_events(p_run, v_org);
    RETURN v_seq;
END
$$;

-- Append agent stream events (step.progress, step.output_chunk) of one attempt, already
-- coalesced by the replica, with the run's next sequence numbers. Fenced like a
-- completion: nothing is written unless the step is still running that attempt.
CREATE OR REPLACE FUNCTION podium_append_step_events(
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
    PERFORM podium_notify_events(p_run, v_org);
    RETURN true;
END
$$;
