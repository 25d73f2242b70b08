-- 0014_discovery: when Podium read a podium.agent.v1 agent's card (GetAgentCard).
-- podium: expand
--
-- RegisterAgent and the static agents take the skills, max concurrency and default
-- timeout not given from the agent's card. A lazy registration (or a static agent that
-- did not answer at start) is stored with the values given and NULL here; the first
-- replica that sees the agent serving reads its card and sets it. Older replicas
-- neither read nor write the column.
ALTER TABLE agents ADD COLUMN card_read_at timestamptz;
COMMENT ON COLUMN agents.card_read_at IS
    'When the agent''s card was read and merged into skills, max_concurrency and '
    'default_timeout_seconds; NULL: not yet (lazy) or not applicable (A2A).';
