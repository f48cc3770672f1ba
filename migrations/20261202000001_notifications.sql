-- Notification targets (webhooks and Slack incoming webhooks) and every delivery to
-- them. The ai-analyzer routes the change feed into `notification_deliveries` (one row
-- per target and notification: the unique key is what keeps two replicas, or a
-- redelivered message, from notifying twice) and every replica sends due rows it
-- claims; the gateway manages targets and shows deliveries to admins.
CREATE TABLE notification_targets (
    id                  UUID PRIMARY KEY,
    name                TEXT NOT NULL UNIQUE,
    kind                TEXT NOT NULL CHECK (kind IN ('webhook', 'slack')),
    -- A Slack incoming-webhook URL is itself a credential: never returned in full.
    url                 TEXT NOT NULL,
    -- The HMAC key of a webhook's signatures; never returned after creation.
    secret              TEXT,
    -- Which notifications: 'incident' (new incidents at or above min_severity, and
    -- critical ones), 'offline' (agents going offline), 'action_failed'.
    events              TEXT[] NOT NULL,
    min_severity        TEXT NOT NULL CHECK (min_severity IN ('info', 'warning', 'error', 'critical')),
    -- Incident kinds notified; empty means every kind.
    kinds               TEXT[] NOT NULL DEFAULT '{}',
    -- Posts a minute before further notifications are folded into a digest.
    rate_per_minute     INTEGER NOT NULL CHECK (rate_per_minute BETWEEN 1 AND 600),
    enabled             BOOLEAN NOT NULL DEFAULT true,
    -- 'env' targets are written by the analyzer from its environment at startup and
    -- are read-only through the API.
    source              TEXT NOT NULL DEFAULT 'api' CHECK (source IN ('api', 'env')),
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE notification_deliveries (
    id                  BIGSERIAL PRIMARY KEY,
    target_id           UUID NOT NULL REFERENCES notification_targets (id) ON DELETE CASCADE,
    -- What is notified, e.g. 'incident:42', 'offline:{agent}:{changed_at}',
    -- 'action:{request_id}', 'digest:{uuid}'.
    dedup_key           TEXT NOT NULL,
    -- 'incident', 'offline', 'action_failed', 'digest' or 'test'.
    event               TEXT NOT NULL,
    agent_id            TEXT,
    -- One line, what a digest lists.
    summary             TEXT NOT NULL,
    payload             JSONB NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('pending', 'sending', 'delivered', 'failed', 'digested')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- While 'sending': when another replica may take the row over.
    lease_until         TIMESTAMPTZ,
    -- When the first attempt was claimed: what the per-minute rate counts.
    sent_at             TIMESTAMPTZ,
    delivered_at        TIMESTAMPTZ,
    response_status     INTEGER,
    last_error          TEXT,
    -- A digest: how many notifications it carries.
    digest_count        INTEGER,
    -- A notification folded into a digest: that digest.
    digest_id           BIGINT REFERENCES notification_deliveries (id) ON DELETE SET NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (target_id, dedup_key)
);

CREATE INDEX notification_deliveries_due ON notification_deliveries (target_id, next_attempt_at)
    WHERE status IN ('pending', 'sending');
CREATE INDEX notification_deliveries_sent ON notification_deliveries (target_id, sent_at)
    WHERE sent_at IS NOT NULL;
CREATE INDEX notification_deliveries_created ON notification_deliveries (created_at);
