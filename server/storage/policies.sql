-- Routing policy statements (table routing_policies), each under a "-- name --" header.

-- get_routing_policy --
-- The policy of organization $1 (no row: never set).
SELECT allowed_agents, denied_agents, allowed_skills, denied_skills, approval_agents,
       revision, updated_at
FROM routing_policies
WHERE organization_id = $1;

-- put_routing_policy --
-- Replace the lists of organization $1 given as non-NULL ($2..$6), keeping the others;
-- creates the organization's row (and the organization) on the first update.
-- $1 organization_id, $2 allowed_agents, $3 denied_agents, $4 allowed_skills,
-- $5 denied_skills, $6 approval_agents (each text[] or NULL)
WITH org AS (
    INSERT INTO organizations (id, name) VALUES ($1, $1) ON CONFLICT (id) DO NOTHING
)
INSERT INTO routing_policies AS p
    (organization_id, allowed_agents, denied_agents, allowed_skills, denied_skills,
     approval_agents)
VALUES ($1, coalesce($2::text[], '{}'), coalesce($3::text[], '{}'),
        coalesce($4::text[], '{}'), coalesce($5::text[], '{}'), coalesce($6::text[], '{}'))
ON CONFLICT (organization_id) DO UPDATE
SET allowed_agents = coalesce($2::text[], p.allowed_agents),
    denied_agents = coalesce($3::text[], p.denied_agents),
    allowed_skills = coalesce($4::text[], p.allowed_skills),
    denied_skills = coalesce($5::text[], p.denied_skills),
    approval_agents = coalesce($6::text[], p.approval_agents),
    revision = p.revision + 1,
    updated_at = now()
RETURNING allowed_agents, denied_agents, allowed_skills, denied_skills, approval_agents,
          revision, updated_at;
