-- Every SQL statement of the storage layer, each under a "-- name --" header.
-- server/storage/queries.py splits this file; code uses QUERIES["name"].
-- Placeholders are $1, $2, ... (asyncpg); never build SQL from strings.

-- ping --
SELECT 1

-- create_schema_migrations --
-- Run by the migrator before anything else (under its advisory lock); the migrations
-- never create it. Multi-statement: execute it without arguments.
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE schema_migrations IS
    'Applied migrations (migrations/NNNN_name.sql), with the SHA-256 of each file.';

-- upgrade_schema_bookkeeping --
-- The migrator's own columns, added after its tables were first made (idempotent, under
-- its lock): whether an applied migration is an expand step that older code runs
-- beside, and which Podium version applied each function file. Multi-statement.
ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS expand boolean NOT NULL DEFAULT false;
ALTER TABLE schema_functions ADD COLUMN IF NOT EXISTS podium_version text;

-- schema_migrations_exists --
SELECT to_regclass('schema_migrations') IS NOT NULL

-- list_applied_migrations --
-- `expand` through to_jsonb: a database whose bookkeeping predates the column reads too.
SELECT version, name, checksum, applied_at,
       coalesce((to_jsonb(m) ->> 'expand')::boolean, false) AS expand
FROM schema_migrations m
ORDER BY version

-- record_migration --
-- $1 version, $2 name, $3 checksum, $4 expand step
INSERT INTO schema_migrations (version, name, checksum, expand) VALUES ($1, $2, $3, $4)

-- create_schema_functions --
-- Run by the migrator after the migrations (under its advisory lock). One row per
-- function file (server/storage/functions/NN_area.sql, name without .sql).
CREATE TABLE IF NOT EXISTS schema_functions (
    name        text PRIMARY KEY,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE schema_functions IS
    'Applied function files (server/storage/functions/NN_area.sql), with the SHA-256 of '
    'each; a file is applied again when it changes.';

-- schema_functions_exists --
SELECT to_regclass('schema_functions') IS NOT NULL

-- list_applied_function_files --
SELECT name, checksum, applied_at, to_jsonb(f) ->> 'podium_version' AS podium_version
FROM schema_functions f
ORDER BY name

-- record_function_file --
-- $1: name, $2: checksum, $3: the Podium version applying it
INSERT INTO schema_functions (name, checksum, podium_version) VALUES ($1, $2, $3)
ON CONFLICT (name) DO UPDATE
SET checksum = excluded.checksum, podium_version = excluded.podium_version, applied_at = now()

-- forget_function_files --
-- Rows of function files that no longer exist. $1: names
DELETE FROM schema_functions WHERE name = ANY ($1::text[])

-- migration_try_lock --
SELECT pg_try_advisory_lock($1)

-- migration_lock --
-- Session-level lock held on the migrator's own connection for the whole migrate call.
SELECT pg_advisory_lock($1)

-- lock_definition_name --
-- Serializes writers of one definition name until the transaction ends. The two-key
-- form lives in a separate key space from the migrator's single bigint key.
-- $1: organization_id, $2: name
SELECT pg_advisory_xact_lock(1684366694, hashtext($1 || chr(31) || $2))

-- create_definition --
-- Next version of a name; returns no row when the name is archived.
-- Run after lock_definition_name in the same transaction.
-- $1: organization_id, $2: name, $3: description, $4: spec, $5: content_hash
WITH latest AS (
    SELECT version, archived
    FROM orchestration_definitions
    WHERE organization_id = $1 AND name = $2
    ORDER BY version DESC
    LIMIT 1
)
INSERT INTO orchestration_definitions
    (organization_id, name, version, description, spec, content_hash)
SELECT $1, $2, coalesce((SELECT version FROM latest), 0) + 1, $3, $4, $5
WHERE NOT coalesce((SELECT archived FROM latest), false)
RETURNING organization_id, name, version, description, spec, content_hash, archived,
          created_at

-- get_latest_definition --
-- $1: organization_id, $2: name
SELECT organization_id, name, version, description, spec, content_hash, archived,
       created_at
FROM orchestration_definitions
WHERE organization_id = $1 AND name = $2
ORDER BY version DESC
LIMIT 1

-- latest_definition_head --
-- $1: organization_id, $2: name. What CreateDefinition compares (not the spec, which
-- may be a 10,000-step document).
SELECT version, content_hash, archived
FROM orchestration_definitions
WHERE organization_id = $1 AND name = $2
ORDER BY version DESC
LIMIT 1

-- get_definition_version --
-- $1: organization_id, $2: name, $3: version
SELECT organization_id, name, version, description, spec, content_hash, archived,
       created_at
FROM orchestration_definitions
WHERE organization_id = $1 AND name = $2 AND version = $3

-- list_latest_definitions --
-- Latest version of each name, by name; keyset paging on name.
-- starts_with() takes the prefix literally (no LIKE wildcards to escape). Archiving
-- marks every version, so filtering before DISTINCT ON keeps "latest" correct.
-- $1: organization_id, $2: after_name (null: first page), $3: name_prefix (null: all),
-- $4: include_archived, $5: limit
SELECT DISTINCT ON (name)
       organization_id, name, version, description, spec, content_hash, archived,
       created_at
FROM orchestration_definitions
WHERE organization_id = $1
  AND ($2::text IS NULL OR name > $2::text)
  AND ($3::text IS NULL OR starts_with(name, $3::text))
  AND ($4::boolean OR NOT archived)
ORDER BY name, version DESC
LIMIT $5

-- archive_definition --
-- Archives every version of a name and returns the latest (no row: unknown name).
-- Run after lock_definition_name in the same transaction.
-- $1: organization_id, $2: name
WITH archived AS (
    UPDATE orchestration_definitions
    SET archived = true
    WHERE organization_id = $1 AND name = $2
    RETURNING organization_id, name, version, description, spec, content_hash, archived,
              created_at
)
SELECT organization_id, name, version, description, spec, content_hash, archived, created_at
FROM archived
ORDER BY version DESC
LIMIT 1
