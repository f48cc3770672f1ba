-- The fleet-wide incident list (GET /api/v1/incidents): newest first under any single
-- filter, and a text search over source and raw_error.
--
-- None of these indexes holds a column an occurrence update changes (occurrences,
-- last_seen_at, updated_at), so those updates stay heap-only (HOT). Sorting by last
-- occurrence is therefore not indexed: it sorts the rows the filter keeps.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE INDEX incidents_status_id_idx ON incidents (status, id DESC);
CREATE INDEX incidents_severity_id_idx ON incidents (severity, id DESC);
CREATE INDEX incidents_type_id_idx ON incidents (type, id DESC);
CREATE INDEX incidents_critical_id_idx ON incidents (id DESC) WHERE is_critical;
CREATE INDEX incidents_created_at_idx ON incidents (created_at);
CREATE INDEX incidents_text_trgm_idx ON incidents USING gin ((source || ' ' || raw_error) gin_trgm_ops);
