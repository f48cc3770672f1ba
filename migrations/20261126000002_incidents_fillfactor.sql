-- An open incident is updated by every repeat of its error (occurrences, last_seen_at).
-- Room left on each page keeps those updates heap-only (HOT): the new row version stays
-- on its page and none of the five indexes gets a new entry.
ALTER TABLE incidents SET (fillfactor = 70);
