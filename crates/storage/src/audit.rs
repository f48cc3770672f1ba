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

/// An action about to be sent, owning its fields (to be queued for [`begin_many`]).
#[derive(Debug, Clone)]
pub struct PendingAudit {
    pub request_id: Uuid,
    pub actor: String,
    pub action: String,
    pub agent_id: Option<String>,
    pub incident_id: Option<i64>,
    pub command: Option<String>,
    pub params: Option<Value>,
}

/// How a writer's connection plans its statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planning {
    /// Postgres's default: after a few executions a statement keeps a generic plan. Right
    /// for an insert, whose plan does not depend on the table.
    Cached,
    /// Planned at every execution, for an update that finds its rows in `audit_log`.
    /// Such a connection runs the same statements for its whole life, and a plan Postgres
    /// cached while `audit_log` was small (a new database) joins the update by scanning
    /// the whole table, and keeps scanning it as the table grows until the next analyze:
    /// at 64 concurrent executes that was a quarter of Postgres's CPU. Planned per batch,
    /// the update finds its rows by the `request_id` index.
    PerExecution,
}

/// A connection of its own for a writer of [`begin_many`] or [`finish_many`], out of
/// the pool for good.
pub async fn writer_connection(
    pool: &PgPool,
    planning: Planning,
) -> Result<sqlx::PgConnection, StorageError> {
    let mut conn = pool.acquire().await?.detach();
    if planning == Planning::PerExecution {
        sqlx::query("SET plan_cache_mode = force_custom_plan").execute(&mut conn).await?;
    }
    Ok(conn)
}

/// Writes the "pending" rows of several actions in one statement and one commit: what
/// concurrent requests share instead of a durable commit each.
pub async fn begin_many(db: impl sqlx::PgExecutor<'_>, entries: &[PendingAudit]) -> Result<(), StorageError> {
    match entries {
        [] => return Ok(()),
        // Alone (a request with nobody to share its commit), the row goes as plain
        // parameters: building and unpacking seven one-element arrays cost about a
        // tenth of the statement.
        [entry] => {
            sqlx::query(
                "INSERT INTO audit_log (request_id, actor, action, agent_id, incident_id, command, params)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(entry.request_id)
            .bind(&entry.actor)
            .bind(&entry.action)
            .bind(entry.agent_id.as_deref())
            .bind(entry.incident_id)
            .bind(entry.command.as_deref())
            .bind(entry.params.as_ref())
            .execute(db)
            .await?;
            return Ok(());
        }
        _ => {}
    }
    let requests: Vec<Uuid> = entries.iter().map(|e| e.request_id).collect();
    let actors: Vec<&str> = entries.iter().map(|e| e.actor.as_str()).collect();
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    let agents: Vec<Option<&str>> = entries.iter().map(|e| e.agent_id.as_deref()).collect();
    let incidents: Vec<Option<i64>> = entries.iter().map(|e| e.incident_id).collect();
    let commands: Vec<Option<&str>> = entries.iter().map(|e| e.command.as_deref()).collect();
    let params: Vec<Option<&Value>> = entries.iter().map(|e| e.params.as_ref()).collect();
    sqlx::query(
        "INSERT INTO audit_log (request_id, actor, action, agent_id, incident_id, command, params)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::jsonb[])",
    )
    .bind(&requests)
    .bind(&actors)
    .bind(&actions)
    .bind(&agents)
    .bind(&incidents)
    .bind(&commands)
    .bind(&params)
    .execute(db)
    .await?;
    Ok(())
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

/// An action's outcome, owning its fields (to be queued for [`finish_many`]).
#[derive(Debug, Clone)]
pub struct FinishedAudit {
    pub request_id: Uuid,
    pub outcome: String,
    pub result: Option<Value>,
    pub duration_ms: i64,
}

/// Completes several rows in one statement, as [`finish`] does one (its own commit not
/// waited for).
pub async fn finish_many(
    db: impl sqlx::PgExecutor<'_>,
    entries: &[FinishedAudit],
) -> Result<(), StorageError> {
    if entries.is_empty() {
        return Ok(());
    }
    let requests: Vec<Uuid> = entries.iter().map(|e| e.request_id).collect();
    let outcomes: Vec<&str> = entries.iter().map(|e| e.outcome.as_str()).collect();
    let results: Vec<Option<&Value>> = entries.iter().map(|e| e.result.as_ref()).collect();
    let durations: Vec<i64> = entries.iter().map(|e| e.duration_ms).collect();
    sqlx::query(
        "WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true))
         UPDATE audit_log l SET outcome = u.o, result = u.r, finished_at = now(), duration_ms = u.d
         FROM relaxed, UNNEST($1::uuid[], $2::text[], $3::jsonb[], $4::bigint[]) AS u(q, o, r, d)
         WHERE l.request_id = u.q",
    )
    .bind(&requests)
    .bind(&outcomes)
    .bind(&results)
    .bind(&durations)
    .execute(db)
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
