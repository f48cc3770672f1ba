-- Retention: what the maintenance worker (event-ingestor) ranges over when it prunes,
-- a small batch at a time, oldest first. Each index matches one retention's cutoff.
CREATE INDEX IF NOT EXISTS incidents_resolved_at_idx ON incidents (resolved_at) WHERE status = 'resolved';
CREATE INDEX IF NOT EXISTS presence_transitions_changed_at_idx ON presence_transitions (changed_at);
CREATE INDEX IF NOT EXISTS agents_inventory_created_at_idx ON agents_inventory (created_at);
-- Pruned by age; the old (id DESC) index only repeated the primary key.
CREATE INDEX IF NOT EXISTS audit_log_started_at_idx ON audit_log (started_at);
DROP INDEX IF EXISTS audit_log_started_idx;

-- incidents is the hottest updated table: every recurrence of an open incident updates
-- its row (occurrences, last_seen_at), so dead tuples accumulate at the ingest rate, and
-- retention deletes in batches on top. Autovacuum's defaults wait for 20% of the table
-- to be dead before vacuuming (at 10 million incidents, 2 million dead rows that every
-- scan of the fleet list steps over) and 10% changed before analyzing. Vacuum it when 2%
-- (plus 1,000 rows) is dead and analyze at 1%, without the cost delay's default pauses
-- holding a vacuum back behind a busy ingest; the fill factor leaves room on each page
-- so a recurrence's update stays on the page (HOT: no index entries written for it).
ALTER TABLE incidents SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.01,
    autovacuum_vacuum_cost_delay = 1,
    fillfactor = 85
);
