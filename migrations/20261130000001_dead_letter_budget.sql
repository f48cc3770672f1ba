-- What each agent has put into the dead-letter stream this hour, shared by every
-- ingestor and tracker replica: the budget is per agent, not per process. Rows of
-- past hours are deleted as an agent starts a new one.
CREATE TABLE dead_letter_budget (
    agent               TEXT NOT NULL,
    window_start        TIMESTAMPTZ NOT NULL,
    letters             BIGINT NOT NULL,
    bytes               BIGINT NOT NULL,
    PRIMARY KEY (agent, window_start)
);
