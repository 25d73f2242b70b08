-- The step-output cache (step_cache, step_cache_flights): the engine's calls into
-- functions/70_cache.sql and InvalidateCache.

-- cache_lookup --
-- $1 organization_id, $2 cache_key, $3 run_id, $4 step_id, $5 attempt,
-- $6 created_at of the replica's in-process copy (NULL without one)
SELECT * FROM podium_cache_lookup($1, $2, $3, $4, $5, $6)

-- cache_release --
-- $1 organization_id, $2 cache_key, $3 run_id, $4 step_id, $5 attempt,
-- $6 output (NULL: nothing to store), $7 definition_name, $8 definition_version,
-- $9 ttl_seconds (NULL or 0: no expiry)
SELECT podium_cache_release($1, $2, $3, $4, $5, $6, $7, $8, $9)

-- cache_invalidate --
-- Entries of a definition (index step_cache_definition_idx).
-- $1 organization_id, $2 definition_name, $3 definition_version (0: every version)
WITH deleted AS (
    DELETE FROM step_cache
    WHERE organization_id = $1 AND definition_name = $2
      AND ($3::integer = 0 OR definition_version = $3)
    RETURNING 1
)
SELECT count(*) FROM deleted
