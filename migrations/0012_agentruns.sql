-- 0012_agentruns: step credentials. Every agent call of a step attempt carries a bearer
-- credential (podium.agent.v1 ExecuteTaskRequest.credential) with which the agent may
-- start child runs of the step. Only its SHA-256 is stored, on the attempt's row; it is
-- accepted while that attempt is the step's running attempt (server/engine/
-- step_credentials.py), so it needs no expiry of its own and no clean-up.
ALTER TABLE step_attempts ADD COLUMN credential_hash text;
CREATE UNIQUE INDEX step_attempts_credential_idx ON step_attempts (credential_hash)
    WHERE credential_hash IS NOT NULL;
COMMENT ON COLUMN step_attempts.credential_hash IS
    'Hex SHA-256 of the attempt''s step credential (docs/agents.md); NULL without one.';
