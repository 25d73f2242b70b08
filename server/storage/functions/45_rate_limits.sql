-- Per-agent rate limits: requests and tokens per period, over a sliding window of the
-- agent's rate_period_seconds (0 with both counts 0: no limit). The usage of limited
-- agents is a log (agent_rate_usage): the claim (40_claim.sql) appends a request for
-- each attempt it starts on such an agent and does not start one while the window is
-- used up; podium_complete_step (50_complete.sql) appends the tokens an attempt
-- reported. The claim is serialized by its advisory lock, so the counts it reads are
-- exact across replicas. Unlimited agents cost the claim one column test.
--
-- An agent whose limit is per concurrency key (agents.rate_per_key) has one window per
-- key value of the runs calling it (agent_rate_usage.concurrency_key; runs without a key
-- share the window of ''); every other agent logs and reads the key ''. Each function
-- takes the key of the window (p_key: '' for an agent limited as a whole).

DROP FUNCTION IF EXISTS podium_rate_free(text, text, integer, bigint, double precision,
                                         timestamptz);
DROP FUNCTION IF EXISTS podium_rate_room(text, text, integer, bigint, double precision,
                                         timestamptz);
DROP FUNCTION IF EXISTS podium_rate_waits(text, text[]);

-- Whether an attempt may start now on an agent with these limits: fewer than
-- p_requests attempts started in the last p_period seconds (0: no request limit), and
-- fewer than p_tokens tokens reported in it (0: no token limit).
CREATE OR REPLACE FUNCTION podium_rate_free(
    p_org text, p_agent text, p_requests integer, p_tokens bigint, p_period double precision,
    p_now timestamptz, p_key text
) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT p_period <= 0
        OR ((p_requests = 0 OR coalesce(sum(u.requests), 0) < p_requests)
            AND (p_tokens = 0 OR coalesce(sum(u.tokens), 0) < p_tokens))
      FROM agent_rate_usage u
     WHERE u.organization_id = p_org AND u.agent = p_agent AND u.concurrency_key = p_key
       AND u.at > p_now - make_interval(secs => p_period)
$$;

-- How many attempts may start now on a limited agent: 0 when its window is used up
-- (p_requests starts or p_tokens reported tokens in the last p_period seconds), else
-- the requests left (2^31 - 1 without a request limit). The claim asks once per agent
-- and counts its own starts down, so a claim reads each window once. Also prunes the
-- agent's rows older than the longest period (a day).
CREATE OR REPLACE FUNCTION podium_rate_room(
    p_org text, p_agent text, p_requests integer, p_tokens bigint, p_period double precision,
    p_now timestamptz, p_key text
) RETURNS integer
LANGUAGE plpgsql AS $$  -- PL/pgSQL: planned once per connection (10_events.sql)
BEGIN
    DELETE FROM agent_rate_usage
     WHERE organization_id = p_org AND agent = p_agent AND concurrency_key = p_key
       AND at < p_now - interval '1 day';
    RETURN (
        SELECT CASE
                   WHEN p_period <= 0 THEN 2147483647
                   WHEN p_tokens > 0 AND coalesce(sum(u.tokens), 0) >= p_tokens THEN 0
                   WHEN p_requests > 0 THEN greatest(p_requests - coalesce(sum(u.requests), 0), 0)
                   ELSE 2147483647
               END::integer
          FROM agent_rate_usage u
         WHERE u.organization_id = p_org AND u.agent = p_agent AND u.concurrency_key = p_key
           AND u.at > p_now - make_interval(secs => p_period));
END
$$;

-- Record the tokens an attempt reported, when its agent has a tokens limit (called by
-- podium_complete_step for every outcome with usage, fenced or not: the agent spent
-- them either way).
CREATE OR REPLACE FUNCTION podium_rate_record_tokens(
    p_run uuid, p_step text, p_attempt integer, p_tokens bigint
) RETURNS void
LANGUAGE plpgsql AS $$  -- PL/pgSQL: planned once per connection (10_events.sql)
BEGIN
    INSERT INTO agent_rate_usage (organization_id, agent, at, tokens, concurrency_key)
    SELECT a.organization_id, a.name, clock_timestamp(), p_tokens,
           CASE WHEN a.rate_per_key THEN
               coalesce((SELECT r.concurrency_key FROM orchestration_runs r
                          WHERE r.id = p_run), '')
           ELSE '' END
      FROM step_attempts t
      JOIN agents a ON a.organization_id = t.organization_id AND a.name = t.agent
     WHERE t.run_id = p_run AND t.step_id = p_step AND t.attempt = p_attempt
       AND a.tokens_per_period > 0 AND a.rate_period_seconds > 0;
END
$$;

-- When a step of a run with concurrency key p_key ('' without one) waiting on agents
-- p_agents (its agent, or every agent offering its skill)
-- may start, if all of them are at their rate limit now: one row per limited agent
-- with the time its window frees (requests: when enough starts leave the window;
-- tokens: when enough reported tokens leave it). Agents under their limits or without
-- limits give no row. Read by GetRun (the waiting reason of a queued step), not by the
-- claim.
CREATE OR REPLACE FUNCTION podium_rate_waits(p_org text, p_agents text[], p_key text)
RETURNS TABLE (agent text, free_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT a.name,
           greatest(
               CASE WHEN a.requests_per_period > 0 THEN
                   (SELECT w.at + make_interval(secs => a.rate_period_seconds)
                      FROM (SELECT u.at, sum(u.requests) OVER (ORDER BY u.at DESC) AS newer
                              FROM agent_rate_usage u
                             WHERE u.organization_id = a.organization_id AND u.agent = a.name
                               AND u.concurrency_key = CASE WHEN a.rate_per_key THEN p_key
                                                            ELSE '' END
                               AND u.requests > 0
                               AND u.at > clock_timestamp()
                                          - make_interval(secs => a.rate_period_seconds)) w
                     WHERE w.newer >= a.requests_per_period
                     ORDER BY w.at DESC LIMIT 1)
               END,
               CASE WHEN a.tokens_per_period > 0 THEN
                   (SELECT w.at + make_interval(secs => a.rate_period_seconds)
                      FROM (SELECT u.at, sum(u.tokens) OVER (ORDER BY u.at DESC) AS newer
                              FROM agent_rate_usage u
                             WHERE u.organization_id = a.organization_id AND u.agent = a.name
                               AND u.concurrency_key = CASE WHEN a.rate_per_key THEN p_key
                                                            ELSE '' END
                               AND u.tokens > 0
                               AND u.at > clock_timestamp()
                                          - make_interval(secs => a.rate_period_seconds)) w
                     WHERE w.newer >= a.tokens_per_period
                     ORDER BY w.at DESC LIMIT 1)
               END)
      FROM agents a
     WHERE a.organization_id = p_org AND a.name = ANY (p_agents) AND a.rate_period_seconds > 0
       AND NOT podium_rate_free(a.organization_id, a.name, a.requests_per_period,
                                a.tokens_per_period, a.rate_period_seconds, clock_timestamp(),
                                CASE WHEN a.rate_per_key THEN p_key ELSE '' END)
$$;
