//! Inventory history: a row only when an agent's snapshot hash changes.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use wire_models::AgentId;

use crate::StorageError;

/// A decoded snapshot with its hash.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub agent_id: AgentId,
    pub hash: String,
    pub hostname: String,
    pub meta: Value,
    pub data: Value,
    pub collected_at: DateTime<Utc>,
}

impl Snapshot {
    /// The row an agent's inventory report is stored as (the report already checked).
    pub fn from_report(report: wire_models::InventoryReport) -> Result<Self, serde_json::Error> {
        let hash = report.snapshot_hash();
        let data = serde_json::to_value(&report.snapshot)?;
        Ok(Self {
            agent_id: report.agent_id,
            hash,
            hostname: report.snapshot.hostname,
            meta: Value::Object(report.snapshot.meta),
            data,
            collected_at: report.collected_at,
        })
    }
}

/// What one batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InventoryOutcome {
    /// History rows written (snapshots whose hash differed from the agent's latest).
    pub rows: u64,
    /// Snapshots identical to the agent's latest.
    pub unchanged: u64,
}

/// Writes a batch of snapshots (in stream order). The agents' rows are locked first, in
/// id order, so two replicas handling snapshots of one agent take turns: each compares
/// against the hash the other just stored, and one distinct snapshot makes one row.
pub async fn ingest_snapshots(
    pool: &PgPool,
    snapshots: &[Snapshot],
) -> Result<InventoryOutcome, StorageError> {
    if snapshots.is_empty() {
        return Ok(InventoryOutcome::default());
    }
    let mut ids: Vec<&str> = snapshots.iter().map(|s| s.agent_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();

    let mut tx = pool.begin().await?;
    let current: Vec<(String, Option<String>, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT id, inventory_hash, inventory_at FROM agents WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let mut latest: HashMap<String, (Option<String>, Option<DateTime<Utc>>)> =
        current.into_iter().map(|(id, hash, at)| (id, (hash, at))).collect();

    let mut rows: Vec<&Snapshot> = Vec::new();
    let mut newest: HashMap<&str, &Snapshot> = HashMap::new();
    let mut outcome = InventoryOutcome::default();
    for snap in snapshots {
        let Some((hash, at)) = latest.get_mut(snap.agent_id.as_str()) else {
            // The agent was removed between the enrolled check and now; nothing to keep.
            continue;
        };
        if hash.as_deref() == Some(snap.hash.as_str()) {
            outcome.unchanged += 1;
        } else {
            rows.push(snap);
            *hash = Some(snap.hash.clone());
        }
        // Hostname and meta follow the most recently collected snapshot.
        if at.is_none_or(|t| snap.collected_at >= t) {
            *at = Some(snap.collected_at);
            newest.insert(snap.agent_id.as_str(), snap);
        }
    }

    if !rows.is_empty() {
        let agent_ids: Vec<&str> = rows.iter().map(|s| s.agent_id.as_str()).collect();
        let hashes: Vec<&str> = rows.iter().map(|s| s.hash.as_str()).collect();
        let data: Vec<&Value> = rows.iter().map(|s| &s.data).collect();
        let collected: Vec<DateTime<Utc>> = rows.iter().map(|s| s.collected_at).collect();
        sqlx::query(
            "INSERT INTO agents_inventory (agent_id, hash, data, collected_at)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::jsonb[], $4::timestamptz[])",
        )
        .bind(&agent_ids)
        .bind(&hashes)
        .bind(&data)
        .bind(&collected)
        .execute(&mut *tx)
        .await?;
        outcome.rows = rows.len() as u64;
    }

    // Every agent whose hash or newest snapshot moved gets one UPDATE row; hostname and
    // meta stay as stored (NULL -> COALESCE) when only an older snapshot arrived.
    let changed: std::collections::HashSet<&str> = rows.iter().map(|r| r.agent_id.as_str()).collect();
    let touched: Vec<&str> = latest
        .keys()
        .map(String::as_str)
        .filter(|id| newest.contains_key(id) || changed.contains(id))
        .collect();
    if !touched.is_empty() {
        let hashes: Vec<Option<&str>> = touched.iter().map(|id| latest[*id].0.as_deref()).collect();
        let ats: Vec<Option<DateTime<Utc>>> = touched.iter().map(|id| latest[*id].1).collect();
        let hostnames: Vec<Option<&str>> =
            touched.iter().map(|id| newest.get(id).map(|s| s.hostname.as_str())).collect();
        let metas: Vec<Option<&Value>> = touched.iter().map(|id| newest.get(id).map(|s| &s.meta)).collect();
        let meta_labels: Vec<Option<Value>> =
            touched.iter().map(|id| newest.get(id).map(|s| labels_of(&s.meta))).collect();
        sqlx::query(
            "UPDATE agents SET inventory_hash = u.hash, inventory_at = u.at,
                               hostname = COALESCE(u.hostname, agents.hostname),
                               meta = COALESCE(u.meta, agents.meta),
                               meta_labels = COALESCE(u.meta_labels, agents.meta_labels), updated_at = now()
             FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::jsonb[], $6::jsonb[])
                  AS u(id, hash, at, hostname, meta, meta_labels)
             WHERE agents.id = u.id",
        )
        .bind(&touched)
        .bind(&hashes)
        .bind(&ats)
        .bind(&hostnames)
        .bind(&metas)
        .bind(&meta_labels)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(outcome)
}

/// The labels a snapshot's `meta` gives its agent (see `wire_models::effective_labels`).
fn labels_of(meta: &Value) -> Value {
    let labels = match meta {
        Value::Object(meta) => wire_models::effective_labels(meta, &std::collections::BTreeMap::new()),
        _ => std::collections::BTreeMap::new(),
    };
    Value::Object(labels.into_iter().map(|(k, v)| (k, Value::String(v))).collect())
}

/// One stored snapshot.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InventoryRow {
    pub id: i64,
    pub agent_id: String,
    pub hash: String,
    pub data: Value,
    pub collected_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// An agent's history, newest first; `before` is the last id of the previous page.
pub async fn history(
    pool: &PgPool,
    agent: &AgentId,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<InventoryRow>, StorageError> {
    Ok(sqlx::query_as(
        "SELECT id, agent_id, hash, data, collected_at, created_at FROM agents_inventory
         WHERE agent_id = $1 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
    )
    .bind(agent.as_str())
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

pub async fn get(pool: &PgPool, agent: &AgentId, id: i64) -> Result<Option<InventoryRow>, StorageError> {
    Ok(sqlx::query_as(
        "SELECT id, agent_id, hash, data, collected_at, created_at FROM agents_inventory WHERE agent_id = $1 AND id = $2",
    )
    .bind(agent.as_str())
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

pub async fn latest(pool: &PgPool, agent: &AgentId) -> Result<Option<InventoryRow>, StorageError> {
    Ok(history(pool, agent, None, 1).await?.into_iter().next())
}
