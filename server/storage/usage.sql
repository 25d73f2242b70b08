-- Usage accounting and budgets (usage is kept per attempt, see migrations/0008_budget.sql;
-- budgets in functions/65_budgets.sql).

-- run_usage --
-- A run's usage including its child runs (recursively), the usage its cache hits saved,
-- and the budget it draws on (NULL columns when none).
-- $1 organization_id, $2 run_id
WITH RECURSIVE tree AS (
    SELECT r.id FROM orchestration_runs r WHERE r.id = $2 AND r.organization_id = $1
    UNION ALL
    SELECT c.id FROM orchestration_runs c JOIN tree t ON c.parent_run_id = t.id
), totals AS (
    SELECT coalesce(sum(r.input_tokens), 0)::bigint AS input_tokens,
           coalesce(sum(r.output_tokens), 0)::bigint AS output_tokens,
           coalesce(sum(r.cost_usd), 0)::float8 AS cost_usd,
           coalesce(sum(r.saved_input_tokens), 0)::bigint AS saved_input_tokens,
           coalesce(sum(r.saved_output_tokens), 0)::bigint AS saved_output_tokens,
           coalesce(sum(r.saved_cost_usd), 0)::float8 AS saved_cost_usd
      FROM orchestration_runs r JOIN tree t ON r.id = t.id
), me AS (
    SELECT r.budget_run_id FROM orchestration_runs r WHERE r.id = $2 AND r.organization_id = $1
)
SELECT totals.*, me.budget_run_id, b.used_tokens, b.used_cost_usd::float8 AS used_cost_usd,
       b.max_tokens, b.max_cost_usd::float8 AS max_cost_usd, b.on_exceed, b.exceeded,
       (SELECT a.id FROM human_approvals a
         WHERE a.run_id = $2 AND a.state = 'pending' AND a.kind = 'budget'
         ORDER BY a.created_at LIMIT 1) AS approval_id
  FROM totals CROSS JOIN me
  LEFT JOIN LATERAL podium_budget_state(me.budget_run_id) b ON me.budget_run_id IS NOT NULL

-- usage_report --
-- GetUsage: the usage of the organization's agent attempts started in [$2, $3), filtered
-- ('' = any) and grouped by the dimensions switched on (a dimension switched off is '').
-- Index step_attempts_usage_idx. At most $11 rows.
-- $1 organization_id, $2 start, $3 end, $4 definition_name, $5 agent, $6 model,
-- $7 by day, $8 by definition, $9 by agent, $10 by model, $11 row limit
SELECT CASE WHEN $7 THEN to_char(a.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')
            ELSE '' END AS day,
       CASE WHEN $8 THEN coalesce(r.definition_name, '') ELSE '' END AS definition_name,
       CASE WHEN $9 THEN a.agent ELSE '' END AS agent,
       CASE WHEN $10 THEN a.model ELSE '' END AS model,
       sum(a.input_tokens)::bigint AS input_tokens,
       sum(a.output_tokens)::bigint AS output_tokens,
       sum(a.cost_usd)::float8 AS cost_usd,
       count(*) AS step_attempts,
       count(*) FILTER (WHERE a.cached) AS cache_hits,
       sum(a.saved_input_tokens)::bigint AS saved_input_tokens,
       sum(a.saved_output_tokens)::bigint AS saved_output_tokens,
       sum(a.saved_cost_usd)::float8 AS saved_cost_usd
  FROM step_attempts a
  JOIN orchestration_runs r ON r.id = a.run_id
 WHERE a.organization_id = $1 AND a.started_at >= $2 AND a.started_at < $3
   AND a.agent IS NOT NULL
   AND ($4 = '' OR r.definition_name = $4)
   AND ($5 = '' OR a.agent = $5)
   AND ($6 = '' OR a.model = $6)
 GROUP BY 1, 2, 3, 4
 ORDER BY 1, 2, 3, 4
 LIMIT $11

-- quota_usage --
-- The organization's tokens and cost of the current UTC day and month (quotas).
-- $1 organization_id
SELECT coalesce(sum(a.input_tokens + a.output_tokens)
                    FILTER (WHERE a.started_at >= date_trunc('day', now(), 'UTC')), 0)::bigint
           AS day_tokens,
       coalesce(sum(a.cost_usd)
                    FILTER (WHERE a.started_at >= date_trunc('day', now(), 'UTC')), 0)::float8
           AS day_cost_usd,
       coalesce(sum(a.input_tokens + a.output_tokens), 0)::bigint AS month_tokens,
       coalesce(sum(a.cost_usd), 0)::float8 AS month_cost_usd
  FROM step_attempts a
 WHERE a.organization_id = $1 AND a.started_at >= date_trunc('month', now(), 'UTC')
