//! The reconciler: runs always, every `--reconcile-interval`, and bounds the offline
//! detection delay by itself (keyspace events are lost while disconnected and can lag
//! by minutes). Each pass:
//! - checks Redis still holds the presence data (the epoch token) and asks for a
//!   re-sync from the KV bucket when it does not;
//! - after a watch caught up, gives agents Postgres has online but no heartbeat
//!   accounts for a deadline, so they are not online forever;
//! - ranges over the deadlines (`ZRANGEBYSCORE -inf now`) and proposes every overdue
//!   agent for an offline transition (re-checked before it is decided);
//! - updates the online gauge.

use std::sync::Arc;
use std::time::Duration;

use presence::PresenceStore;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wire_models::{AgentId, PresenceState};

use crate::health::InputHealth;
use crate::transitions::{Intent, Reason};
use crate::{Signals, Thresholds};

/// Overdue agents read per range query.
const PAGE: usize = 5000;
/// Agents read per query when looking for untracked online agents.
const SWEEP_PAGE: u32 = 5000;

pub(crate) struct Reconciler {
    pub(crate) store: PresenceStore,
    pub(crate) pool: PgPool,
    pub(crate) thresholds: Thresholds,
    pub(crate) health: Arc<InputHealth>,
    pub(crate) intents: mpsc::Sender<Intent>,
    pub(crate) signals: Arc<Signals>,
    pub(crate) interval: Duration,
}

impl Reconciler {
    pub(crate) async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut epoch: Option<String> = None;
        let mut sweep_due = false;
        let mut attempt: u32 = 0;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                _ = self.signals.caught_up.notified() => sweep_due = true,
                _ = self.signals.scan_now.notified() => {}
                _ = tick.tick() => {}
            }
            match self.pass(&mut epoch, &mut sweep_due, &shutdown).await {
                Ok(()) => {
                    if attempt > 0 {
                        tracing::info!(attempts = attempt + 1, "deadline scan works again");
                    }
                    attempt = 0;
                }
                Err(err) => {
                    attempt += 1;
                    if service_kit::backoff::worth_logging(attempt) {
                        tracing::warn!(
                            attempt,
                            error = format!("{err:#}"),
                            "deadline scan failed; retrying next interval"
                        );
                    }
                }
            }
        }
    }

    async fn pass(
        &self,
        epoch: &mut Option<String>,
        sweep_due: &mut bool,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        if self.store.check_epoch(epoch).await? {
            tracing::warn!("redis lost the presence data; re-syncing from the kv bucket");
            metrics::counter!("opspilot_presence_redis_resyncs_total").increment(1);
            self.signals.resync.notify_one();
            // The re-created watch catches up and triggers the sweep.
            *sweep_due = false;
            return Ok(());
        }
        let now = crate::now_ms();
        let live = self.store.count_live(now).await?;
        metrics::gauge!("opspilot_presence_agents_online").set(live as f64);

        if self.health.is_paused() {
            return Ok(());
        }
        if *sweep_due {
            self.sweep(now).await?;
            *sweep_due = false;
        }
        let mut offset = 0;
        let mut proposed = 0usize;
        loop {
            let page = self.store.overdue(now, offset, PAGE).await?;
            let len = page.len();
            for (agent_id, _deadline) in page {
                let intent = Intent { agent_id, state: PresenceState::Offline, reason: Reason::Timeout };
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    sent = self.intents.send(intent) => if sent.is_err() { return Ok(()) },
                }
            }
            proposed += len;
            if len < PAGE {
                break;
            }
            offset += len;
        }
        if proposed > 0 {
            tracing::debug!(proposed, "overdue agents proposed for offline");
        }
        Ok(())
    }

    /// Agents Postgres has online that Redis does not track (their heartbeats were lost
    /// with Redis, or they never sent one through this bucket) get a deadline one
    /// fallback threshold away: unless a heartbeat comes, they go offline then.
    async fn sweep(&self, now: i64) -> anyhow::Result<()> {
        let deadline = now + self.thresholds.fallback();
        let mut after: Option<AgentId> = None;
        let mut added = 0;
        loop {
            let page = storage::presence::online_agents(&self.pool, after.as_ref(), SWEEP_PAGE).await?;
            if page.is_empty() {
                break;
            }
            added += self.store.track_untracked(&page, deadline).await?;
            if page.len() < SWEEP_PAGE as usize {
                break;
            }
            after = page.last().cloned();
        }
        if added > 0 {
            tracing::info!(agents = added, "agents online in postgres without a heartbeat are tracked again");
        }
        Ok(())
    }
}
