//! Presence: the durable record of who is online, the transition history, and the
//! `agent_offline` incidents.
//!
//! Postgres is the arbiter of transitions. [`apply_transitions`] changes an agent's
//! status only where it differs (`... WHERE status <> $state`), locking the rows in id
//! order first, so when several tracker replicas try the same transition exactly one
//! of them changes the row, and only that one writes the history row and the incident
//! (in the same statement) and announces the change.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use wire_models::{AgentId, PresenceState};

use crate::StorageError;

/// A transition the tracker believes happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub agent_id: AgentId,
    /// When the new state began: the heartbeat's arrival for `online`, the missed
    /// deadline for `offline`. Never earlier than the agent's current `status_changed_at`.
    pub changed_at: DateTime<Utc>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub threshold_secs: u32,
    /// `heartbeat`, `timeout` or `key_expired`.
    pub reason: String,
}

/// A transition this call made (no other caller made it first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedTransition {
    /// The `presence_transitions` row.
    pub id: i64,
    pub agent_id: AgentId,
    pub state: PresenceState,
    pub changed_at: DateTime<Utc>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub threshold_secs: u32,
    pub reason: String,
    /// The `agent_offline` incident opened (offline) or resolved (online), if any.
    pub incident_id: Option<i64>,
}

/// An agent's presence as Postgres holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPresence {
    pub agent_id: AgentId,
    pub state: PresenceState,
    /// When the current state began (`None` until the first transition).
    pub since: Option<DateTime<Utc>>,
    pub last_seen_at: Option<DateTime<Utc>>,
    /// The threshold of the latest transition, if there was one.
    pub threshold_secs: Option<u32>,
}

/// What [`apply_transitions`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TransitionOutcome {
    /// Transitions this call made.
    pub applied: Vec<AppliedTransition>,
    /// Agents already in the requested state, as they are now.
    pub unchanged: Vec<StoredPresence>,
    /// Agents Postgres does not have (deleted since they were heard from).
    pub missing: Vec<AgentId>,
}

/// Options of [`apply_transitions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransitionOptions {
    /// Open a critical `agent_offline` incident when an agent goes offline. Coming back
    /// online resolves an open one either way, so switching this off leaves none open.
    pub offline_incidents: bool,
}

impl Default for TransitionOptions {
    fn default() -> Self {
        Self { offline_incidents: true }
    }
}

/// The one statement that moves agents to `state`: lock the rows not in it yet (in id
/// order, so concurrent callers cannot deadlock), update them, record each change in
/// `presence_transitions`, then run `incident`, a CTE named `incident_cte` over the
/// changed rows that opens or resolves the agent's offline incident.
fn transition_sql(state: &str, incident_cte: &str, incident: &str) -> String {
    format!(
        r#"
WITH input AS (
    SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[], $4::int[], $5::text[], $6::text[])
        AS t(id, changed_at, last_seen_at, threshold_secs, reason, fingerprint)
),
locked AS MATERIALIZED (
    SELECT a.id FROM agents a JOIN input i ON i.id = a.id
    WHERE a.status <> '{state}'
    ORDER BY a.id
    FOR UPDATE OF a
),
changed AS (
    UPDATE agents a
    SET status = '{state}',
        status_changed_at = GREATEST(i.changed_at, a.status_changed_at),
        last_seen_at = GREATEST(a.last_seen_at, i.last_seen_at),
        updated_at = now()
    FROM input i, locked l
    WHERE a.id = i.id AND a.id = l.id AND a.status <> '{state}'
    RETURNING a.id, a.status_changed_at AS changed_at, a.last_seen_at, i.threshold_secs, i.reason, i.fingerprint
),
history AS (
    INSERT INTO presence_transitions (agent_id, state, changed_at, last_seen_at, threshold_secs, reason)
    SELECT id, '{state}', changed_at, last_seen_at, threshold_secs, reason FROM changed
    RETURNING id, agent_id
),
{incident}
SELECT c.id AS agent_id, c.changed_at, c.last_seen_at, c.threshold_secs, c.reason, h.id AS transition_id,
       x.id AS incident_id
FROM changed c
JOIN history h ON h.agent_id = c.id
LEFT JOIN {incident_cte} x ON x.agent_id = c.id
ORDER BY c.id
"#
    )
}

static GO_OFFLINE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    transition_sql("offline", "opened", &crate::incidents::open_offline_cte("changed", "$7"))
});

static GO_ONLINE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    transition_sql("online", "resolved", &crate::incidents::resolve_offline_cte("changed"))
});

#[derive(sqlx::FromRow)]
struct AppliedRow {
    agent_id: String,
    changed_at: DateTime<Utc>,
    last_seen_at: Option<DateTime<Utc>>,
    threshold_secs: i32,
    reason: String,
    transition_id: i64,
    incident_id: Option<i64>,
}

/// Moves agents to `state` where they are not in it yet, in one statement: the status
/// (and `status_changed_at`, `last_seen_at`), one `presence_transitions` row per change,
/// and the `agent_offline` incident (opened on offline when enabled, resolved on online).
///
/// Exactly once across replicas: the agents' rows are locked in id order (so concurrent
/// calls neither deadlock nor both see the old status) and only rows whose status
/// differs change. Agents already in `state` come back in
/// [`TransitionOutcome::unchanged`] with their stored presence.
pub async fn apply_transitions(
    pool: &PgPool,
    state: PresenceState,
    transitions: &[Transition],
    options: TransitionOptions,
) -> Result<TransitionOutcome, StorageError> {
    if transitions.is_empty() {
        return Ok(TransitionOutcome::default());
    }
    // One row per agent: the UPDATE must not see an agent twice.
    let mut seen = std::collections::HashSet::with_capacity(transitions.len());
    let transitions: Vec<&Transition> = transitions.iter().filter(|t| seen.insert(&t.agent_id)).collect();

    let ids: Vec<&str> = transitions.iter().map(|t| t.agent_id.as_str()).collect();
    let changed_at: Vec<DateTime<Utc>> = transitions.iter().map(|t| t.changed_at).collect();
    let last_seen: Vec<Option<DateTime<Utc>>> = transitions.iter().map(|t| t.last_seen_at).collect();
    let thresholds: Vec<i32> =
        transitions.iter().map(|t| i32::try_from(t.threshold_secs).unwrap_or(i32::MAX)).collect();
    let reasons: Vec<&str> = transitions.iter().map(|t| t.reason.as_str()).collect();
    let fingerprints: Vec<String> =
        transitions.iter().map(|t| crate::incidents::offline_fingerprint(&t.agent_id)).collect();

    let query = match state {
        PresenceState::Offline => sqlx::query_as(sqlx::AssertSqlSafe(GO_OFFLINE.as_str())),
        PresenceState::Online => sqlx::query_as(sqlx::AssertSqlSafe(GO_ONLINE.as_str())),
    }
    // Planned for each call's arrays: a prepared statement falls back to a generic plan
    // after five calls, which guesses one row per array and joins `changed` to `history`
    // by nested loop, quadratic in the batch (5 s for 5,000 agents where the custom
    // plan takes well under one).
    .persistent(false)
    .bind(&ids)
    .bind(&changed_at)
    .bind(&last_seen)
    .bind(&thresholds)
    .bind(&reasons)
    .bind(&fingerprints);
    let query = match state {
        PresenceState::Offline => query.bind(options.offline_incidents),
        PresenceState::Online => query,
    };
    let rows: Vec<AppliedRow> = query.fetch_all(pool).await?;

    let mut outcome = TransitionOutcome::default();
    for row in rows {
        let Ok(agent_id) = AgentId::parse(&row.agent_id) else { continue };
        outcome.applied.push(AppliedTransition {
            id: row.transition_id,
            agent_id,
            state,
            changed_at: row.changed_at,
            last_seen_at: row.last_seen_at,
            threshold_secs: u32::try_from(row.threshold_secs).unwrap_or(0),
            reason: row.reason,
            incident_id: row.incident_id,
        });
    }
    if outcome.applied.len() < transitions.len() {
        let applied: std::collections::HashSet<&AgentId> =
            outcome.applied.iter().map(|a| &a.agent_id).collect();
        let rest: Vec<AgentId> =
            transitions.iter().map(|t| &t.agent_id).filter(|id| !applied.contains(id)).cloned().collect();
        let stored = current(pool, &rest).await?;
        let found: std::collections::HashSet<&AgentId> = stored.iter().map(|s| &s.agent_id).collect();
        outcome.missing = rest.iter().filter(|id| !found.contains(id)).cloned().collect();
        outcome.unchanged = stored;
    }
    Ok(outcome)
}

/// Raises `last_seen_at` of many agents in one statement per 10,000 (never lowers it).
/// Rows are locked in id order, like transitions, so a flush and a transition never
/// deadlock; a row already at or past the given time is not written at all, so a
/// second replica flushing the same heartbeats costs a read. Returns the rows updated.
pub async fn flush_last_seen(pool: &PgPool, seen: &[(AgentId, DateTime<Utc>)]) -> Result<u64, StorageError> {
    // Newest time per agent: the statement must not see an agent twice.
    let mut newest: std::collections::HashMap<&AgentId, DateTime<Utc>> =
        std::collections::HashMap::with_capacity(seen.len());
    for (id, at) in seen {
        newest.entry(id).and_modify(|t| *t = (*t).max(*at)).or_insert(*at);
    }
    let mut rows: Vec<(&AgentId, DateTime<Utc>)> = newest.into_iter().collect();
    rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut updated = 0;
    for chunk in rows.chunks(10_000) {
        let ids: Vec<&str> = chunk.iter().map(|(id, _)| id.as_str()).collect();
        let times: Vec<DateTime<Utc>> = chunk.iter().map(|(_, at)| *at).collect();
        let result = sqlx::query(
            r#"
            WITH input AS (
                SELECT * FROM UNNEST($1::text[], $2::timestamptz[]) AS t(id, seen)
            ),
            locked AS MATERIALIZED (
                SELECT a.id, i.seen FROM agents a JOIN input i ON i.id = a.id
                WHERE a.last_seen_at IS NULL OR a.last_seen_at < i.seen
                ORDER BY a.id
                FOR UPDATE OF a
            )
            UPDATE agents a SET last_seen_at = l.seen
            FROM locked l
            WHERE a.id = l.id AND (a.last_seen_at IS NULL OR a.last_seen_at < l.seen)
            "#,
        )
        // A custom plan for each batch, as for transitions.
        .persistent(false)
        .bind(&ids)
        .bind(&times)
        .execute(pool)
        .await?;
        updated += result.rows_affected();
    }
    Ok(updated)
}

#[derive(sqlx::FromRow)]
struct StoredRow {
    id: String,
    status: String,
    status_changed_at: Option<DateTime<Utc>>,
    last_seen_at: Option<DateTime<Utc>>,
    threshold_secs: Option<i32>,
}

impl StoredRow {
    fn into_presence(self) -> Option<StoredPresence> {
        Some(StoredPresence {
            agent_id: AgentId::parse(&self.id).ok()?,
            state: parse_state(&self.status)?,
            since: self.status_changed_at,
            last_seen_at: self.last_seen_at,
            threshold_secs: self.threshold_secs.and_then(|t| u32::try_from(t).ok()),
        })
    }
}

fn parse_state(s: &str) -> Option<PresenceState> {
    match s {
        "online" => Some(PresenceState::Online),
        "offline" => Some(PresenceState::Offline),
        _ => None,
    }
}

/// The presence Postgres holds for `ids` (the API's fallback when Redis has nothing),
/// with the threshold of each agent's latest transition. Unknown ids are left out.
pub async fn current(pool: &PgPool, ids: &[AgentId]) -> Result<Vec<StoredPresence>, StorageError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = ids.iter().map(AgentId::as_str).collect();
    let rows: Vec<StoredRow> = sqlx::query_as(
        "SELECT a.id, a.status, a.status_changed_at, a.last_seen_at, t.threshold_secs
         FROM agents a
         LEFT JOIN LATERAL (
             SELECT threshold_secs FROM presence_transitions p
             WHERE p.agent_id = a.id
             ORDER BY p.changed_at DESC, p.id DESC
             LIMIT 1
         ) t ON true
         WHERE a.id = ANY($1::text[])
         ORDER BY a.id",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().filter_map(StoredRow::into_presence).collect())
}

/// Agents Postgres has online, in id order after `after`, at most `limit`: lets the
/// tracker find agents it has no heartbeat for.
pub async fn online_agents(
    pool: &PgPool,
    after: Option<&AgentId>,
    limit: u32,
) -> Result<Vec<AgentId>, StorageError> {
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT id FROM agents WHERE status = 'online' AND id > $1 ORDER BY id LIMIT $2")
            .bind(after.map_or("", AgentId::as_str))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
    Ok(ids.iter().filter_map(|id| AgentId::parse(id).ok()).collect())
}

/// One row of an agent's presence history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionRecord {
    /// The row id; pass the last one seen as `before` to get the next page.
    pub id: i64,
    pub agent_id: AgentId,
    pub state: PresenceState,
    pub changed_at: DateTime<Utc>,
    /// When the next transition ended this state (`None` for the current state): with
    /// `changed_at`, how long the host was down (or up).
    pub until: Option<DateTime<Utc>>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub threshold_secs: u32,
    pub reason: String,
}

#[derive(sqlx::FromRow)]
struct HistoryRow {
    id: i64,
    agent_id: String,
    state: String,
    changed_at: DateTime<Utc>,
    until: Option<DateTime<Utc>>,
    last_seen_at: Option<DateTime<Utc>>,
    threshold_secs: i32,
    reason: String,
}

/// An agent's transitions, newest first, `limit` (1 to 1000) at a time; keyset
/// pagination by row id: `before` is the `id` of the last row of the previous page.
pub async fn history(
    pool: &PgPool,
    agent_id: &AgentId,
    before: Option<i64>,
    limit: u32,
) -> Result<Vec<TransitionRecord>, StorageError> {
    let limit = i64::from(limit.clamp(1, 1000));
    let rows: Vec<HistoryRow> = sqlx::query_as(
        "SELECT t.id, t.agent_id, t.state, t.changed_at, t.last_seen_at, t.threshold_secs, t.reason,
                (SELECT n.changed_at FROM presence_transitions n
                 WHERE n.agent_id = t.agent_id AND n.id > t.id
                 ORDER BY n.id LIMIT 1) AS until
         FROM presence_transitions t
         WHERE t.agent_id = $1 AND t.id < $2
         ORDER BY t.id DESC
         LIMIT $3",
    )
    .bind(agent_id.as_str())
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some(TransitionRecord {
                id: r.id,
                agent_id: AgentId::parse(&r.agent_id).ok()?,
                state: parse_state(&r.state)?,
                changed_at: r.changed_at,
                until: r.until,
                last_seen_at: r.last_seen_at,
                threshold_secs: u32::try_from(r.threshold_secs).unwrap_or(0),
                reason: r.reason,
            })
        })
        .collect())
}
