-- 0013_lifecycle: static agents belong to the replicas (or agent groups) that declare them.
-- podium: expand
--
-- Each replica holds a row in `replicas` while it runs, renewed every third of
-- PODIUM_LEASE_SECONDS; its static agents (PODIUM_AGENTS) are declared in
-- `static_agent_declarations`, owned by the replica (`replica:<id>`) or by its agent
-- group (`group:<name>`, PODIUM_AGENT_GROUP). A static agent is deleted only when no
-- live owner declares it any more (functions/90_static_agents.sql). Both tables are new:
-- older replicas neither read nor write them.
CREATE TABLE replicas (
    id           text PRIMARY KEY,
    agent_group  text NOT NULL DEFAULT '',
    started_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
COMMENT ON TABLE replicas IS
    'Running Podium replicas (id: the scheduler''s lease owner), live while expires_at '
    'is ahead; a clean stop deletes the row, a dead replica''s row expires.';

CREATE TABLE static_agent_declarations (
    organization_id  text NOT NULL REFERENCES organizations (id),
    name             text NOT NULL,
    owner            text NOT NULL,
    spec             jsonb NOT NULL,
    declared_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (organization_id, name, owner)
);
COMMENT ON TABLE static_agent_declarations IS
    'Who declares each static agent: owner replica:<id> or group:<name>; spec holds the '
    'declared fields. The agents row follows the newest live declaration of its name.';
