//! `last_seen_at` in Postgres for agents that stay online: collected per agent (the
//! newest wins) and written every `--flush-interval` in one statement per 10,000
//! agents, never one UPDATE per heartbeat. Transitions write it too, on their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use wire_models::AgentId;

/// Heartbeats recorded since the last flush.
#[derive(Default)]
pub(crate) struct LastSeen {
    // Locked only to insert or swap the map, never across an await.
    seen: Mutex<HashMap<AgentId, i64>>,
}

impl LastSeen {
    pub(crate) fn note(&self, seen: impl IntoIterator<Item = (AgentId, i64)>) {
        let mut map = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (id, at) in seen {
            map.entry(id).and_modify(|t| *t = (*t).max(at)).or_insert(at);
        }
    }

    fn take(&self) -> HashMap<AgentId, i64> {
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// Flushes every `interval` until `shutdown`, then once more.
pub(crate) async fn run(
    pool: PgPool,
    last_seen: Arc<LastSeen>,
    interval: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut held: HashMap<AgentId, i64> = HashMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut attempt: u32 = 0;
    loop {
        let stopping = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tick.tick() => false,
        };
        for (id, at) in last_seen.take() {
            held.entry(id).and_modify(|t| *t = (*t).max(at)).or_insert(at);
        }
        if !held.is_empty() {
            let rows: Vec<(AgentId, DateTime<Utc>)> = held
                .iter()
                .filter_map(|(id, ms)| Some((id.clone(), DateTime::from_timestamp_millis(*ms)?)))
                .collect();
            let started = std::time::Instant::now();
            match storage::presence::flush_last_seen(&pool, &rows).await {
                Ok(updated) => {
                    if attempt > 0 {
                        tracing::info!(attempts = attempt + 1, "writing last_seen_at works again");
                    }
                    attempt = 0;
                    held.clear();
                    metrics::counter!("opspilot_presence_last_seen_rows_total").increment(updated);
                    metrics::histogram!("opspilot_presence_last_seen_flush_seconds")
                        .record(started.elapsed().as_secs_f64());
                }
                Err(err) if err.is_transient() => {
                    attempt += 1;
                    if service_kit::backoff::worth_logging(attempt) {
                        tracing::warn!(attempt, agents = held.len(), error = %err, "cannot write last_seen_at; keeping it for the next flush");
                    }
                }
                Err(err) => {
                    tracing::error!(agents = held.len(), error = %err, "postgres refused a last_seen_at flush; dropping it");
                    held.clear();
                }
            }
        }
        if stopping {
            return Ok(());
        }
    }
}
