-- 0005_rate_limits: per-agent rate limits (functions/45_rate_limits.sql).
--
-- An agent may declare requests and/or tokens per period (a sliding window of
-- rate_period_seconds; 0 everywhere means no limit). agent_rate_usage is a log of the
-- usage of limited agents only: the claim appends one row per attempt it starts on such
-- an agent (requests = 1), a completion one row per attempt that reported tokens on an
-- agent with a tokens limit. The claim sums the rows of the last period; rows older
-- than a day (the longest period) are pruned by the claim.
ALTER TABLE agents
    ADD COLUMN requests_per_period integer NOT NULL DEFAULT 0
        CHECK (requests_per_period >= 0),
    ADD COLUMN tokens_per_period bigint NOT NULL DEFAULT 0 CHECK (tokens_per_period >= 0),
    ADD COLUMN rate_period_seconds double precision NOT NULL DEFAULT 0
        CHECK (rate_period_seconds >= 0 AND rate_period_seconds <= 86400);
COMMENT ON COLUMN agents.rate_period_seconds IS
    'Window of requests_per_period and tokens_per_period; 0 (with both 0): no rate limit.';

CREATE TABLE agent_rate_usage (
    organization_id  text NOT NULL,
    agent            text NOT NULL,
    at               timestamptz NOT NULL,
    requests         integer NOT NULL DEFAULT 0,
    tokens           bigint NOT NULL DEFAULT 0
);
CREATE INDEX agent_rate_usage_idx ON agent_rate_usage (organization_id, agent, at);
COMMENT ON TABLE agent_rate_usage IS
    'Usage of rate-limited agents: attempts started (requests) and tokens reported, by '
    'time; summed over the last period by the claim, pruned after a day.';
