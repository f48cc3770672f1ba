-- Fleet-wide actions (POST /api/v1/actions): one command to many agents.
--
-- The targets are resolved when the action is submitted and stored, one row per agent,
-- so a run is reproducible and its progress is the rows with an outcome. The gateway
-- replica running an action beats `heartbeat_at`; a `running` action whose heartbeat
-- stopped is marked `unfinished` (its recorded outcomes stay, the rest stay pending):
-- never reported as done when it was not.
CREATE TABLE fleet_actions (
    id                  UUID PRIMARY KEY,
    command             TEXT NOT NULL,
    params              JSONB NOT NULL,
    -- The target as submitted: {"agent_ids": [...]}, {"selector": "..."} or
    -- {"hostname_prefix": "..."}.
    target              JSONB NOT NULL,
    requested_by        TEXT NOT NULL,
    max_concurrency     INTEGER NOT NULL CHECK (max_concurrency > 0),
    timeout_ms          INTEGER NOT NULL CHECK (timeout_ms > 0),
    total               INTEGER NOT NULL,
    state               TEXT NOT NULL DEFAULT 'running'
                        CHECK (state IN ('running', 'finished', 'cancelled', 'unfinished')),
    cancel_requested_at TIMESTAMPTZ,
    cancelled_by        TEXT,
    heartbeat_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at         TIMESTAMPTZ
);
CREATE INDEX fleet_actions_created_idx ON fleet_actions (created_at DESC, id DESC);
CREATE INDEX fleet_actions_running_idx ON fleet_actions (heartbeat_at) WHERE state = 'running';

CREATE TABLE fleet_action_targets (
    action_id   UUID NOT NULL REFERENCES fleet_actions (id) ON DELETE CASCADE,
    agent_id    TEXT NOT NULL,
    hostname    TEXT NOT NULL,
    -- The audit row of this agent's request.
    request_id  UUID NOT NULL UNIQUE,
    -- NULL while pending.
    outcome     TEXT CHECK (outcome IN ('ok', 'error', 'timeout', 'skipped', 'cancelled')),
    reply       JSONB,
    duration_ms INTEGER,
    finished_at TIMESTAMPTZ,
    PRIMARY KEY (action_id, agent_id)
);

-- A fleet action's per-agent audit rows carry its id.
ALTER TABLE audit_log ADD COLUMN action_id UUID;
CREATE INDEX audit_log_action_idx ON audit_log (action_id) WHERE action_id IS NOT NULL;
