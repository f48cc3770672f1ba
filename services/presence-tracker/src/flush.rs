//! `last_seen_at` in Postgres for agents that stay online: collected per agent (the
//! newest wins) and written every `--flush-interval` in one statement per 10,000
//! agents, never one UPDATE per heartbeat. Transitions write it too, on their own.
//!
//! Redis holds every heartbeat's time; Postgres's copy only needs to be roughly right
//! (it is what the API shows when Redis has nothing). So an agent's row is written
//! again only once its heartbeats have moved `--last-seen-resolution` past what was
//! last written: a million agents heartbeating every 30 s would otherwise be 33,000
//! row updates a second, with the default 5 minutes it is about 3,300.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use wire_models::AgentId;

/// Heartbeats recorded since the last flush, and what was last written per agent.
pub(crate) struct LastSeen {
    resolution_ms: i64,
    // Locked only to read or update the maps, never across an await.
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    due: HashMap<AgentId, i64>,
    /// The time last written for each agent, keyed by the id's 48 bits (an agent id is
    /// twelve hex digits): about 20 bytes an agent where the id itself would take 60.
    written: HashMap<u64, i64>,
}

fn compact(id: &AgentId) -> Option<u64> {
    u64::from_str_radix(id.as_str(), 16).ok()
}

impl LastSeen {
    pub(crate) fn new(resolution: Duration) -> Self {
        Self {
            resolution_ms: i64::try_from(resolution.as_millis()).unwrap_or(i64::MAX),
            inner: Mutex::default(),
        }
    }

    pub(crate) fn note(&self, seen: impl IntoIterator<Item = (AgentId, i64)>) {
        let mut inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Inner { due, written } = &mut *inner;
        for (id, at) in seen {
            if let Some(last) = compact(&id).and_then(|key| written.get(&key))
                && at < last.saturating_add(self.resolution_ms)
            {
                continue;
            }
            due.entry(id).and_modify(|t| *t = (*t).max(at)).or_insert(at);
        }
    }

    fn take(&self) -> HashMap<AgentId, i64> {
        std::mem::take(&mut self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).due)
    }

    fn written<'a>(&self, rows: impl IntoIterator<Item = (&'a AgentId, &'a i64)>) {
        let mut inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (id, at) in rows {
            if let Some(key) = compact(id) {
                inner.written.insert(key, *at);
            }
        }
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
                    last_seen.written(held.iter());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> AgentId {
        AgentId::parse(&format!("{n:012x}")).unwrap()
    }

    #[test]
    fn an_agent_is_written_again_only_a_resolution_after_its_last_write() {
        let seen = LastSeen::new(Duration::from_secs(60));
        seen.note([(id(1), 1_000), (id(2), 1_000)]);
        let due = seen.take();
        assert_eq!(due.len(), 2);
        seen.written(due.iter());
        // Within the resolution: nothing to write.
        seen.note([(id(1), 30_000), (id(2), 60_999)]);
        assert!(seen.take().is_empty());
        // A minute past the last write: due again, with the newest time.
        seen.note([(id(1), 61_000), (id(1), 62_000), (id(3), 5)]);
        let due = seen.take();
        assert_eq!(due, HashMap::from([(id(1), 62_000), (id(3), 5)]));
    }

    #[test]
    fn a_flush_that_failed_keeps_the_agents_due() {
        let seen = LastSeen::new(Duration::from_secs(60));
        seen.note([(id(1), 1_000)]);
        let _lost = seen.take();
        // Nothing recorded as written: the next heartbeat is due at once.
        seen.note([(id(1), 2_000)]);
        assert_eq!(seen.take(), HashMap::from([(id(1), 2_000)]));
    }

    #[test]
    fn a_zero_resolution_writes_every_newer_heartbeat() {
        let seen = LastSeen::new(Duration::ZERO);
        seen.note([(id(1), 1_000)]);
        let due = seen.take();
        seen.written(due.iter());
        seen.note([(id(1), 1_001)]);
        assert_eq!(seen.take(), HashMap::from([(id(1), 1_001)]));
    }
}
