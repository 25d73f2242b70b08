-- start_run_take --
-- Count one StartRun of an organization into the current fixed window of $2 seconds and
-- drop its older windows. Returns the calls of this window (this one included) and the
-- seconds until the window ends.
-- $1 organization_id, $2 window seconds
WITH bounds AS (
    SELECT to_timestamp(floor(extract(epoch FROM now()) / $2) * $2) AS window_start
), gone AS (
    DELETE FROM start_run_windows w
    USING bounds b
    WHERE w.organization_id = $1 AND w.window_start < b.window_start
)
INSERT INTO start_run_windows AS w (organization_id, window_start, started)
SELECT $1, b.window_start, 1 FROM bounds b
ON CONFLICT (organization_id, window_start) DO UPDATE SET started = w.started + 1
RETURNING w.started,
          extract(epoch FROM w.window_start + make_interval(secs => $2) - now())::float8
              AS retry_after
