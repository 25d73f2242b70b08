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
