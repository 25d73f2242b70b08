-- API key statements (table api_keys), each under a "-- name --" header.
-- server/storage/queries.py loads them with the other query files. Only hashes of keys
-- are stored (key_hash); key_prefix is the public part shown in listings.

-- ensure_organization --
-- Create the organization if it does not exist (its name is its id).
-- $1: organization_id
INSERT INTO organizations (id, name) VALUES ($1, $1) ON CONFLICT (id) DO NOTHING;

-- insert_api_key --
-- $1: organization_id, $2: name, $3: key_prefix, $4: key_hash, $5: role
INSERT INTO api_keys (organization_id, name, key_prefix, key_hash, role)
VALUES ($1, $2, $3, $4, $5)
RETURNING id, organization_id, name, key_prefix, role, created_at, last_used_at, revoked_at;

-- find_api_key --
-- The key whose hash is $1, revoked or not (the unique index on key_hash).
SELECT id, organization_id, name, key_prefix, role, created_at, last_used_at, revoked_at
FROM api_keys
WHERE key_hash = $1;

-- list_api_keys --
-- Every key, or those of organization $1 when it is not NULL, oldest first.
SELECT id, organization_id, name, key_prefix, role, created_at, last_used_at, revoked_at
FROM api_keys
WHERE $1::text IS NULL OR organization_id = $1
ORDER BY created_at, id
LIMIT $2;

-- revoke_api_key --
-- Revoke key $1 (by id or by prefix $2); revoking twice keeps the first time.
UPDATE api_keys
SET revoked_at = coalesce(revoked_at, now())
WHERE id = $1 OR key_prefix = $2
RETURNING id, organization_id, name, key_prefix, role, created_at, last_used_at, revoked_at;

-- touch_api_key --
-- Record a use of key $1 ($2: the time); callers throttle this (once a minute a key).
UPDATE api_keys SET last_used_at = $2 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2);

-- find_step_credential --
-- The step attempt whose credential hash is $1, while the step runs it and no child run
-- of its own holds it (the unique index on credential_hash); no row otherwise.
SELECT a.organization_id, a.run_id, a.step_id, a.attempt
FROM step_attempts a
JOIN orchestration_steps s ON s.run_id = a.run_id AND s.step_id = a.step_id
WHERE a.credential_hash = $1 AND a.ended_at IS NULL
  AND s.attempt = a.attempt AND s.state = 'running' AND s.child_run_id IS NULL;
