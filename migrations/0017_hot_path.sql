-- 0017_hot_path: fewer writes per step.
-- podium: expand
--
-- Every step writes rows of orchestration_steps, step_attempts, orchestration_events
-- and conversations, and each of those rows also names its organization, checked by a
-- foreign key on organizations: a row lock on the organization's row per inserted row
-- (7-9 per step). The organization of these rows is always their run's, which its own
-- foreign key checks (orchestration_runs.organization_id), and organizations are never
-- deleted, so these four checks are redundant. Dropping them is safe while older
-- replicas run (they only stop being checked).
ALTER TABLE orchestration_steps DROP CONSTRAINT IF EXISTS orchestration_steps_organization_id_fkey;
ALTER TABLE step_attempts DROP CONSTRAINT IF EXISTS step_attempts_organization_id_fkey;
ALTER TABLE orchestration_events DROP CONSTRAINT IF EXISTS orchestration_events_organization_id_fkey;
ALTER TABLE conversations DROP CONSTRAINT IF EXISTS conversations_organization_id_fkey;

-- A step's attempt row is updated once when the attempt ends (none of its indexed
-- columns change): room on its page lets that update be HOT (no new index entries).
-- Applies to pages written from now on.
ALTER TABLE step_attempts SET (fillfactor = 85);
