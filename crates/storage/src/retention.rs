//! Retention: how long each history is kept, and the pruning that enforces it.
//!
//! Rows go a small batch at a time (one short transaction each, oldest first, through an
//! index on the retention's own cutoff), with a pause between batches, so pruning a
//! backlog never holds locks for long or takes the database from the ingest. One
//! replica prunes at a time: a run holds a session advisory lock, and a replica that
//! finds it taken skips its turn.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::StorageError;

/// The advisory lock key of a pruning run ("opspilot retention").
const LOCK_KEY: i64 = 0x6f70_7370_7265_7431;

/// What is kept; a zero duration (or zero snapshots) keeps everything of that family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Resolved incidents, counted from their resolution.
    pub resolved_incidents: Duration,
    /// Inventory history: at least this many of each agent's latest snapshots...
    pub inventory_snapshots: u32,
    /// ...and every snapshot younger than this.
    pub inventory_age: Duration,
    /// Presence transitions, by when they happened.
    pub presence_transitions: Duration,
    /// The audit log, by when the entry was started.
    pub audit_log: Duration,
    /// The idempotency ledger: how long an event id is remembered, by the event's
    /// `occurred_at` (whole days are dropped) or, for events dated outside the days
    /// with a partition, by when it was ingested.
    pub ledger_window: Duration,
}

/// A family of rows with a retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    ResolvedIncidents,
    InventoryHistory,
    PresenceTransitions,
    AuditLog,
    /// Ledger rows of events dated outside the days with a partition.
    LedgerUndated,
    /// Ledger rows from before the ledger was partitioned.
    LedgerLegacy,
}

impl Family {
    pub const ALL: [Family; 6] = [
        Family::ResolvedIncidents,
        Family::InventoryHistory,
        Family::PresenceTransitions,
        Family::AuditLog,
        Family::LedgerUndated,
        Family::LedgerLegacy,
    ];

    /// Its table, as metrics and logs name it.
    pub fn table(self) -> &'static str {
        match self {
            Family::ResolvedIncidents => "incidents",
            Family::InventoryHistory => "agents_inventory",
            Family::PresenceTransitions => "presence_transitions",
            Family::AuditLog => "audit_log",
            Family::LedgerUndated => "ingested_events_default",
            Family::LedgerLegacy => "ingested_events_legacy",
        }
    }

    /// The age past which its rows may go, or None when it keeps everything.
    fn max_age(self, policy: &Policy) -> Option<Duration> {
        let age = match self {
            Family::ResolvedIncidents => policy.resolved_incidents,
            Family::InventoryHistory if policy.inventory_snapshots == 0 => Duration::ZERO,
            Family::InventoryHistory => policy.inventory_age,
            Family::PresenceTransitions => policy.presence_transitions,
            Family::AuditLog => policy.audit_log,
            Family::LedgerUndated | Family::LedgerLegacy => policy.ledger_window,
        };
        (!age.is_zero()).then_some(age)
    }

    /// Deletes up to `$2` rows older than `$1` (and, for inventory, not among the agent's
    /// `$3` latest); returns their count and size.
    fn delete_sql(self) -> &'static str {
        /// Deletes the rows of `$table` whose `$key` is among `$chosen` (at most `$2` of
        /// them, oldest first) and counts them and their size.
        macro_rules! delete_batch {
            ($table:literal, $key:literal, $chosen:literal) => {
                concat!(
                    "WITH d AS (DELETE FROM ",
                    $table,
                    " WHERE ",
                    $key,
                    " IN (",
                    $chosen,
                    ")
                     RETURNING pg_column_size(",
                    $table,
                    ".*) AS size)
                     SELECT count(*), coalesce(sum(size), 0)::bigint FROM d"
                )
            };
        }
        match self {
            Family::ResolvedIncidents => delete_batch!(
                "incidents",
                "id",
                "SELECT id FROM incidents WHERE status = 'resolved' AND resolved_at < $1
                 ORDER BY resolved_at LIMIT $2"
            ),
            Family::InventoryHistory => delete_batch!(
                "agents_inventory",
                "id",
                "SELECT i.id FROM agents_inventory i
                 WHERE i.created_at < $1
                   AND i.id < (SELECT k.id FROM agents_inventory k WHERE k.agent_id = i.agent_id
                               ORDER BY k.id DESC OFFSET $3 - 1 LIMIT 1)
                 ORDER BY i.created_at LIMIT $2"
            ),
            Family::PresenceTransitions => delete_batch!(
                "presence_transitions",
                "id",
                "SELECT id FROM presence_transitions WHERE changed_at < $1 ORDER BY changed_at LIMIT $2"
            ),
            Family::AuditLog => delete_batch!(
                "audit_log",
                "id",
                "SELECT id FROM audit_log WHERE started_at < $1 ORDER BY started_at LIMIT $2"
            ),
            Family::LedgerUndated => delete_batch!(
                "ingested_events_default",
                "(event_id, occurred_at)",
                "SELECT event_id, occurred_at FROM ingested_events_default WHERE ingested_at < $1
                 ORDER BY ingested_at LIMIT $2"
            ),
            Family::LedgerLegacy => delete_batch!(
                "ingested_events_legacy",
                "event_id",
                "SELECT event_id FROM ingested_events_legacy WHERE ingested_at < $1 ORDER BY ingested_at LIMIT $2"
            ),
        }
    }

    /// When its oldest row kept was written (or happened).
    fn oldest_sql(self) -> &'static str {
        match self {
            Family::ResolvedIncidents => "SELECT min(created_at) FROM incidents",
            Family::InventoryHistory => "SELECT min(created_at) FROM agents_inventory",
            Family::PresenceTransitions => "SELECT min(changed_at) FROM presence_transitions",
            Family::AuditLog => "SELECT min(started_at) FROM audit_log",
            Family::LedgerUndated => "SELECT min(ingested_at) FROM ingested_events_default",
            Family::LedgerLegacy => "SELECT min(ingested_at) FROM ingested_events_legacy",
        }
    }
}

/// How hard a run may push.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Rows per delete statement.
    pub batch: u32,
    /// Rest between two statements.
    pub pause: Duration,
}

/// What a run removed from one family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    pub rows: u64,
    pub bytes: u64,
}

/// The outcome of one family's pruning within a run.
#[derive(Debug, Clone)]
pub struct Pruned {
    pub family: Family,
    pub removed: Removed,
    /// The oldest row left, when the family has any.
    pub oldest_kept: Option<DateTime<Utc>>,
    pub took: Duration,
}

/// A run's outcome.
#[derive(Debug)]
pub enum Run {
    /// Another replica holds the lock; nothing was done.
    Skipped,
    /// Made and dropped the ledger's day partitions, and pruned every family (or as
    /// far as it got before `stop`).
    Done { ledger: crate::ledger::Maintained, pruned: Vec<Pruned>, stopped: bool },
}

/// Removes one batch of `family` past `policy` as of `now`.
pub async fn prune_batch(
    pool: &PgPool,
    family: Family,
    policy: &Policy,
    now: DateTime<Utc>,
    batch: u32,
) -> Result<Removed, StorageError> {
    let Some(age) = family.max_age(policy) else { return Ok(Removed::default()) };
    let cutoff = now - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
    let (rows, bytes): (i64, i64) = sqlx::query_as(family.delete_sql())
        .bind(cutoff)
        .bind(i64::from(batch))
        .bind(i64::from(policy.inventory_snapshots.max(1)))
        .fetch_one(pool)
        .await?;
    Ok(Removed { rows: u64::try_from(rows).unwrap_or(0), bytes: u64::try_from(bytes).unwrap_or(0) })
}

/// Prunes every family as of `now`, unless another replica is at it. Between two
/// statements it rests `pace.pause` and checks `stop`: a stop ends the run after the
/// statement under way (whose transaction is whole either way).
pub async fn run(
    pool: &PgPool,
    policy: &Policy,
    now: DateTime<Utc>,
    pace: Pace,
    stop: &CancellationToken,
) -> Result<Run, StorageError> {
    // A session lock on a connection of the run's own, released with it.
    let mut conn = pool.acquire().await?;
    let locked: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(LOCK_KEY).fetch_one(&mut *conn).await?;
    if !locked {
        return Ok(Run::Skipped);
    }
    let result = prune_all(pool, policy, now, pace, stop).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)").bind(LOCK_KEY).execute(&mut *conn).await;
    if unlocked.is_err() {
        // The lock dies with the session: close this connection rather than pool it.
        conn.close_on_drop();
    }
    result
}

async fn prune_all(
    pool: &PgPool,
    policy: &Policy,
    now: DateTime<Utc>,
    pace: Pace,
    stop: &CancellationToken,
) -> Result<Run, StorageError> {
    let ledger = crate::ledger::maintain(pool, now, policy.ledger_window).await?;
    let mut pruned = Vec::with_capacity(Family::ALL.len());
    let mut stopped = false;
    for family in Family::ALL {
        let started = Instant::now();
        let mut removed = Removed::default();
        while !stop.is_cancelled() {
            let batch = prune_batch(pool, family, policy, now, pace.batch).await?;
            removed.rows += batch.rows;
            removed.bytes += batch.bytes;
            if batch.rows < u64::from(pace.batch) {
                break;
            }
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(pace.pause) => {}
            }
        }
        let oldest_kept: Option<DateTime<Utc>> =
            sqlx::query_scalar(family.oldest_sql()).fetch_one(pool).await?;
        pruned.push(Pruned { family, removed, oldest_kept, took: started.elapsed() });
        if stop.is_cancelled() {
            stopped = true;
            break;
        }
    }
    Ok(Run::Done { ledger, pruned, stopped })
}
