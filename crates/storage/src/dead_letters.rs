//! The dead-letter budget's shared counter: one row per agent and hour, charged by
//! every replica that parks a letter for that agent.

use sqlx::PgPool;

use crate::StorageError;

/// What an agent has used of its budget this hour, this letter included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub letters: u64,
    pub bytes: u64,
}

/// Charges one letter of `bytes` (what would be copied of its payload) to `agent` for
/// the current hour and returns the totals. One statement, so replicas charging at
/// once each see a distinct total.
pub async fn charge(pool: &PgPool, agent: &str, bytes: u64) -> Result<Usage, StorageError> {
    let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
    let (letters, total): (i64, i64) = sqlx::query_as(
        "INSERT INTO dead_letter_budget (agent, window_start, letters, bytes)
         VALUES ($1, date_trunc('hour', now()), 1, $2)
         ON CONFLICT (agent, window_start)
         DO UPDATE SET letters = dead_letter_budget.letters + 1, bytes = dead_letter_budget.bytes + $2
         RETURNING letters, bytes",
    )
    .bind(agent)
    .bind(bytes)
    .fetch_one(pool)
    .await?;
    if letters == 1 {
        // A new hour for this agent: its past ones are of no use any more.
        sqlx::query(
            "DELETE FROM dead_letter_budget WHERE agent = $1 AND window_start < date_trunc('hour', now())",
        )
        .bind(agent)
        .execute(pool)
        .await?;
    }
    Ok(Usage { letters: u64::try_from(letters).unwrap_or(0), bytes: u64::try_from(total).unwrap_or(0) })
}
