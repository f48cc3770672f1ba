-- Agent labels, for label selectors (the agent list, fleet-wide actions).
--
-- An agent's labels are the valid labels among its latest inventory's `meta`
-- (`meta_labels`, written with `meta` by the ingestor, which filters them with the same
-- rules the API checks selectors with) and the labels operators set (`labels`), which
-- win on conflict: `||` keeps the right side's value for a key both have.
ALTER TABLE agents
    ADD COLUMN meta_labels JSONB NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN labels      JSONB NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN effective_labels JSONB GENERATED ALWAYS AS (meta_labels || labels) STORED;

-- Existing agents: their meta's string, number and boolean entries whose key and value
-- have the shape of a label. The next inventory snapshot rewrites this exactly.
UPDATE agents SET meta_labels = COALESCE((
    SELECT jsonb_object_agg(key, value #>> '{}')
    FROM jsonb_each(agents.meta)
    WHERE jsonb_typeof(value) IN ('string', 'number', 'boolean')
      AND key ~ '^([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$'
      AND (value #>> '{}') ~ '^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$'
), '{}'::jsonb)
WHERE meta <> '{}'::jsonb;

-- Equality, `in` (containment) and existence are answered from this index.
CREATE INDEX agents_effective_labels_idx ON agents USING gin (effective_labels);
