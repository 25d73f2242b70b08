-- 0008_budget: usage accounting per attempt and run budgets (functions/65_budgets.sql).
--
-- Usage is kept on the attempt that reported it (step_attempts: tokens, cost, model,
-- and for a cache hit the usage it saved), written by the completion's existing update
-- of the attempt row, so organization totals (GetUsage, quotas) are sums over attempts
-- and stay exact across replicas without a shared counter row to contend on.
-- step_attempts_usage_idx serves those sums: started_at is written once (by the claim),
-- so the index costs no non-HOT update on completion.
ALTER TABLE step_attempts
    ADD COLUMN input_tokens         bigint NOT NULL DEFAULT 0,
    ADD COLUMN output_tokens        bigint NOT NULL DEFAULT 0,
    ADD COLUMN cost_usd             numeric NOT NULL DEFAULT 0,
    ADD COLUMN model                text NOT NULL DEFAULT '',
    ADD COLUMN cached               boolean NOT NULL DEFAULT false,
    ADD COLUMN saved_input_tokens   bigint NOT NULL DEFAULT 0,
    ADD COLUMN saved_output_tokens  bigint NOT NULL DEFAULT 0,
    ADD COLUMN saved_cost_usd       numeric NOT NULL DEFAULT 0;
CREATE INDEX step_attempts_usage_idx ON step_attempts (organization_id, started_at);
COMMENT ON COLUMN step_attempts.saved_input_tokens IS
    'A cache hit: the input tokens of the cached step it reused (its own usage is 0).';

-- Saved usage of a run (cache hits), and the budget it draws on: budget_run_id is the
-- run whose budget applies (itself when its plan has one, else its parent's), NULL
-- when no budget applies, so the hot path tests one column.
ALTER TABLE orchestration_runs
    ADD COLUMN saved_input_tokens   bigint NOT NULL DEFAULT 0,
    ADD COLUMN saved_output_tokens  bigint NOT NULL DEFAULT 0,
    ADD COLUMN saved_cost_usd       numeric NOT NULL DEFAULT 0,
    ADD COLUMN budget_run_id        uuid;
CREATE INDEX orchestration_runs_budget_idx
    ON orchestration_runs (budget_run_id) WHERE budget_run_id IS NOT NULL;

-- The limits of a run with a budget. A table of its own, not columns of the run: an
-- operator raising the limit of a parent from the approval of a child run must not
-- lock the (older) parent run row after the child's (the claimers' lock order).
CREATE TABLE run_budgets (
    run_id           uuid PRIMARY KEY REFERENCES orchestration_runs (id) ON DELETE CASCADE,
    organization_id  text NOT NULL REFERENCES organizations (id),
    max_tokens       bigint NOT NULL DEFAULT 0 CHECK (max_tokens >= 0),
    max_cost_usd     numeric NOT NULL DEFAULT 0 CHECK (max_cost_usd >= 0),
    on_exceed        text NOT NULL DEFAULT 'pause' CHECK (on_exceed IN ('pause', 'fail'))
);
COMMENT ON TABLE run_budgets IS
    'Budget of a run and its child runs (0: no limit); raised by approving a budget approval.';

ALTER TABLE human_approvals DROP CONSTRAINT human_approvals_kind_check;
ALTER TABLE human_approvals ADD CONSTRAINT human_approvals_kind_check
    CHECK (kind IN ('checkpoint_before', 'checkpoint_after', 'failure_review',
                    'input_required', 'budget'));

-- Signatures that gain the model of the attempt, or the limits of a budget decision.
DROP FUNCTION IF EXISTS podium_complete_step(uuid, text, integer, text, jsonb, jsonb, jsonb,
                                   timestamptz, bigint, bigint, numeric);
DROP FUNCTION IF EXISTS podium_record_outcome(uuid, text, integer, text, jsonb, jsonb, jsonb,
                                    timestamptz, bigint, bigint, numeric);
DROP FUNCTION IF EXISTS podium_complete_steps(uuid[], text[], integer[], text[], jsonb[], jsonb[],
                                    jsonb[], timestamptz[], bigint[], bigint[], numeric[],
                                    text, integer, double precision);
DROP FUNCTION IF EXISTS podium_decide_approval(text, uuid, text, text, text, text, text, jsonb);
