-- 0011_policies: per-organization routing policies (GetRoutingPolicy / UpdateRoutingPolicy).
-- podium: expand
--
-- One row per organization that ever set its policy; no row means every agent and skill
-- is allowed and no agent needs an approval. Empty allow lists allow everything.
-- `revision` counts the updates: replicas cache a policy for
-- PODIUM_ROUTING_POLICY_CACHE_SECONDS and compare it to tell a change.
CREATE TABLE routing_policies (
    organization_id  text PRIMARY KEY REFERENCES organizations (id),
    allowed_agents   text[] NOT NULL DEFAULT '{}',
    denied_agents    text[] NOT NULL DEFAULT '{}',
    allowed_skills   text[] NOT NULL DEFAULT '{}',
    denied_skills    text[] NOT NULL DEFAULT '{}',
    approval_agents  text[] NOT NULL DEFAULT '{}',
    revision         bigint NOT NULL DEFAULT 1,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE routing_policies IS
    'Which agents and skills the runs of an organization may use, and which agents need '
    'an approval before each step (UpdateRoutingPolicy).';
