-- The idempotency ledger, partitioned so that old event ids go by dropping a whole day,
-- never by deleting rows on the hot path.
--
-- The partition key is the event's own `occurred_at`, by UTC day. Every copy of an
-- event carries the same body (the protocol has a retry re-publish the same payload
-- with the same `event_id`), so every copy lands in the partition of the first, however
-- many day boundaries later it arrives: the primary key (event_id, occurred_at) finds
-- it there. The maintenance worker creates each day's partition ahead of time and drops
-- a day once all of it is older than LEDGER_WINDOW (at least EVENTS_MAX_AGE). An event
-- dated outside the days that have a partition (older than the window, or more than a
-- few days ahead) lands in the default partition, where its copies find it too; the
-- worker prunes that partition by when its rows were ingested. A copy that arrives
-- after its day was dropped is taken as a new event (documented in the README).
--
-- The ids ingested before this migration stay in `ingested_events_legacy` (no
-- `occurred_at` to place them by); ingestion consults it until the worker has pruned
-- it empty after LEDGER_WINDOW, and then it costs one probe of an empty index.
ALTER TABLE ingested_events RENAME TO ingested_events_legacy;
ALTER TABLE ingested_events_legacy RENAME CONSTRAINT ingested_events_pkey TO ingested_events_legacy_pkey;
CREATE INDEX ingested_events_legacy_ingested_at_idx ON ingested_events_legacy (ingested_at);

CREATE TABLE ingested_events (
    event_id            UUID NOT NULL,
    occurred_at         TIMESTAMPTZ NOT NULL,
    ingested_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, occurred_at)
) PARTITION BY RANGE (occurred_at);

CREATE TABLE ingested_events_default PARTITION OF ingested_events DEFAULT;
CREATE INDEX ingested_events_default_ingested_at_idx ON ingested_events_default (ingested_at);

-- Creates the partition of one UTC day unless it exists; rows the default partition
-- holds for that day (events dated ahead of the partitions) move into it first, since
-- a default partition may not hold rows of an attached range. Returns whether it created.
--
-- Autovacuum: a day's partition is insert-only (one row per event at the ingest rate,
-- then dropped whole), so it never needs vacuuming for dead rows; the insert threshold
-- (5% of the partition) keeps its visibility map current for index-only duplicate
-- checks and freezes pages while they are still in cache, instead of an
-- anti-wraparound vacuum of the whole day later.
CREATE FUNCTION ledger_ensure_partition(day DATE) RETURNS BOOLEAN LANGUAGE plpgsql AS $$
DECLARE
    part TEXT := 'ingested_events_' || to_char(day, 'YYYYMMDD');
    low TIMESTAMPTZ := day::timestamp AT TIME ZONE 'UTC';
    high TIMESTAMPTZ := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF to_regclass(part) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE ingested_events INCLUDING DEFAULTS)', part);
    EXECUTE format('ALTER TABLE %I SET (autovacuum_vacuum_insert_scale_factor = 0.05)', part);
    EXECUTE format(
        'WITH moved AS (DELETE FROM ingested_events_default WHERE occurred_at >= %L AND occurred_at < %L RETURNING *)
         INSERT INTO %I SELECT * FROM moved', low, high, part);
    EXECUTE format('ALTER TABLE ingested_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', part, low, high);
    RETURN true;
END
$$;

SELECT ledger_ensure_partition((now() AT TIME ZONE 'UTC')::date + d) FROM generate_series(-1, 3) AS d;
