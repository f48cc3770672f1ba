-- Agent identity that cannot be taken over, bus credentials that can be withdrawn,
-- access tokens that end when an account changes.

-- An agent is who holds its key, not which fingerprint it claims: `identity_key` is
-- the NKey on record (the public key of the credentials issued last), and
-- re-enrollment must prove possession of it. A fingerprint may now name more than
-- one agent (an administrator split a cloned machine), so it is indexed, not unique.
ALTER TABLE agents DROP CONSTRAINT IF EXISTS agents_machine_fingerprint_key;
CREATE INDEX agents_machine_fingerprint_idx ON agents (machine_fingerprint);
ALTER TABLE agents ADD COLUMN identity_key TEXT;
UPDATE agents a SET identity_key = c.user_public_key
FROM (
    SELECT DISTINCT ON (agent_id) agent_id, user_public_key
    FROM agent_credentials
    WHERE revoked_at IS NULL
    ORDER BY agent_id, issued_at DESC
) c
WHERE c.agent_id = a.id;
CREATE UNIQUE INDEX agents_identity_key_uq ON agents (identity_key);

-- Every credential the bus was given, services' too (`identity` names whose), so one
-- revocation list covers them all. A purged agent's revoked keys stay revoked until
-- they expire: the rows outlive the agent.
ALTER TABLE agent_credentials ALTER COLUMN agent_id DROP NOT NULL;
ALTER TABLE agent_credentials ADD COLUMN identity TEXT NOT NULL DEFAULT 'agent';
ALTER TABLE agent_credentials DROP CONSTRAINT IF EXISTS agent_credentials_agent_id_fkey;
ALTER TABLE agent_credentials
    ADD CONSTRAINT agent_credentials_agent_id_fkey
    FOREIGN KEY (agent_id) REFERENCES agents (id) ON DELETE SET NULL;

-- A machine whose fingerprint is enrolled came back with a key that is not on record
-- and no proof: a reinstalled host, a cloned image, or someone who learned the
-- fingerprint. An administrator decides: `moved` gives the agent to the new key (the
-- old keys are revoked), `split` makes a new agent for it, `rejected` refuses it.
CREATE TABLE identity_conflicts (
    id                  BIGSERIAL PRIMARY KEY,
    agent_id            TEXT REFERENCES agents (id) ON DELETE CASCADE,
    machine_fingerprint TEXT NOT NULL,
    public_key          TEXT NOT NULL,
    hostname            TEXT NOT NULL,
    source_ip           TEXT NOT NULL,
    attempts            INTEGER NOT NULL DEFAULT 1,
    status              TEXT NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'moved', 'split', 'rejected')),
    resolved_agent_id   TEXT,
    resolved_by         TEXT,
    resolved_at         TIMESTAMPTZ,
    first_seen_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX identity_conflicts_pending_uq
    ON identity_conflicts (machine_fingerprint, public_key) WHERE status = 'pending';
CREATE INDEX identity_conflicts_status_idx ON identity_conflicts (status, id DESC);

-- Access tokens carry the version they were issued at; a password change, a role
-- change or disabling the account moves it on, and every older token stops working.
ALTER TABLE users ADD COLUMN token_version INTEGER NOT NULL DEFAULT 1;
