//! Fleet-wide actions: one command to many agents, its resolved targets and their
//! outcomes. Everything an agent is sent is in the audit log before it goes out (each
//! target's audit row is written with the action), and outcomes are recorded in batches,
//! a statement per batch rather than a transaction per agent.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::StorageError;

/// The audit log's `action` for one agent's request of a fleet action.
pub const AUDIT_ACTION: &str = "fleet_action";

/// An action about to start.
#[derive(Debug, Clone)]
pub struct NewAction<'a> {
    pub id: Uuid,
    pub command: &'a str,
    pub params: &'a Value,
    pub target: &'a Value,
    pub requested_by: &'a str,
    pub max_concurrency: i32,
    pub timeout_ms: i32,
}

/// One resolved target: the agent and the request id its audit row carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub agent_id: String,
    pub hostname: String,
    pub request_id: Uuid,
}

/// Writes the action, its targets (pending) and one pending audit row per target, in
/// one transaction: the run starts only once all of it is there.
pub async fn create(pool: &PgPool, action: &NewAction<'_>, targets: &[Target]) -> Result<(), StorageError> {
    let agents: Vec<&str> = targets.iter().map(|t| t.agent_id.as_str()).collect();
    let hostnames: Vec<&str> = targets.iter().map(|t| t.hostname.as_str()).collect();
    let requests: Vec<Uuid> = targets.iter().map(|t| t.request_id).collect();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO fleet_actions (id, command, params, target, requested_by, max_concurrency, timeout_ms, total)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(action.id)
    .bind(action.command)
    .bind(action.params)
    .bind(action.target)
    .bind(action.requested_by)
    .bind(action.max_concurrency)
    .bind(action.timeout_ms)
    .bind(i32::try_from(targets.len()).unwrap_or(i32::MAX))
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO fleet_action_targets (action_id, agent_id, hostname, request_id)
         SELECT $1, a, h, r FROM UNNEST($2::text[], $3::text[], $4::uuid[]) AS u(a, h, r)",
    )
    .bind(action.id)
    .bind(&agents)
    .bind(&hostnames)
    .bind(&requests)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO audit_log (request_id, actor, action, agent_id, command, params, action_id)
         SELECT r, $1, $2, a, $3, $4, $5 FROM UNNEST($6::text[], $7::uuid[]) AS u(a, r)",
    )
    .bind(action.requested_by)
    .bind(AUDIT_ACTION)
    .bind(action.command)
    .bind(action.params)
    .bind(action.id)
    .bind(&agents)
    .bind(&requests)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    if targets.len() >= ANALYZE_OVER {
        // Before the first batch of outcomes: statistics that predate this many new rows
        // (a new table's say "empty") make the planner scan the targets for every batch.
        sqlx::query("ANALYZE fleet_action_targets, audit_log").execute(pool).await?;
    }
    Ok(())
}

/// Targets from which an action refreshes the planner's statistics before it runs.
const ANALYZE_OVER: usize = 5_000;

/// What became of one agent's request.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub agent_id: String,
    /// `ok`, `error`, `timeout` or `skipped`.
    pub outcome: &'static str,
    pub reply: Option<Value>,
    pub duration_ms: i32,
}

/// Records a batch of outcomes on the targets and on their audit rows. Only pending
/// rows change, so recording a batch twice changes nothing the second time.
pub async fn record(pool: &PgPool, action: Uuid, outcomes: &[Outcome]) -> Result<(), StorageError> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let agents: Vec<&str> = outcomes.iter().map(|o| o.agent_id.as_str()).collect();
    let labels: Vec<&str> = outcomes.iter().map(|o| o.outcome).collect();
    let replies: Vec<Option<&Value>> = outcomes.iter().map(|o| o.reply.as_ref()).collect();
    let durations: Vec<i32> = outcomes.iter().map(|o| o.duration_ms).collect();
    let mut tx = pool.begin().await?;
    // The audit rows are updated from the values bound here, by their unique key: a
    // join of the two tables would be planned as a scan of both, which grows with
    // every action ever run.
    let requests: Vec<(Uuid, String)> = sqlx::query_as(
        "UPDATE fleet_action_targets t SET outcome = u.o, reply = u.r, duration_ms = u.d, finished_at = now()
         FROM UNNEST($2::text[], $3::text[], $4::jsonb[], $5::int[]) AS u(a, o, r, d)
         WHERE t.action_id = $1 AND t.agent_id = u.a AND t.outcome IS NULL
         RETURNING t.request_id, t.agent_id",
    )
    .bind(action)
    .bind(&agents)
    .bind(&labels)
    .bind(&replies)
    .bind(&durations)
    .fetch_all(&mut *tx)
    .await?;
    // Only what changed above: a replayed outcome leaves its audit row alone too.
    let by_agent: std::collections::HashMap<&str, Uuid> =
        requests.iter().map(|(request, agent)| (agent.as_str(), *request)).collect();
    let changed: Vec<(Uuid, &Outcome)> =
        outcomes.iter().filter_map(|o| by_agent.get(o.agent_id.as_str()).map(|r| (*r, o))).collect();
    let ids: Vec<Uuid> = changed.iter().map(|(r, _)| *r).collect();
    let labels: Vec<&str> = changed.iter().map(|(_, o)| o.outcome).collect();
    let replies: Vec<Option<&Value>> = changed.iter().map(|(_, o)| o.reply.as_ref()).collect();
    let durations: Vec<i64> = changed.iter().map(|(_, o)| i64::from(o.duration_ms)).collect();
    sqlx::query(
        "UPDATE audit_log l SET outcome = u.o, result = u.r, finished_at = now(), duration_ms = u.d
         FROM UNNEST($1::uuid[], $2::text[], $3::jsonb[], $4::bigint[]) AS u(q, o, r, d)
         WHERE l.request_id = u.q",
    )
    .bind(&ids)
    .bind(&labels)
    .bind(&replies)
    .bind(&durations)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The runner is alive; returns whether someone asked to cancel the action.
pub async fn beat(pool: &PgPool, action: Uuid) -> Result<bool, StorageError> {
    let cancel: Option<bool> = sqlx::query_scalar(
        "UPDATE fleet_actions SET heartbeat_at = now() WHERE id = $1 AND state = 'running'
         RETURNING cancel_requested_at IS NOT NULL",
    )
    .bind(action)
    .fetch_optional(pool)
    .await?;
    // Not running any more (marked unfinished by another replica): stop as if cancelled.
    Ok(cancel.unwrap_or(true))
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Every target has an outcome.
    Finished,
    /// Sending stopped on request: the targets still pending are marked `cancelled`.
    Cancelled,
    /// The runner stopped before the end (its replica shut down): pending stays pending.
    Unfinished,
}

/// Ends a running action.
pub async fn end(pool: &PgPool, action: Uuid, how: End) -> Result<(), StorageError> {
    let mut tx = pool.begin().await?;
    if how == End::Cancelled {
        let requests: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE fleet_action_targets SET outcome = 'cancelled', finished_at = now()
             WHERE action_id = $1 AND outcome IS NULL RETURNING request_id",
        )
        .bind(action)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE audit_log SET outcome = 'cancelled', finished_at = now(), duration_ms = 0
             WHERE request_id = ANY($1)",
        )
        .bind(&requests)
        .execute(&mut *tx)
        .await?;
    }
    let state = match how {
        End::Finished => "finished",
        End::Cancelled => "cancelled",
        End::Unfinished => "unfinished",
    };
    sqlx::query(
        "UPDATE fleet_actions SET state = $2, finished_at = now() WHERE id = $1 AND state = 'running'",
    )
    .bind(action)
    .bind(state)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Asks a running action to stop sending. `None`: no such action; `Some(false)`: it is
/// not running.
pub async fn request_cancel(pool: &PgPool, action: Uuid, by: &str) -> Result<Option<bool>, StorageError> {
    let row: Option<(String,)> = sqlx::query_as(
        "UPDATE fleet_actions SET cancel_requested_at = COALESCE(cancel_requested_at, now()),
                                  cancelled_by = COALESCE(cancelled_by, $2)
         WHERE id = $1 RETURNING state",
    )
    .bind(action)
    .bind(by)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(state,)| state == "running"))
}

/// Marks running actions whose runner stopped beating for `stale` as `unfinished`;
/// returns their ids.
pub async fn mark_unfinished(pool: &PgPool, stale: Duration) -> Result<Vec<Uuid>, StorageError> {
    Ok(sqlx::query_scalar(
        "UPDATE fleet_actions SET state = 'unfinished', finished_at = now()
         WHERE state = 'running' AND heartbeat_at < now() - make_interval(secs => $1)
         RETURNING id",
    )
    .bind(stale.as_secs_f64())
    .fetch_all(pool)
    .await?)
}

/// An action as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ActionRow {
    pub id: Uuid,
    pub command: String,
    pub params: Value,
    pub target: Value,
    pub requested_by: String,
    pub max_concurrency: i32,
    pub timeout_ms: i32,
    pub total: i32,
    pub state: String,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub cancelled_by: Option<String>,
    pub heartbeat_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

const ACTION_COLUMNS: &str = "id, command, params, target, requested_by, max_concurrency, timeout_ms, total, \
    state, cancel_requested_at, cancelled_by, heartbeat_at, created_at, finished_at";

pub async fn get(pool: &PgPool, action: Uuid) -> Result<Option<ActionRow>, StorageError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ACTION_COLUMNS} FROM fleet_actions WHERE id = $1"
    )))
    .bind(action)
    .fetch_optional(pool)
    .await?)
}

/// Targets per outcome (`pending` for those without one).
pub async fn counts(pool: &PgPool, action: Uuid) -> Result<BTreeMap<String, i64>, StorageError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT COALESCE(outcome, 'pending'), count(*) FROM fleet_action_targets
         WHERE action_id = $1 GROUP BY 1",
    )
    .bind(action)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Newest first; `before` is the id of the last action of the previous page.
pub async fn list(pool: &PgPool, before: Option<Uuid>, limit: i64) -> Result<Vec<ActionRow>, StorageError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ACTION_COLUMNS} FROM fleet_actions
         WHERE $1::uuid IS NULL
            OR (created_at, id) < (SELECT created_at, id FROM fleet_actions WHERE id = $1)
         ORDER BY created_at DESC, id DESC LIMIT $2"
    )))
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// One agent's part of an action.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TargetRow {
    pub agent_id: String,
    pub hostname: String,
    pub request_id: Uuid,
    pub outcome: Option<String>,
    pub reply: Option<Value>,
    pub duration_ms: Option<i32>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The per-agent results by agent id, after `after`; only `outcome` (`pending` for
/// those without one) when given.
pub async fn results(
    pool: &PgPool,
    action: Uuid,
    outcome: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<TargetRow>, StorageError> {
    Ok(sqlx::query_as(
        "SELECT agent_id, hostname, request_id, outcome, reply, duration_ms, finished_at
         FROM fleet_action_targets
         WHERE action_id = $1
           AND ($2::text IS NULL OR COALESCE(outcome, 'pending') = $2)
           AND ($3::text IS NULL OR agent_id > $3)
         ORDER BY agent_id LIMIT $4",
    )
    .bind(action)
    .bind(outcome)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}
