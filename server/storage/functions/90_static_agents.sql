-- Static agents (PODIUM_AGENTS) and the replicas that declare them (migration 0013).
--
-- A replica declares its static agents at start (podium_declare_static_agents), owned by
-- itself (`replica:<id>`) or by its agent group (`group:<name>`): a group's declarations
-- are the set its last started replica declared, and stay live while any replica of the
-- group is. An agents row of source 'static' follows the newest live declaration of its
-- name and is deleted when none is left: when its owners stop (podium_withdraw_replica)
-- or their replica rows expire (podium_prune_static_agents, from every replica's
-- renewal). Every change takes one transaction advisory lock, then agent rows in
-- (organization, name) order.

-- The declaration owners that have a live replica: each live replica and its group.
CREATE OR REPLACE FUNCTION podium_live_static_owners() RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(o.owner), '{}')
    FROM replicas r
    CROSS JOIN LATERAL (
        VALUES ('replica:' || r.id),
               (CASE WHEN r.agent_group <> '' THEN 'group:' || r.agent_group END)
    ) AS o (owner)
    WHERE r.expires_at > now() AND o.owner IS NOT NULL
$$;

-- Make the agents row of (p_org, p_name) what its newest declaration says, taking over
-- a registered agent of that name; delete the static row when nothing declares it.
-- Returns 'declared', 'took_over', 'removed', or NULL when nothing changed.
CREATE OR REPLACE FUNCTION podium_sync_static_agent(p_org text, p_name text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_spec jsonb;
    v_source text;
BEGIN
    SELECT d.spec INTO v_spec
    FROM static_agent_declarations d
    WHERE d.organization_id = p_org AND d.name = p_name
    ORDER BY d.declared_at DESC, d.owner
    LIMIT 1;
    SELECT a.source INTO v_source
    FROM agents a WHERE a.organization_id = p_org AND a.name = p_name
    FOR UPDATE;
    IF v_spec IS NULL THEN
        DELETE FROM agents a
        WHERE a.organization_id = p_org AND a.name = p_name AND a.source = 'static';
        RETURN CASE WHEN FOUND THEN 'removed' END;
    END IF;
    INSERT INTO agents AS a
        (organization_id, name, endpoint, skills, max_concurrency, default_timeout_seconds,
         labels, protocol, source, requests_per_period, tokens_per_period,
         rate_period_seconds, rate_per_key, card_read_at)
    VALUES (
        p_org, p_name, v_spec ->> 'endpoint',
        ARRAY(SELECT jsonb_array_elements_text(v_spec -> 'skills')),
        (v_spec ->> 'max_concurrency')::integer,
        (v_spec ->> 'default_timeout_seconds')::double precision,
        v_spec -> 'labels', v_spec ->> 'protocol', 'static',
        (v_spec ->> 'requests_per_period')::integer,
        (v_spec ->> 'tokens_per_period')::bigint,
        (v_spec ->> 'rate_period_seconds')::double precision,
        (v_spec ->> 'rate_per_key')::boolean,
        CASE WHEN (v_spec ->> 'card_read')::boolean THEN now() END)
    ON CONFLICT (organization_id, name) DO UPDATE SET
        endpoint = EXCLUDED.endpoint,
        skills = EXCLUDED.skills,
        max_concurrency = EXCLUDED.max_concurrency,
        default_timeout_seconds = EXCLUDED.default_timeout_seconds,
        labels = EXCLUDED.labels,
        protocol = EXCLUDED.protocol,
        source = 'static',
        requests_per_period = EXCLUDED.requests_per_period,
        tokens_per_period = EXCLUDED.tokens_per_period,
        rate_period_seconds = EXCLUDED.rate_period_seconds,
        rate_per_key = EXCLUDED.rate_per_key,
        card_read_at = EXCLUDED.card_read_at,
        updated_at = now()
    WHERE (a.endpoint, a.skills, a.max_concurrency, a.default_timeout_seconds, a.labels,
           a.protocol, a.source, a.requests_per_period, a.tokens_per_period,
           a.rate_period_seconds, a.rate_per_key, a.card_read_at IS NULL)
          IS DISTINCT FROM
          (EXCLUDED.endpoint, EXCLUDED.skills, EXCLUDED.max_concurrency,
           EXCLUDED.default_timeout_seconds, EXCLUDED.labels, EXCLUDED.protocol, 'static',
           EXCLUDED.requests_per_period, EXCLUDED.tokens_per_period,
           EXCLUDED.rate_period_seconds, EXCLUDED.rate_per_key,
           EXCLUDED.card_read_at IS NULL);
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN CASE WHEN v_source = 'registered' THEN 'took_over' ELSE 'declared' END;
END
$$;

-- Delete the declarations of owners without a live replica and the replica rows that
-- expired, then sync the agents they declared. Returns what changed.
CREATE OR REPLACE FUNCTION podium_prune_static_agents()
RETURNS TABLE (agent_organization text, agent_name text, agent_change text)
LANGUAGE plpgsql AS $$
DECLARE
    v_gone record;
    v_live text[] := podium_live_static_owners();
BEGIN
    IF NOT EXISTS (SELECT 1 FROM replicas r WHERE r.expires_at <= now())
       AND NOT EXISTS (
           SELECT 1 FROM static_agent_declarations d WHERE NOT (d.owner = ANY (v_live))) THEN
        RETURN;  -- the renewal's common case: nothing to prune, no lock taken
    END IF;
    PERFORM pg_advisory_xact_lock(1634166126, hashtext('podium static agents'));
    v_live := podium_live_static_owners();  -- again, under the lock
    DELETE FROM replicas r WHERE r.expires_at <= now();
    FOR v_gone IN
        WITH gone AS (
            DELETE FROM static_agent_declarations d
            WHERE NOT (d.owner = ANY (v_live))
            RETURNING d.organization_id, d.name
        )
        SELECT DISTINCT g.organization_id, g.name FROM gone g ORDER BY 1, 2
    LOOP
        agent_organization := v_gone.organization_id;
        agent_name := v_gone.name;
        agent_change := podium_sync_static_agent(v_gone.organization_id, v_gone.name);
        IF agent_change IS NOT NULL THEN
            RETURN NEXT;
        END IF;
    END LOOP;
END
$$;

-- A replica starts (or rejoins after its row lapsed): hold its row for p_lease seconds
-- and declare p_agents (a JSON array of agent objects: name, endpoint, skills, ...,
-- card_read: the values come from the agent's card, which sets card_read_at) in
-- p_org as its own, or as its group's when p_group is set (replacing the group's
-- previous set there). Static agents of p_org that nothing declares (stored by a
-- version before 0011) are removed unless declared now. A rejoining replica of a group
-- whose declarations are still there leaves them: they may be newer than its own.
-- Returns the agents of p_org that changed, then those pruned.
CREATE OR REPLACE FUNCTION podium_declare_static_agents(
    p_replica text, p_group text, p_org text, p_lease double precision, p_agents jsonb,
    p_rejoin boolean
) RETURNS TABLE (agent_organization text, agent_name text, agent_change text)
LANGUAGE plpgsql AS $$
DECLARE
    v_owner text := CASE WHEN p_group <> '' THEN 'group:' || p_group
                         ELSE 'replica:' || p_replica END;
    v_names text[];
    v_name text;
BEGIN
    PERFORM pg_advisory_xact_lock(1634166126, hashtext('podium static agents'));
    INSERT INTO replicas AS r (id, agent_group, expires_at)
    VALUES (p_replica, p_group, now() + make_interval(secs => p_lease))
    ON CONFLICT (id) DO UPDATE SET
        agent_group = EXCLUDED.agent_group, expires_at = EXCLUDED.expires_at;
    IF NOT (p_rejoin AND p_group <> '' AND EXISTS (
        SELECT 1 FROM static_agent_declarations d
        WHERE d.organization_id = p_org AND d.owner = v_owner)) THEN
        SELECT coalesce(array_agg(DISTINCT n ORDER BY n), '{}') INTO v_names
        FROM (
            SELECT d.name AS n FROM static_agent_declarations d
            WHERE d.organization_id = p_org AND d.owner = v_owner
            UNION ALL
            SELECT e ->> 'name' FROM jsonb_array_elements(p_agents) e
            UNION ALL
            SELECT a.name FROM agents a
            WHERE a.organization_id = p_org AND a.source = 'static'
              AND NOT EXISTS (
                  SELECT 1 FROM static_agent_declarations d
                  WHERE d.organization_id = a.organization_id AND d.name = a.name)
        ) s;
        DELETE FROM static_agent_declarations d
        WHERE d.organization_id = p_org AND d.owner = v_owner;
        INSERT INTO static_agent_declarations (organization_id, name, owner, spec)
        SELECT p_org, e ->> 'name', v_owner, e FROM jsonb_array_elements(p_agents) e;
        FOREACH v_name IN ARRAY v_names LOOP
            agent_organization := p_org;
            agent_name := v_name;
            agent_change := podium_sync_static_agent(p_org, v_name);
            IF agent_change IS NOT NULL THEN
                RETURN NEXT;
            END IF;
        END LOOP;
    END IF;
    RETURN QUERY SELECT * FROM podium_prune_static_agents();
END
$$;

-- A replica stops: delete its row, then prune what only it (or its group, when it was
-- the group's last live replica) declared. Returns what changed.
CREATE OR REPLACE FUNCTION podium_withdraw_replica(p_replica text)
RETURNS TABLE (agent_organization text, agent_name text, agent_change text)
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM replicas r WHERE r.id = p_replica;
    RETURN QUERY SELECT * FROM podium_prune_static_agents();
END
$$;
