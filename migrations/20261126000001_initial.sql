-- OpsPilot schema, version 1.
--
-- The seed design's three tables (agents, incidents, agents_inventory) keep their
-- names and columns; everything else is an extension. Migrations are never edited
-- after they ship: a change is a new file.

-- Agents: one row per enrolled agent; presence is mirrored here from Redis.
CREATE TABLE agents (
    id                  TEXT PRIMARY KEY CHECK (id ~ '^[0-9a-f]{12}$'),
    hostname            TEXT NOT NULL DEFAULT '',
    status              TEXT NOT NULL DEFAULT 'offline' CHECK (status IN ('online', 'offline')),
    last_seen_at        TIMESTAMPTZ,
    meta                JSONB NOT NULL DEFAULT '{}'::jsonb,
    -- presence: when the current status began
    status_changed_at   TIMESTAMPTZ,
    -- enrollment: SHA-256 of the machine fingerprint makes re-enrollment idempotent
    machine_fingerprint TEXT UNIQUE,
    enrolled_at         TIMESTAMPTZ,
    revoked_at          TIMESTAMPTZ,
    -- latest inventory snapshot, to decide whether a new one is a change
    inventory_hash      TEXT,
    inventory_at        TIMESTAMPTZ,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now()
) WITH (fillfactor = 80);  -- room for HOT updates (last_seen flushes, presence)
CREATE INDEX agents_status_id_idx ON agents (status, id);
CREATE INDEX agents_hostname_prefix_idx ON agents (hostname text_pattern_ops, id);

-- Incidents: what events become. One open incident per dedup_key (the event's
-- fingerprint when de-duplication is on, its event id when off).
CREATE TABLE incidents (
    id                  BIGSERIAL PRIMARY KEY,
    agent_id            TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    type                TEXT NOT NULL,
    source              TEXT NOT NULL DEFAULT '',
    raw_error           TEXT NOT NULL DEFAULT '',
    context             JSONB NOT NULL DEFAULT '{}'::jsonb,
    is_critical         BOOLEAN NOT NULL DEFAULT false,
    status              TEXT NOT NULL DEFAULT 'new'
                        CHECK (status IN ('new', 'analyzed', 'acknowledged', 'resolved')),
    ai_analysis         TEXT,
    suggested_action    JSONB,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- extensions
    severity            TEXT NOT NULL DEFAULT 'error'
                        CHECK (severity IN ('info', 'warning', 'error', 'critical')),
    event_id            UUID NOT NULL UNIQUE,
    fingerprint         TEXT NOT NULL,
    dedup_key           TEXT NOT NULL,
    occurrences         BIGINT NOT NULL DEFAULT 1 CHECK (occurrences > 0),
    first_seen_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    analysis_status     TEXT NOT NULL DEFAULT 'none'
                        CHECK (analysis_status IN ('none', 'ok', 'failed')),
    analysis_error      TEXT,
    analyzer            TEXT,
    analyzer_model      TEXT,
    analyzed_at         TIMESTAMPTZ,
    dropped_action      JSONB,
    action_result       JSONB,
    action_executed_at  TIMESTAMPTZ,
    acknowledged_at     TIMESTAMPTZ,
    acknowledged_by     TEXT,
    resolved_at         TIMESTAMPTZ,
    resolved_by         TEXT,
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now()
) WITH (fillfactor = 70);  -- occurrence counts are updated in place (HOT) under load
CREATE UNIQUE INDEX incidents_open_dedup_key_uq ON incidents (dedup_key) WHERE status <> 'resolved';
CREATE INDEX incidents_agent_idx ON incidents (agent_id, id DESC);
CREATE INDEX incidents_agent_status_idx ON incidents (agent_id, status, id DESC);
CREATE INDEX incidents_fingerprint_idx ON incidents (fingerprint);

-- Every event id ever ingested: the idempotency ledger that makes redelivery harmless
-- even when the event only raised an existing incident's count.
-- Deliberately narrow: it is written once per event on the hottest path.
CREATE TABLE ingested_events (
    event_id            UUID PRIMARY KEY,
    ingested_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Inventory history: a row only when the snapshot's hash changes.
CREATE TABLE agents_inventory (
    id                  BIGSERIAL PRIMARY KEY,
    agent_id            TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    hash                TEXT NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),
    data                JSONB NOT NULL,
    collected_at        TIMESTAMPTZ NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX agents_inventory_agent_idx ON agents_inventory (agent_id, id DESC);

-- Presence history: one row per online/offline transition.
CREATE TABLE presence_transitions (
    id                  BIGSERIAL PRIMARY KEY,
    agent_id            TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    state               TEXT NOT NULL CHECK (state IN ('online', 'offline')),
    changed_at          TIMESTAMPTZ NOT NULL,
    last_seen_at        TIMESTAMPTZ,
    threshold_secs      INTEGER NOT NULL,
    reason              TEXT NOT NULL
);
CREATE INDEX presence_transitions_agent_idx ON presence_transitions (agent_id, changed_at DESC, id DESC);

-- Operators.
CREATE TABLE users (
    id                  UUID PRIMARY KEY,
    email               TEXT NOT NULL,
    password_hash       TEXT NOT NULL,
    role                TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    disabled            BOOLEAN NOT NULL DEFAULT false,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_login_at       TIMESTAMPTZ
);
CREATE UNIQUE INDEX users_email_uq ON users (lower(email));

-- Enrollment (bootstrap) tokens; only a hash of the token is stored.
CREATE TABLE enrollment_tokens (
    id                  UUID PRIMARY KEY,
    name                TEXT NOT NULL,
    token_hash          TEXT NOT NULL UNIQUE,
    created_by          UUID REFERENCES users (id) ON DELETE SET NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at          TIMESTAMPTZ NOT NULL,
    max_uses            INTEGER CHECK (max_uses IS NULL OR max_uses > 0),
    use_count           INTEGER NOT NULL DEFAULT 0,
    last_used_at        TIMESTAMPTZ,
    revoked_at          TIMESTAMPTZ
);

-- Every action sent to an agent, written before the request goes out and completed
-- with its outcome.
CREATE TABLE audit_log (
    id                  BIGSERIAL PRIMARY KEY,
    request_id          UUID NOT NULL UNIQUE,
    actor               TEXT NOT NULL,
    action              TEXT NOT NULL,
    agent_id            TEXT,
    incident_id         BIGINT,
    command             TEXT,
    params              JSONB,
    outcome             TEXT NOT NULL DEFAULT 'pending',
    result              JSONB,
    started_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at         TIMESTAMPTZ,
    duration_ms         BIGINT
);
CREATE INDEX audit_log_agent_idx ON audit_log (agent_id, id DESC);
CREATE INDEX audit_log_started_idx ON audit_log (id DESC);

-- NATS credentials issued to agents (one row per user key); revoking an agent revokes
-- every key it was issued, and the account's revocation list is built from here.
CREATE TABLE agent_credentials (
    user_public_key     TEXT PRIMARY KEY,
    agent_id            TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    issued_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at          TIMESTAMPTZ NOT NULL,
    revoked_at          TIMESTAMPTZ
);
CREATE INDEX agent_credentials_agent_idx ON agent_credentials (agent_id);
CREATE INDEX agent_credentials_revoked_idx ON agent_credentials (revoked_at) WHERE revoked_at IS NOT NULL;
