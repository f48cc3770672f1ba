-- Fleet reads leave out revoked agents' incidents. Few agents are ever revoked, so a
-- partial index of them is tiny: checking a row against it costs one probe of a
-- one-page index (or one hash of it for a count), where a check against every live
-- agent probed the whole agents key.
CREATE INDEX agents_revoked_idx ON agents (id) WHERE revoked_at IS NOT NULL;
