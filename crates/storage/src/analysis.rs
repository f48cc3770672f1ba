//! AI analysis of incidents: what a prompt needs (the incident, its agent and the
//! agent's recent incidents) and the analysis outcome, written in one statement.
//!
//! The analysis columns always describe the latest attempt: a success writes the
//! analysis, the suggested action, the refused action (if any) and who produced it; a
//! failure writes its reason and clears the previous attempt's outputs, so a row never
//! pairs `analysis_status = 'failed'` with a suggested action someone could run.

use std::fmt;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use wire_models::{OsInfo, ServiceInfo, Severity};

use crate::StorageError;
use crate::incidents::IncidentStatus;

/// `incidents.analysis_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnalysisStatus {
    /// Never analyzed.
    None,
    Ok,
    Failed,
}

impl AnalysisStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AnalysisStatus::None => "none",
            AnalysisStatus::Ok => "ok",
            AnalysisStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "ok" => AnalysisStatus::Ok,
            "failed" => AnalysisStatus::Failed,
            // The CHECK constraint allows only 'none' besides the two above.
            _ => AnalysisStatus::None,
        }
    }
}

impl fmt::Display for AnalysisStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The incident as the analyzer sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentForAnalysis {
    pub id: i64,
    pub agent_id: String,
    /// The event kind (`incidents.type`).
    pub kind: String,
    pub severity: Severity,
    pub source: String,
    pub raw_error: String,
    pub context: Value,
    pub is_critical: bool,
    pub status: IncidentStatus,
    pub fingerprint: String,
    pub occurrences: i64,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub analysis_status: AnalysisStatus,
    pub analyzer: Option<String>,
    pub analyzer_model: Option<String>,
}

/// The incident's agent: its hostname and, from its latest inventory snapshot, the OS
/// and the services (both absent when the agent never reported an inventory).
#[derive(Debug, Clone, PartialEq)]
pub struct AgentForAnalysis {
    pub id: String,
    pub hostname: String,
    pub os: Option<OsInfo>,
    pub services: Vec<ServiceInfo>,
    pub inventory_collected_at: Option<DateTime<Utc>>,
}

/// One of the agent's other incidents, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentIncident {
    pub id: i64,
    pub kind: String,
    pub severity: Severity,
    pub source: String,
    pub status: IncidentStatus,
    pub occurrences: i64,
    /// The first [`RECENT_RAW_ERROR_CHARS`] characters of the error.
    pub raw_error: String,
    pub created_at: DateTime<Utc>,
}

/// Characters of a recent incident's error text loaded for a prompt.
pub const RECENT_RAW_ERROR_CHARS: i32 = 300;

/// Everything a prompt is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisInput {
    pub incident: IncidentForAnalysis,
    pub agent: AgentForAnalysis,
    pub recent: Vec<RecentIncident>,
}

#[derive(sqlx::FromRow)]
struct InputRow {
    id: i64,
    agent_id: String,
    #[sqlx(rename = "type")]
    kind: String,
    #[sqlx(try_from = "String")]
    severity: Severity,
    source: String,
    raw_error: String,
    context: Value,
    is_critical: bool,
    #[sqlx(try_from = "String")]
    status: IncidentStatus,
    fingerprint: String,
    occurrences: i64,
    first_seen_at: DateTime<Utc>,
    last_seen_at: DateTime<Utc>,
    analysis_status: String,
    analyzer: Option<String>,
    analyzer_model: Option<String>,
    hostname: String,
    os: Option<Value>,
    services: Option<Value>,
    collected_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct RecentRow {
    id: i64,
    #[sqlx(rename = "type")]
    kind: String,
    #[sqlx(try_from = "String")]
    severity: Severity,
    source: String,
    #[sqlx(try_from = "String")]
    status: IncidentStatus,
    occurrences: i64,
    raw_error: String,
    created_at: DateTime<Utc>,
}

/// Loads the incident, its agent (hostname, OS and services of the most recently
/// collected inventory snapshot) and up to `recent_limit` of the agent's other
/// incidents. [`StorageError::NotFound`] when there is no such incident.
pub async fn load_input(
    pool: &PgPool,
    incident_id: i64,
    recent_limit: u32,
) -> Result<AnalysisInput, StorageError> {
    let row: Option<InputRow> = sqlx::query_as(
        r#"
        SELECT i.id, i.agent_id, i.type, i.severity, i.source, i.raw_error, i.context, i.is_critical,
               i.status, i.fingerprint, i.occurrences, i.first_seen_at, i.last_seen_at,
               i.analysis_status, i.analyzer, i.analyzer_model,
               a.hostname, inv.data -> 'os' AS os, inv.data -> 'services' AS services, inv.collected_at
        FROM incidents i
        JOIN agents a ON a.id = i.agent_id
        LEFT JOIN LATERAL (
            SELECT data, collected_at FROM agents_inventory
            WHERE agent_id = i.agent_id
            ORDER BY collected_at DESC, id DESC
            LIMIT 1
        ) inv ON true
        WHERE i.id = $1
        "#,
    )
    .bind(incident_id)
    .fetch_optional(pool)
    .await?;
    let row = row.ok_or(StorageError::NotFound)?;

    let recent: Vec<RecentRow> = if recent_limit == 0 {
        Vec::new()
    } else {
        sqlx::query_as(
            "SELECT id, type, severity, source, status, occurrences, left(raw_error, $3) AS raw_error, created_at
             FROM incidents
             WHERE agent_id = $1 AND id <> $2
             ORDER BY id DESC
             LIMIT $4",
        )
        .bind(&row.agent_id)
        .bind(incident_id)
        .bind(RECENT_RAW_ERROR_CHARS)
        .bind(i64::from(recent_limit))
        .fetch_all(pool)
        .await?
    };

    // Inventory is whatever an agent sent (validated when it arrived, possibly by an
    // older version): read it leniently, dropping what does not have the expected shape.
    let os = row.os.and_then(|v| serde_json::from_value::<OsInfo>(v).ok());
    let services = match row.services {
        Some(Value::Array(items)) => {
            items.into_iter().filter_map(|v| serde_json::from_value::<ServiceInfo>(v).ok()).collect()
        }
        _ => Vec::new(),
    };
    Ok(AnalysisInput {
        agent: AgentForAnalysis {
            id: row.agent_id.clone(),
            hostname: row.hostname,
            os,
            services,
            inventory_collected_at: row.collected_at,
        },
        incident: IncidentForAnalysis {
            id: row.id,
            agent_id: row.agent_id,
            kind: row.kind,
            severity: row.severity,
            source: row.source,
            raw_error: row.raw_error,
            context: row.context,
            is_critical: row.is_critical,
            status: row.status,
            fingerprint: row.fingerprint,
            occurrences: row.occurrences,
            first_seen_at: row.first_seen_at,
            last_seen_at: row.last_seen_at,
            analysis_status: AnalysisStatus::parse(&row.analysis_status),
            analyzer: row.analyzer,
            analyzer_model: row.analyzer_model,
        },
        recent: recent
            .into_iter()
            .map(|r| RecentIncident {
                id: r.id,
                kind: r.kind,
                severity: r.severity,
                source: r.source,
                status: r.status,
                occurrences: r.occurrences,
                raw_error: r.raw_error,
                created_at: r.created_at,
            })
            .collect(),
    })
}

/// A successful analysis, ready to store.
#[derive(Debug, Clone, Copy)]
pub struct NewAnalysis<'a> {
    pub text: &'a str,
    /// The analyzer's judgement; it can raise the incident's criticality, never lower
    /// what the host reported.
    pub is_critical: bool,
    /// The validated, allow-listed action (`{"command": ..., "params": {...}}`).
    pub suggested_action: Option<&'a Value>,
    /// The action the analyzer proposed but the allow-list refused, with the reason.
    pub dropped_action: Option<&'a Value>,
    pub analyzer: &'a str,
    pub model: Option<&'a str>,
}

/// Stores a successful analysis in one statement: the text, criticality, suggested and
/// dropped action, analyzer and model, `analysis_status = 'ok'` with no error, and
/// status `new` -> `analyzed` (an acknowledged or resolved incident keeps its status).
/// Returns the incident's status afterwards; [`StorageError::NotFound`] when the
/// incident is gone.
pub async fn record_success(
    pool: &PgPool,
    incident_id: i64,
    analysis: &NewAnalysis<'_>,
) -> Result<IncidentStatus, StorageError> {
    let status: Option<String> = sqlx::query_scalar(
        "UPDATE incidents
         SET ai_analysis = $2,
             is_critical = is_critical OR $3,
             suggested_action = $4,
             dropped_action = $5,
             analyzer = $6,
             analyzer_model = $7,
             analyzed_at = now(),
             analysis_status = 'ok',
             analysis_error = NULL,
             status = CASE WHEN status = 'new' THEN 'analyzed' ELSE status END,
             updated_at = now()
         WHERE id = $1
         RETURNING status",
    )
    .bind(incident_id)
    .bind(analysis.text)
    .bind(analysis.is_critical)
    .bind(analysis.suggested_action)
    .bind(analysis.dropped_action)
    .bind(analysis.analyzer)
    .bind(analysis.model)
    .fetch_optional(pool)
    .await?;
    IncidentStatus::try_from(status.ok_or(StorageError::NotFound)?).map_err(StorageError::Data)
}

/// Records a failed analysis in one statement: `analysis_status = 'failed'`, the reason,
/// who tried, and no analysis text or actions (they would belong to an older attempt).
/// The incident's status and criticality are left as they are.
pub async fn record_failure(
    pool: &PgPool,
    incident_id: i64,
    reason: &str,
    analyzer: &str,
    model: Option<&str>,
) -> Result<(), StorageError> {
    let updated = sqlx::query(
        "UPDATE incidents
         SET analysis_status = 'failed',
             analysis_error = $2,
             ai_analysis = NULL,
             suggested_action = NULL,
             dropped_action = NULL,
             analyzer = $3,
             analyzer_model = $4,
             analyzed_at = now(),
             updated_at = now()
         WHERE id = $1",
    )
    .bind(incident_id)
    .bind(reason)
    .bind(analyzer)
    .bind(model)
    .execute(pool)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(StorageError::NotFound);
    }
    Ok(())
}
