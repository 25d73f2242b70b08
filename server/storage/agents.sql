-- Agent registry statements (table agents), each under a "-- name --" header.
-- server/storage/queries.py loads them with the other query files.
-- Column `source`: 'registered' (RegisterAgent) or 'static' (the server configuration).

-- upsert_agent --
-- Insert or update one agent by (organization_id, name): created_at is kept,
-- updated_at is bumped. A registered entry never replaces a static one: then no row
-- is returned (the caller reports the conflict). A static entry replaces anything.
-- $1: organization_id, $2: name, $3: endpoint, $4: skills, $5: max_concurrency,
-- $6: default_timeout_seconds, $7: labels, $8: protocol, $9: source,
-- $10: requests_per_period, $11: tokens_per_period, $12: rate_period_seconds,
-- $13: rate_per_key, $14: card_read_at (NULL: the card was not read)
INSERT INTO agents AS a
    (organization_id, name, endpoint, skills, max_concurrency, default_timeout_seconds,
     labels, protocol, source, requests_per_period, tokens_per_period, rate_period_seconds,
     rate_per_key, card_read_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
ON CONFLICT (organization_id, name) DO UPDATE SET
    endpoint = EXCLUDED.endpoint,
    skills = EXCLUDED.skills,
    max_concurrency = EXCLUDED.max_concurrency,
    default_timeout_seconds = EXCLUDED.default_timeout_seconds,
    labels = EXCLUDED.labels,
    protocol = EXCLUDED.protocol,
    source = EXCLUDED.source,
    requests_per_period = EXCLUDED.requests_per_period,
    tokens_per_period = EXCLUDED.tokens_per_period,
    rate_period_seconds = EXCLUDED.rate_period_seconds,
    rate_per_key = EXCLUDED.rate_per_key,
    card_read_at = EXCLUDED.card_read_at,
    updated_at = now()
WHERE a.source = 'registered' OR EXCLUDED.source = 'static'
RETURNING organization_id, name, endpoint, skills, max_concurrency, default_timeout_seconds,
          labels, protocol, source, created_at, updated_at, requests_per_period,
          tokens_per_period, rate_period_seconds, rate_per_key, card_read_at

-- get_agent --
-- $1: organization_id, $2: name
SELECT organization_id, name, endpoint, skills, max_concurrency, default_timeout_seconds,
       labels, protocol, source, created_at, updated_at, requests_per_period,
       tokens_per_period, rate_period_seconds, rate_per_key, card_read_at
FROM agents
WHERE organization_id = $1 AND name = $2

-- list_agents --
-- Keyset page ordered by name; the skill filter uses agents_skills_idx (GIN).
-- $1: organization_id, $2: after name (NULL for the first page), $3: skill (NULL for
-- any), $4: limit
SELECT organization_id, name, endpoint, skills, max_concurrency, default_timeout_seconds,
       labels, protocol, source, created_at, updated_at, requests_per_period,
       tokens_per_period, rate_period_seconds, rate_per_key, card_read_at
FROM agents
WHERE organization_id = $1
  AND ($2::text IS NULL OR name > $2::text)
  AND ($3::text IS NULL OR skills @> ARRAY[$3::text])
ORDER BY name
LIMIT $4

-- delete_registered_agent --
-- Deletes a registered agent. `deleted` tells whether a row went; `source` is the
-- source of the row before the statement (NULL when there was none), so a static
-- agent (kept) is told apart from a missing one in one round trip.
-- $1: organization_id, $2: name
WITH deleted AS (
    DELETE FROM agents
    WHERE organization_id = $1 AND name = $2 AND source = 'registered'
    RETURNING name
)
SELECT EXISTS (SELECT 1 FROM deleted) AS deleted,
       (SELECT source FROM agents WHERE organization_id = $1 AND name = $2) AS source

-- declare_static_agents --
-- A replica's start: its row and its static agents (functions/90_static_agents.sql).
-- $1: replica id, $2: agent group ('' for none), $3: organization_id, $4: lease seconds,
-- $5: the agents (JSON array of declaration specs), $6: rejoin (its row had lapsed)
SELECT agent_organization, agent_name, agent_change
FROM podium_declare_static_agents($1, $2, $3, $4, $5, $6)

-- get_agents_named --
-- The named agents that exist, by name. $1: organization_id, $2: names
SELECT organization_id, name, endpoint, skills, max_concurrency, default_timeout_seconds,
       labels, protocol, source, created_at, updated_at, requests_per_period,
       tokens_per_period, rate_period_seconds, rate_per_key, card_read_at
FROM agents
WHERE organization_id = $1 AND name = ANY ($2::text[])
ORDER BY name

-- renew_replica --
-- Extends a live replica's row; false when it had lapsed (expired or pruned).
-- $1: replica id, $2: lease seconds
WITH renewed AS (
    UPDATE replicas SET expires_at = now() + make_interval(secs => $2)
    WHERE id = $1 AND expires_at > now()
    RETURNING id
)
SELECT EXISTS (SELECT 1 FROM renewed)

-- prune_static_agents --
-- Removes expired replicas and the static agents only they declared.
SELECT agent_organization, agent_name, agent_change FROM podium_prune_static_agents()

-- withdraw_replica --
-- A replica's clean stop. $1: replica id
SELECT agent_organization, agent_name, agent_change FROM podium_withdraw_replica($1)

-- step_rate_waits --
-- The queued steps held by rate limits: those whose every candidate agent (the step's
-- agent, or each agent offering its skill that the routing policies allow, as the claim
-- routes it: podium_routing_allows) is at its rate limit now, with the agent whose window
-- frees first and when (podium_rate_waits).
-- $1: organization_id, $2: step ids, $3: their agents, $4: their skills (NULL: none),
-- $5: the run's concurrency key value ('' without one: the window of per-key limits),
-- $6: the run's id (its steps' specs hold the definition's routing)
SELECT q.step_id, w.agent, w.free_at
FROM unnest($2::text[], $3::text[], $4::text[]) AS q(step_id, agent, skill)
CROSS JOIN (
    SELECT (SELECT jsonb_build_object('allowed_agents', to_jsonb(p.allowed_agents),
                                      'denied_agents', to_jsonb(p.denied_agents))
              FROM routing_policies p WHERE p.organization_id = $1) AS rules
) o
CROSS JOIN LATERAL (
    SELECT array_agg(a.name) AS names
    FROM agents a
    WHERE a.organization_id = $1
      AND CASE WHEN q.skill IS NOT NULL
               THEN q.skill = ANY (a.skills) AND podium_routing_allows(a.name, o.rules)
                    AND podium_routing_allows(a.name, (
                            SELECT s.spec -> 'routing' FROM orchestration_steps s
                             WHERE s.run_id = $6 AND s.step_id = q.step_id))
               ELSE a.name = q.agent END
) c
CROSS JOIN LATERAL (
    SELECT count(*) AS held, min(r.free_at) AS free_at,
           (array_agg(r.agent ORDER BY r.free_at))[1] AS agent
    FROM podium_rate_waits($1, c.names, $5) r
) w
WHERE w.held > 0 AND w.held = cardinality(c.names)

-- watched_agent_endpoints --
-- The endpoints of every podium.agent.v1 agent of every organization: what a replica
-- watches the health of (engine/agents.py), and whether an agent there waits for its
-- card.
SELECT endpoint, bool_or(card_read_at IS NULL) AS pending
FROM agents
WHERE protocol = 'podium_v1'
GROUP BY endpoint

-- agents_awaiting_card --
-- The podium.agent.v1 agents at an endpoint whose card was not read yet (lazy
-- registrations, static agents that did not answer at start), every organization.
-- $1: endpoint
SELECT organization_id, name, endpoint, skills, max_concurrency, default_timeout_seconds,
       labels, protocol, source, created_at, updated_at, requests_per_period,
       tokens_per_period, rate_period_seconds, rate_per_key, card_read_at
FROM agents
WHERE endpoint = $1 AND protocol = 'podium_v1' AND card_read_at IS NULL

-- set_agent_card --
-- Store what the card gave an agent that was waiting for it; nothing when another
-- replica did it first or the agent changed meanwhile (updated_at differs).
-- $1: organization_id, $2: name, $3: updated_at read, $4: skills, $5: max_concurrency,
-- $6: default_timeout_seconds
UPDATE agents
SET skills = $4, max_concurrency = $5, default_timeout_seconds = $6,
    card_read_at = now(), updated_at = now()
WHERE organization_id = $1 AND name = $2 AND updated_at = $3 AND card_read_at IS NULL
RETURNING name

-- agent_endpoints --
-- Endpoint and protocol of the named agents that exist (GetRun: the health of the
-- agents of running steps). $1: organization_id, $2: names
SELECT name, endpoint, protocol
FROM agents
WHERE organization_id = $1 AND name = ANY ($2::text[])
