//! The idempotency ledger's partitions: one per UTC day of the events' `occurred_at`,
//! made ahead of time and dropped whole once the window has passed (see the ledger's
//! migration for why every copy of an event meets its original).

use chrono::{DateTime, Duration as Span, NaiveDate, Utc};
use sqlx::PgPool;

use crate::StorageError;

/// Days ahead of today that have their partition before they begin.
pub const DAYS_AHEAD: i64 = 3;

const PREFIX: &str = "ingested_events_";

/// A day's partition that was dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct Dropped {
    pub day: NaiveDate,
    /// Postgres's estimate (`reltuples`): counting a day of events would read all of it.
    pub rows_estimate: u64,
    pub bytes: u64,
}

/// What one pass over the partitions did.
#[derive(Debug, Clone, Default)]
pub struct Maintained {
    pub created: Vec<NaiveDate>,
    pub dropped: Vec<Dropped>,
}

/// The day partitions that exist, oldest first.
pub async fn partitions(pool: &PgPool) -> Result<Vec<NaiveDate>, StorageError> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'ingested_events'::regclass",
    )
    .fetch_all(pool)
    .await?;
    let mut days: Vec<NaiveDate> = names
        .iter()
        .filter_map(|n| n.strip_prefix(PREFIX))
        .filter_map(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok())
        .collect();
    days.sort_unstable();
    Ok(days)
}

/// Makes the partitions of yesterday to [`DAYS_AHEAD`] days ahead of `now`, and, when
/// `window` is not zero, drops every day whose events are all older than `now - window`.
pub async fn maintain(
    pool: &PgPool,
    now: DateTime<Utc>,
    window: std::time::Duration,
) -> Result<Maintained, StorageError> {
    let mut done = Maintained::default();
    let today = now.date_naive();
    for offset in -1..=DAYS_AHEAD {
        let day = today + Span::days(offset);
        let created: bool =
            sqlx::query_scalar("SELECT ledger_ensure_partition($1)").bind(day).fetch_one(pool).await?;
        if created {
            done.created.push(day);
        }
    }
    if window.is_zero() {
        return Ok(done);
    }
    let horizon = now - Span::from_std(window).unwrap_or(Span::MAX);
    for day in partitions(pool).await? {
        // The day ends at the next midnight: all of it is past the horizon only then.
        let end = (day + Span::days(1)).and_hms_opt(0, 0, 0).map(|t| t.and_utc());
        if end.is_none_or(|end| end > horizon) {
            continue;
        }
        done.dropped.push(drop_day(pool, day).await?);
    }
    Ok(done)
}

async fn drop_day(pool: &PgPool, day: NaiveDate) -> Result<Dropped, StorageError> {
    // Built from a parsed date: nothing from outside reaches the statement's text.
    let name = format!("{PREFIX}{}", day.format("%Y%m%d"));
    let mut tx = pool.begin().await?;
    // Dropping a partition locks the ledger for a moment; never queue the ingest behind
    // a long wait for that lock (the next turn tries again).
    sqlx::query("SET LOCAL lock_timeout = '5s'").execute(&mut *tx).await?;
    let (rows, bytes): (f32, i64) = sqlx::query_as(
        "SELECT greatest(c.reltuples, 0), pg_total_relation_size(c.oid) FROM pg_class c WHERE c.relname = $1",
    )
    .bind(&name)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {name}"))).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(Dropped { day, rows_estimate: rows as u64, bytes: u64::try_from(bytes).unwrap_or(0) })
}
