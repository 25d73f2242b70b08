-- 0016_claim: the replicas that watch an organization's events (functions/10_events.sql).
-- podium: expand
--
-- A NOTIFY makes its transaction take a lock of the whole database at commit, one
-- transaction at a time, so the state machine sends NOTIFY podium_events only for an
-- organization some replica watches (WatchRun or WatchRuns): each replica's event hub
-- keeps one row per organization its watchers belong to, refreshed by its fallback poll
-- until expires_at, and removes it when the last watcher leaves.
CREATE TABLE event_listeners (
    organization_id  text NOT NULL,
    replica          text NOT NULL,
    expires_at       timestamptz NOT NULL,
    PRIMARY KEY (organization_id, replica)
);
COMMENT ON TABLE event_listeners IS
    'Replicas with WatchRun/WatchRuns watchers of an organization: NOTIFY podium_events '
    'is sent only for those organizations (rows past expires_at are ignored).';
