-- Timers and external events: the SQL functions of functions/80_events_in.sql.

-- sleep_step --
-- A claimed sleep step: 'due', 'waiting' (parked until wake_at) or 'stale'.
SELECT status, wake_at FROM podium_sleep_step($1, $2, $3, $4, $5, $6)

-- wait_event --
-- A claimed wait_for_event step: 'received' (with the event), 'timeout', 'waiting' or
-- 'stale'.
SELECT status, event FROM podium_wait_event($1, $2, $3, $4, $5, $6, $7, $8)

-- send_event --
-- SendEvent: keep the event, deliver it to the waiting steps (idempotent by id).
SELECT duplicate, delivered, expires_at FROM podium_send_event($1, $2, $3, $4, $5, $6)

-- trigger_definitions --
-- The latest, unarchived version of each definition of organization $1 with an event
-- trigger on event name $2: name, version and its triggers.
SELECT l.name, l.version, l.spec -> 'triggers' AS triggers
FROM (
    SELECT DISTINCT ON (d.name) d.name, d.version, d.archived, d.spec
    FROM orchestration_definitions d
    WHERE d.organization_id = $1
      AND d.name IN (SELECT t.name FROM orchestration_definitions t
                      WHERE t.organization_id = $1
                        AND t.spec @> jsonb_build_object('triggers', jsonb_build_array(
                                          jsonb_build_object('event_name', $2::text))))
    ORDER BY d.name, d.version DESC
) l
WHERE NOT l.archived
  AND l.spec @> jsonb_build_object('triggers', jsonb_build_array(
                    jsonb_build_object('event_name', $2::text)))
ORDER BY l.name
