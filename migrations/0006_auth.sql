-- 0006_auth: API keys get a role; keys are found by the hash of the whole key.
--
-- A key is `pdm_<prefix>_<secret>`: key_prefix (12 characters, shown in listings) and
-- key_hash, the hex SHA-256 of the whole key (the secret is 256 random bits, so a
-- fast hash is enough: see docs/operations.md#security). The role says what the key
-- may call (server/api/auth.py has the permission table).
ALTER TABLE api_keys
    ADD COLUMN role text NOT NULL DEFAULT 'viewer'
        CHECK (role IN ('admin', 'operator', 'viewer', 'agent'));
ALTER TABLE api_keys ALTER COLUMN role DROP DEFAULT;
CREATE UNIQUE INDEX api_keys_prefix_idx ON api_keys (key_prefix);
CREATE INDEX api_keys_organization_idx ON api_keys (organization_id, created_at);
COMMENT ON COLUMN api_keys.role IS
    'admin, operator, viewer or agent: the RPCs the key may call (docs/operations.md).';
