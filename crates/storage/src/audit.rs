//! The action audit log: a row written before an action goes out, completed with its
//! outcome.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::StorageError;

/// An action about to be sent.
#[derive(Debug, Clone)]
pub struct NewAudit<'a> {
    pub request_id: Uuid,
    pub actor: &'a str,
    pub action: &'a str,
    pub agent_id: Option<&'a str>,
    pub incident_id: Option<i64>,
    pub command: Option<&'a str>,
    pub params: Option<&'a Value>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditEntry {
    pub id: i64,
    pub request_id: Uuid,
    pub actor: String,
    pub action: String,
    pub agent_id: Option<String>,
    pub incident_id: Option<i64>,
    pub command: Option<String>,
    pub params: Option<Value>,
    pub outcome: String,
    pub result: Option<Value>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
}

type InsertQuery<'q> = sqlx::query::QueryScalar<'q, sqlx::Postgres, i64, sqlx::postgres::PgArguments>;

/// Binds an entry's columns to `$1`..`$7` of an insert.
fn bind_entry<'q>(query: InsertQuery<'q>, entry: &NewAudit<'q>) -> InsertQuery<'q> {
    query
        .bind(entry.request_id)
        .bind(entry.actor)
        .bind(entry.action)
        .bind(entry.agent_id)
        .bind(entry.incident_id)
        .bind(entry.command)
        .bind(entry.params)
}

/// Writes the "pending" row; returns its id.
pub async fn begin(pool: &PgPool, entry: &NewAudit<'_>) -> Result<i64, StorageError> {
    let query = sqlx::query_scalar(
        "INSERT INTO audit_log (request_id, actor, action, agent_id, incident_id, command, params)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    );
    Ok(bind_entry(query, entry).fetch_one(pool).await?)
}

/// Writes a finished entry in one statement: an administrative change (users,
/// tokens, agents) or a refused enrollment, which has no "sent" moment to wait for.
pub async fn record(
    pool: &PgPool,
    entry: &NewAudit<'_>,
    outcome: &str,
    result: Option<&Value>,
) -> Result<i64, StorageError> {
    let query = sqlx::query_scalar(
        "INSERT INTO audit_log (request_id, actor, action, agent_id, incident_id, command, params, outcome,
                                result, finished_at, duration_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now(), 0) RETURNING id",
    );
    Ok(bind_entry(query, entry).bind(outcome).bind(result).fetch_one(pool).await?)
}

/// Completes the row with the outcome (`ok`, `error`, `offline`, `timeout`,
/// `invalid_reply`, ...).
///
/// The statement turns `synchronous_commit` off for its own (implicit) transaction: the
/// pending row written before the action went out is already durable, and if Postgres
/// crashed in the next fraction of a second the row would stay `pending`, which says
/// exactly what is known. One round trip, no WAL flush wait on every action.
pub async fn finish(
    pool: &PgPool,
    request_id: Uuid,
    outcome: &str,
    result: Option<&Value>,
    duration_ms: i64,
) -> Result<(), StorageError> {
    sqlx::query(
        "WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true))
         UPDATE audit_log SET outcome = $2, result = $3, finished_at = now(), duration_ms = $4
         FROM relaxed WHERE request_id = $1",
    )
    .bind(request_id)
    .bind(outcome)
    .bind(result)
    .bind(duration_ms)
    .execute(pool)
    .await?;
    Ok(())
}

/// Newest first; `before` is the id of the last entry of the previous page.
pub async fn list(
    pool: &PgPool,
    agent_id: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditEntry>, StorageError> {
    Ok(sqlx::query_as(
        "SELECT id, request_id, actor, action, agent_id, incident_id, command, params, outcome, result,
                started_at, finished_at, duration_ms
         FROM audit_log
         WHERE ($1::text IS NULL OR agent_id = $1) AND ($2::bigint IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3",
    )
    .bind(agent_id)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}
