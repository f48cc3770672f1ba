//! Incidents, and their one owner: every write (the event-ingestor's bulk upsert, the
//! presence tracker's `agent_offline` incidents, status changes, analyses' outcomes go
//! through `analysis`), every read, and what identifies an incident ([`identity`]).

pub mod fleet;
pub mod identity;

use std::fmt;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;
use wire_models::{AgentId, EventKind, Severity};

pub use identity::{
    OFFLINE_INCIDENT_TYPE, TRACKER, fingerprint, new_event, normalise, offline_dedup_key, offline_fingerprint,
};

use crate::StorageError;

/// Where an incident is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IncidentStatus {
    New,
    Analyzed,
    Acknowledged,
    Resolved,
}

impl IncidentStatus {
    pub const ALL: [IncidentStatus; 4] = [
        IncidentStatus::New,
        IncidentStatus::Analyzed,
        IncidentStatus::Acknowledged,
        IncidentStatus::Resolved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IncidentStatus::New => "new",
            IncidentStatus::Analyzed => "analyzed",
            IncidentStatus::Acknowledged => "acknowledged",
            IncidentStatus::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

    /// The statuses an operator may move an incident from to `self` (acknowledge or
    /// resolve); `None` for a status an operator does not set.
    pub fn reachable_from(self) -> Option<&'static [IncidentStatus]> {
        match self {
            IncidentStatus::Acknowledged => Some(&[IncidentStatus::New, IncidentStatus::Analyzed]),
            IncidentStatus::Resolved => {
                Some(&[IncidentStatus::New, IncidentStatus::Analyzed, IncidentStatus::Acknowledged])
            }
            IncidentStatus::New | IncidentStatus::Analyzed => None,
        }
    }
}

impl fmt::Display for IncidentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for IncidentStatus {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s).ok_or_else(|| format!("unknown incident status {s:?}"))
    }
}

/// Reads a stored severity (the column's CHECK allows exactly these).
fn severity(s: &str) -> Result<Severity, StorageError> {
    Severity::parse(s).ok_or_else(|| StorageError::Data(format!("unknown severity {s:?}")))
}

/// An event on its way to becoming (or counting toward) an incident; made by
/// [`identity::new_event`], which gives it its fingerprint and dedup key.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub agent_id: AgentId,
    pub kind: EventKind,
    pub severity: Severity,
    pub source: String,
    pub raw_error: String,
    pub context: Value,
    pub occurred_at: DateTime<Utc>,
    /// Agent, kind, source and normalised error, hashed (see the ingestor's fingerprint).
    pub fingerprint: String,
    /// The key of "the same incident": the fingerprint with de-duplication on, the event
    /// id with it off.
    pub dedup_key: String,
}

/// An incident the batch opened (not one it only counted toward).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedIncident {
    pub id: i64,
    pub agent_id: AgentId,
    pub kind: EventKind,
    pub severity: Severity,
    pub is_critical: bool,
    pub fingerprint: String,
    pub created_at: DateTime<Utc>,
}

/// An open incident a batch counted toward: where its count and last occurrence are now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecurredIncident {
    pub id: i64,
    pub agent_id: AgentId,
    pub status: IncidentStatus,
    pub occurrences: i64,
    pub last_seen_at: DateTime<Utc>,
}

/// What one batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IngestOutcome {
    /// Events seen for the first time (the rest were redeliveries).
    pub new_events: u64,
    /// Incidents opened.
    pub created: Vec<CreatedIncident>,
    /// Open incidents whose count went up.
    pub recurred: Vec<RecurredIncident>,
}

/// Writes a batch of events in one statement, exactly once per event id.
///
/// Each event id goes into the `ingested_events` ledger first (`ON CONFLICT DO NOTHING`),
/// so a redelivered event changes nothing: the ledger is partitioned by the event's own
/// `occurred_at`, which every copy shares, so a copy meets its original in the same
/// partition (see the ledger's migration). The new events are grouped by dedup key;
/// each group opens an incident or, when an open incident has that key, raises its
/// occurrence count and last-seen time. The partial unique index on open incidents'
/// dedup keys makes that race-free across replicas; rows are written in key order so
/// concurrent batches lock in the same order.
pub async fn ingest_events(pool: &PgPool, events: &[NewEvent]) -> Result<IngestOutcome, StorageError> {
    if events.is_empty() {
        return Ok(IngestOutcome::default());
    }
    // Per event only what counting needs (id, group, time); the incident's content is
    // sent once per group (the group's first event in the batch). Postgres parses a
    // few hundred rows of text and JSON instead of a thousand.
    let mut seen = std::collections::HashSet::with_capacity(events.len());
    let mut group_of: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    let mut groups: Vec<&NewEvent> = Vec::new();
    let (mut event_ids, mut event_groups, mut occurred) = (Vec::new(), Vec::new(), Vec::new());
    for e in events {
        // One row per event id: the upsert below must not see a key twice.
        if !seen.insert(e.event_id) {
            continue;
        }
        let group = *group_of.entry(e.dedup_key.as_str()).or_insert_with(|| {
            groups.push(e);
            i64::try_from(groups.len()).unwrap_or(i64::MAX)
        });
        event_ids.push(e.event_id);
        event_groups.push(group);
        occurred.push(e.occurred_at);
    }
    let agent_ids: Vec<&str> = groups.iter().map(|e| e.agent_id.as_str()).collect();
    let kinds: Vec<&str> = groups.iter().map(|e| e.kind.as_str()).collect();
    let sources: Vec<&str> = groups.iter().map(|e| e.source.as_str()).collect();
    let raw_errors: Vec<&str> = groups.iter().map(|e| e.raw_error.as_str()).collect();
    let contexts: Vec<&Value> = groups.iter().map(|e| &e.context).collect();
    let criticals: Vec<bool> = groups.iter().map(|e| e.severity.is_critical()).collect();
    let severities: Vec<&str> = groups.iter().map(|e| e.severity.as_str()).collect();
    let fingerprints: Vec<&str> = groups.iter().map(|e| e.fingerprint.as_str()).collect();
    let dedup_keys: Vec<&str> = groups.iter().map(|e| e.dedup_key.as_str()).collect();

    let mut tx = pool.begin().await?;
    let rows: Vec<UpsertRow> = sqlx::query_as(sqlx::AssertSqlSafe(INGEST_SQL.as_str()))
        .bind(&event_ids)
        .bind(&event_groups)
        .bind(&occurred)
        .bind(&agent_ids)
        .bind(&kinds)
        .bind(&sources)
        .bind(&raw_errors)
        .bind(&contexts)
        .bind(&criticals)
        .bind(&severities)
        .bind(&fingerprints)
        .bind(&dedup_keys)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;

    let mut outcome = IngestOutcome::default();
    for row in rows {
        outcome.new_events = u64::try_from(row.new_events).unwrap_or(0);
        if row.inserted {
            outcome.created.push(row.try_into()?);
        } else {
            outcome.recurred.push(RecurredIncident {
                id: row.id,
                agent_id: AgentId::parse(&row.agent_id).map_err(|e| StorageError::Data(e.to_string()))?,
                status: IncidentStatus::try_from(row.status).map_err(StorageError::Data)?,
                occurrences: row.occurrences,
                last_seen_at: row.last_seen_at,
            });
        }
    }
    Ok(outcome)
}

/// The incidents that these events opened and that nobody has looked at yet (status
/// `new`). A redelivered batch finds its events already stored; this is how the
/// ingestor learns which incidents it may not have announced before a crash.
pub async fn unannounced_by_events(
    pool: &PgPool,
    event_ids: &[Uuid],
) -> Result<Vec<CreatedIncident>, StorageError> {
    if event_ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<UpsertRow> = sqlx::query_as(
        r#"
        SELECT id, agent_id, type, severity, is_critical, fingerprint, created_at, status, occurrences,
               last_seen_at, true AS inserted, 0::int8 AS new_events
        FROM incidents
        WHERE event_id = ANY($1) AND status = 'new'
        ORDER BY id
        "#,
    )
    .bind(event_ids)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(TryInto::try_into).collect()
}

#[derive(sqlx::FromRow)]
struct UpsertRow {
    id: i64,
    agent_id: String,
    #[sqlx(rename = "type")]
    kind: String,
    severity: String,
    is_critical: bool,
    fingerprint: String,
    created_at: DateTime<Utc>,
    status: String,
    occurrences: i64,
    last_seen_at: DateTime<Utc>,
    inserted: bool,
    new_events: i64,
}

impl TryFrom<UpsertRow> for CreatedIncident {
    type Error = StorageError;
    fn try_from(row: UpsertRow) -> Result<Self, StorageError> {
        // Stored from validated events: a value that does not parse is corruption, and
        // is reported as such rather than guessed at.
        Ok(CreatedIncident {
            id: row.id,
            agent_id: AgentId::parse(&row.agent_id).map_err(|e| StorageError::Data(e.to_string()))?,
            kind: EventKind::parse(&row.kind).map_err(|e| StorageError::Data(e.to_string()))?,
            severity: severity(&row.severity)?,
            is_critical: row.is_critical,
            fingerprint: row.fingerprint,
            created_at: row.created_at,
        })
    }
}

/// An incident as the API and the analyzer see it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IncidentRow {
    pub id: i64,
    pub agent_id: String,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub source: String,
    pub raw_error: String,
    pub context: Value,
    pub is_critical: bool,
    #[sqlx(try_from = "String")]
    pub severity: Severity,
    #[sqlx(try_from = "String")]
    pub status: IncidentStatus,
    pub fingerprint: String,
    pub occurrences: i64,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub ai_analysis: Option<String>,
    pub suggested_action: Option<Value>,
    pub analysis_status: String,
    pub analysis_error: Option<String>,
    pub analyzer: Option<String>,
    pub analyzer_model: Option<String>,
    pub analyzed_at: Option<DateTime<Utc>>,
    pub dropped_action: Option<Value>,
    pub action_result: Option<Value>,
    pub action_executed_at: Option<DateTime<Utc>>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub acknowledged_by: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const INCIDENT_COLUMNS: &str = "id, agent_id, type, source, raw_error, context, is_critical, severity, status, \
    fingerprint, occurrences, first_seen_at, last_seen_at, ai_analysis, suggested_action, analysis_status, \
    analysis_error, analyzer, analyzer_model, analyzed_at, dropped_action, action_result, action_executed_at, \
    acknowledged_at, acknowledged_by, resolved_at, resolved_by, created_at, updated_at";

pub async fn get(pool: &PgPool, id: i64) -> Result<Option<IncidentRow>, StorageError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await?)
}

/// An agent's incidents, newest first; `before` is the last id of the previous page.
/// Empty for an unknown or revoked agent too: the caller tells those apart.
pub async fn list_for_agent(
    pool: &PgPool,
    agent: &AgentId,
    status: Option<IncidentStatus>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<IncidentRow>, StorageError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {INCIDENT_COLUMNS} FROM incidents
         WHERE agent_id = $1 AND ($2::text IS NULL OR status = $2) AND ($3::bigint IS NULL OR id < $3)
           AND EXISTS (SELECT 1 FROM agents WHERE id = $1 AND revoked_at IS NULL)
         ORDER BY id DESC LIMIT $4"
    )))
    .bind(agent.as_str())
    .bind(status.map(IncidentStatus::as_str))
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Outcome of an acknowledge / resolve request.
#[derive(Debug)]
pub enum StatusChange {
    Changed(Box<IncidentRow>),
    NotFound,
    /// The incident is in a status that cannot move there (e.g. already resolved).
    Refused {
        current: IncidentStatus,
    },
}

/// Moves an incident to `acknowledged` or `resolved`. A resolved incident stays resolved
/// (a new occurrence opens a new incident).
pub async fn change_status(
    pool: &PgPool,
    id: i64,
    target: IncidentStatus,
    actor: &str,
) -> Result<StatusChange, StorageError> {
    let Some(reachable_from) = target.reachable_from() else {
        return Err(StorageError::Conflict(format!("an operator does not set status {target}")));
    };
    let allowed_from: Vec<&str> = reachable_from.iter().map(|s| s.as_str()).collect();
    let target = target.as_str();
    let row: Option<IncidentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE incidents SET status = $2, updated_at = now(),
             acknowledged_at = CASE WHEN $2 = 'acknowledged' THEN now() ELSE acknowledged_at END,
             acknowledged_by = CASE WHEN $2 = 'acknowledged' THEN $3 ELSE acknowledged_by END,
             resolved_at = CASE WHEN $2 = 'resolved' THEN now() ELSE resolved_at END,
             resolved_by = CASE WHEN $2 = 'resolved' THEN $3 ELSE resolved_by END
         WHERE id = $1 AND status = ANY($4::text[])
         RETURNING {INCIDENT_COLUMNS}"
    )))
    .bind(id)
    .bind(target)
    .bind(actor)
    .bind(&allowed_from)
    .fetch_optional(pool)
    .await?;
    if let Some(row) = row {
        return Ok(StatusChange::Changed(Box::new(row)));
    }
    let current: Option<String> = sqlx::query_scalar("SELECT status FROM incidents WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(match current {
        None => StatusChange::NotFound,
        Some(current) => {
            StatusChange::Refused { current: IncidentStatus::try_from(current).map_err(StorageError::Data)? }
        }
    })
}

/// Records the outcome of the incident's suggested action.
pub async fn record_action(pool: &PgPool, id: i64, result: &Value) -> Result<(), StorageError> {
    sqlx::query("UPDATE incidents SET action_result = $2, action_executed_at = now(), updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(result)
        .execute(pool)
        .await?;
    Ok(())
}

/// The bulk upsert of [`ingest_events`].
static INGEST_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        r#"
        WITH ev AS (
            SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::timestamptz[]) AS t(event_id, grp, occurred_at)
        ),
        new_events AS (
            INSERT INTO ingested_events (event_id, occurred_at)
            SELECT event_id, occurred_at FROM ev
            WHERE NOT EXISTS (SELECT 1 FROM ingested_events_legacy l WHERE l.event_id = ev.event_id)
            ON CONFLICT (event_id, occurred_at) DO NOTHING
            RETURNING event_id
        ),
        counted AS (
            SELECT ev.grp,
                   count(*) AS n,
                   min(ev.occurred_at) AS first_seen,
                   max(ev.occurred_at) AS last_seen,
                   (array_agg(ev.event_id ORDER BY ev.occurred_at, ev.event_id))[1] AS first_event
            FROM new_events JOIN ev USING (event_id)
            GROUP BY ev.grp
        ),
        grp AS (
            SELECT * FROM UNNEST($4::text[], $5::text[], $6::text[], $7::text[], $8::jsonb[], $9::bool[],
                                 $10::text[], $11::text[], $12::text[]) WITH ORDINALITY
                AS g(agent_id, type, source, raw_error, context, is_critical, severity, fingerprint, dedup_key, grp)
        )
        INSERT INTO incidents AS inc ({columns})
        SELECT g.agent_id, g.type, g.source, g.raw_error, g.context, g.is_critical, g.severity,
               'new', c.first_event, g.fingerprint, g.dedup_key, c.n, c.first_seen, c.last_seen
        FROM counted c
        JOIN grp g ON g.grp = c.grp
        ORDER BY g.dedup_key
        ON CONFLICT (dedup_key) WHERE status <> 'resolved'
        DO UPDATE SET occurrences = inc.occurrences + EXCLUDED.occurrences,
                      last_seen_at = GREATEST(inc.last_seen_at, EXCLUDED.last_seen_at),
                      is_critical = inc.is_critical OR EXCLUDED.is_critical,
                      updated_at = now()
        RETURNING inc.id, inc.agent_id, inc.type, inc.severity, inc.is_critical, inc.fingerprint,
                  inc.created_at, inc.status, inc.occurrences, inc.last_seen_at, (inc.xmax = 0) AS inserted,
                  (SELECT count(*) FROM new_events) AS new_events
"#,
        columns = INSERT_COLUMNS
    )
});

/// The columns an incident is inserted with, in this order, by every writer.
const INSERT_COLUMNS: &str = "agent_id, type, source, raw_error, context, is_critical, severity, status, \
    event_id, fingerprint, dedup_key, occurrences, first_seen_at, last_seen_at";

/// The `agent_offline` incidents, opened and resolved in the presence tracker's
/// transition statement (so a transition and its incident are one commit). `changed`
/// names the CTE of agents that changed, with `id`, `changed_at`, `last_seen_at`,
/// `threshold_secs`, `reason` and `fingerprint` columns; `enabled` is a boolean
/// parameter.
pub(crate) fn open_offline_cte(changed: &str, enabled: &str) -> String {
    format!(
        "opened AS (
    INSERT INTO incidents AS inc ({INSERT_COLUMNS})
    SELECT c.id, '{OFFLINE_INCIDENT_TYPE}', '{TRACKER}',
           format('no heartbeat for %s s', c.threshold_secs),
           jsonb_build_object('last_seen_at', c.last_seen_at, 'threshold_secs', c.threshold_secs,
                              'reason', c.reason),
           true, '{critical}', '{new}', gen_random_uuid(), c.fingerprint, 'presence:' || c.id, 1,
           c.changed_at, c.changed_at
    FROM {changed} c
    WHERE {enabled}
    ORDER BY c.id
    ON CONFLICT (dedup_key) WHERE status <> '{resolved}' DO NOTHING
    RETURNING inc.id, inc.agent_id
)",
        critical = Severity::Critical.as_str(),
        new = IncidentStatus::New.as_str(),
        resolved = IncidentStatus::Resolved.as_str(),
    )
}

/// The resolving half of [`open_offline_cte`]: the agents in `changed` came back.
pub(crate) fn resolve_offline_cte(changed: &str) -> String {
    format!(
        "resolved AS (
    UPDATE incidents inc
    SET status = '{resolved}', resolved_at = c.changed_at, resolved_by = '{TRACKER}', updated_at = now()
    FROM {changed} c
    WHERE inc.dedup_key = 'presence:' || c.id AND inc.status <> '{resolved}'
    RETURNING inc.id, inc.agent_id
)",
        resolved = IncidentStatus::Resolved.as_str(),
    )
}
