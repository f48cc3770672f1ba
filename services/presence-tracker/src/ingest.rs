//! Heartbeats in: decoded and checked, bad ones dead-lettered, agents that are not
//! enrolled ignored, the rest recorded in Redis in batches (one script call per
//! [`presence::MAX_BATCH`] agents). Agents whose fresh heartbeat finds them not online
//! are handed to the transitions.
//!
//! While Redis is unreachable heartbeats are merged per agent (the newest wins) and
//! recorded once it is back, so memory stays bounded by the fleet's size and nothing an
//! agent said is lost; offline detection pauses meanwhile.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use presence::{HeartbeatRecord, PresenceStore};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wire_models::{AgentId, DecodeError, DlqOrigin, Heartbeat, PresenceState, Subjects, WireMessage};

use crate::Thresholds;
use crate::flush::LastSeen;
use crate::health::{InputHealth, Pause};
use crate::known::KnownAgents;
use crate::transitions::{Intent, Reason};
use crate::watch::RawHeartbeat;

pub(crate) struct Ingest {
    pub(crate) store: PresenceStore,
    pub(crate) pool: PgPool,
    pub(crate) known: KnownAgents,
    pub(crate) js: async_nats::jetstream::Context,
    pub(crate) subjects: Subjects,
    pub(crate) bucket: String,
    /// How much each agent may park in the dead-letter stream.
    pub(crate) dlq_budget: Arc<natsbus::DeadLetterBudget>,
    pub(crate) thresholds: Thresholds,
    pub(crate) health: Arc<InputHealth>,
    pub(crate) intents: mpsc::Sender<Intent>,
    pub(crate) last_seen: Arc<LastSeen>,
    pub(crate) batch_size: usize,
    pub(crate) batch_interval: Duration,
}

/// Why a heartbeat was refused, as it goes into the dead-letter headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub(crate) reason: &'static str,
    pub(crate) detail: String,
}

/// Checks one entry: the key is an agent id, the value a valid heartbeat of that same
/// agent. The heartbeat counts from when the server stored it (never later than now):
/// the agent's own clock is not trusted, and after a gap the stored time tells a
/// current heartbeat from a stale one.
pub(crate) fn decode(
    raw: &RawHeartbeat,
    now_ms: i64,
    thresholds: Thresholds,
) -> Result<HeartbeatRecord, Rejection> {
    let reject = |e: &DecodeError| Rejection { reason: e.code(), detail: e.to_string() };
    let key_id = AgentId::parse(&raw.key)
        .map_err(|e| Rejection { reason: "invalid_agent_id", detail: format!("key {:?}: {e}", raw.key) })?;
    let heartbeat: Heartbeat = wire_models::decode(&raw.value).map_err(|e| reject(&e))?;
    if heartbeat.agent_id != key_id {
        return Err(reject(&DecodeError::AgentMismatch {
            message: Heartbeat::NAME,
            subject: key_id.to_string(),
            body: heartbeat.agent_id.to_string(),
        }));
    }
    Ok(HeartbeatRecord {
        agent_id: key_id,
        last_seen_ms: raw.stored_ms.min(now_ms),
        threshold_ms: thresholds.for_interval(heartbeat.interval_secs),
    })
}

impl Ingest {
    pub(crate) async fn run(
        self,
        mut rx: mpsc::Receiver<RawHeartbeat>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut pending: HashMap<AgentId, HeartbeatRecord> = HashMap::new();
        let mut dead_lettered: HashSet<u64> = HashSet::new();
        let mut buf = Vec::with_capacity(self.batch_size);
        let mut tick = tokio::time::interval(self.batch_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_flush = Instant::now();
        let mut retry_at: Option<Instant> = None;
        let mut attempt: u32 = 0;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                n = rx.recv_many(&mut buf, self.batch_size) => {
                    if n == 0 {
                        break;
                    }
                    self.accept(std::mem::take(&mut buf), &mut pending, &mut dead_lettered).await;
                }
                _ = tick.tick() => {}
            }
            let due = pending.len() >= self.batch_size || last_flush.elapsed() >= self.batch_interval;
            let allowed = retry_at.is_none_or(|at| Instant::now() >= at);
            if pending.is_empty() || !due || !allowed {
                continue;
            }
            last_flush = Instant::now();
            match self.flush(&mut pending).await {
                Ok(()) => {
                    if attempt > 0 {
                        tracing::info!(attempts = attempt + 1, "recording heartbeats in redis works again");
                        self.health.set(Pause::Redis, false);
                    }
                    attempt = 0;
                    retry_at = None;
                }
                Err(err) => {
                    attempt += 1;
                    self.health.set(Pause::Redis, true);
                    if service_kit::backoff::worth_logging(attempt) {
                        tracing::warn!(attempt, error = %err, held = pending.len(), "cannot record heartbeats in redis; holding them and retrying");
                    }
                    retry_at = Some(Instant::now() + crate::RETRY.delay(attempt));
                }
            }
        }
        // Record what is held before stopping (bounded by the shutdown grace).
        if !pending.is_empty()
            && let Err(err) = self.flush(&mut pending).await
        {
            tracing::warn!(error = %err, held = pending.len(), "heartbeats not recorded at shutdown");
        }
        Ok(())
    }

    /// Decodes a chunk (off the async threads), dead-letters what is invalid and merges
    /// the rest into `pending`.
    async fn accept(
        &self,
        raws: Vec<RawHeartbeat>,
        pending: &mut HashMap<AgentId, HeartbeatRecord>,
        dead_lettered: &mut HashSet<u64>,
    ) {
        let (now, thresholds) = (crate::now_ms(), self.thresholds);
        let decoded = tokio::task::spawn_blocking(move || {
            raws.into_iter()
                .map(|raw| {
                    let result = decode(&raw, now, thresholds);
                    (raw, result)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let decoded = match decoded {
            Ok(decoded) => decoded,
            Err(err) => {
                // Only a panic in decoding gets here; the next re-sync brings them again.
                tracing::error!(error = %err, "decoding heartbeats failed");
                return;
            }
        };
        for (raw, result) in decoded {
            match result {
                Ok(record) => {
                    pending
                        .entry(record.agent_id.clone())
                        .and_modify(|held| {
                            if record.last_seen_ms >= held.last_seen_ms {
                                *held = record.clone();
                            }
                        })
                        .or_insert(record);
                }
                Err(rejection) => {
                    metrics::counter!("opspilot_presence_heartbeats_total", "outcome" => "rejected")
                        .increment(1);
                    // A re-sync delivers the same entry again; park it once.
                    if dead_lettered.len() > 100_000 {
                        dead_lettered.clear();
                    }
                    if dead_lettered.insert(raw.revision) {
                        self.dead_letter(raw, rejection);
                    }
                }
            }
        }
    }

    fn dead_letter(&self, raw: RawHeartbeat, rejection: Rejection) {
        let (js, subjects, budget) = (self.js.clone(), self.subjects.clone(), Arc::clone(&self.dlq_budget));
        let pool = self.pool.clone();
        let subject = Subjects::kv_subject(&self.bucket, &raw.key);
        // The key is the agent (its own credentials can write no other); a key that
        // is no agent id shares one allowance.
        let agent = AgentId::parse(&raw.key).map_or_else(|_| "unidentified".to_owned(), |id| id.to_string());
        tokio::spawn(async move {
            let letter = natsbus::DeadLetter {
                origin: DlqOrigin::Heartbeats,
                subject: &subject,
                payload: raw.value,
                stream_sequence: Some(raw.revision),
                reason: rejection.reason,
                detail: &rejection.detail,
            };
            let charge = |bytes| {
                let (pool, agent) = (&pool, agent.as_str());
                async move {
                    let usage = storage::dead_letters::charge(pool, agent, bytes).await?;
                    Ok::<_, storage::StorageError>(natsbus::Usage {
                        letters: usage.letters,
                        bytes: usage.bytes,
                    })
                }
            };
            match natsbus::dead_letter_within(&js, &subjects, &budget, &agent, letter, charge).await {
                Ok(_) => tracing::debug!(
                    key = %raw.key,
                    reason = rejection.reason,
                    detail = %rejection.detail,
                    "heartbeat dead-lettered"
                ),
                Err(err) => tracing::warn!(key = %raw.key, error = %err, "dead-lettering a heartbeat failed"),
            }
        });
    }

    /// Records the enrolled agents' heartbeats held in `pending`; on failure they go
    /// back into it. Agents Postgres could not be asked about stay for the next flush.
    async fn flush(
        &self,
        pending: &mut HashMap<AgentId, HeartbeatRecord>,
    ) -> Result<(), storage::redis::RedisError> {
        let enrollment = self.known.check(&self.pool, pending.keys()).await;
        let mut batch = Vec::with_capacity(pending.len());
        let mut unknown = 0u64;
        pending.retain(|id, record| {
            if enrollment.enrolled.contains(id) {
                batch.push(record.clone());
                false
            } else if enrollment.undecided.contains(id) {
                true
            } else {
                unknown += 1;
                false
            }
        });
        if unknown > 0 {
            metrics::counter!("opspilot_presence_heartbeats_total", "outcome" => "unknown_agent")
                .increment(unknown);
            tracing::debug!(unknown, "ignored heartbeats of agents that are not enrolled");
        }
        if batch.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let wake = match self.store.record(&batch, crate::now_ms()).await {
            Ok(wake) => wake,
            Err(err) => {
                for record in batch {
                    pending
                        .entry(record.agent_id.clone())
                        .and_modify(|held| {
                            if record.last_seen_ms > held.last_seen_ms {
                                *held = record.clone();
                            }
                        })
                        .or_insert(record);
                }
                return Err(err);
            }
        };
        metrics::histogram!("opspilot_presence_record_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("opspilot_presence_record_batch_size").record(batch.len() as f64);
        metrics::counter!("opspilot_presence_heartbeats_total", "outcome" => "recorded")
            .increment(batch.len() as u64);
        self.last_seen.note(batch.iter().map(|r| (r.agent_id.clone(), r.last_seen_ms)));
        for agent_id in wake {
            let intent = Intent { agent_id, state: PresenceState::Online, reason: Reason::Heartbeat };
            if self.intents.send(intent).await.is_err() {
                break; // the transitions task stopped: shutting down
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(key: &str, value: &[u8]) -> RawHeartbeat {
        RawHeartbeat {
            key: key.into(),
            value: bytes::Bytes::copy_from_slice(value),
            revision: 7,
            stored_ms: 5_000,
        }
    }

    fn heartbeat(id: &str, interval: u32) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "v": 1, "agent_id": id, "seq": 1, "sent_at": "2026-11-26T12:00:00Z", "interval_secs": interval
        }))
        .unwrap()
    }

    const THRESHOLDS: Thresholds = Thresholds { missed: 3, fixed: None };

    #[test]
    fn a_valid_heartbeat_counts_from_when_the_server_stored_it() {
        let record = decode(&raw("a1b2c3d4e5f6", &heartbeat("a1b2c3d4e5f6", 10)), 9_000, THRESHOLDS).unwrap();
        assert_eq!(record.last_seen_ms, 5_000);
        assert_eq!(record.threshold_ms, 30_000);
        // A server clock ahead of ours never puts a heartbeat in the future.
        let record = decode(&raw("a1b2c3d4e5f6", &heartbeat("a1b2c3d4e5f6", 10)), 4_000, THRESHOLDS).unwrap();
        assert_eq!(record.last_seen_ms, 4_000);
    }

    #[test]
    fn bad_entries_are_refused_with_a_reason() {
        let reason =
            |key: &str, value: &[u8]| decode(&raw(key, value), 9_000, THRESHOLDS).unwrap_err().reason;
        assert_eq!(reason("a1b2c3d4e5f6", &heartbeat("0badc0ffee00", 10)), "agent_mismatch");
        assert_eq!(reason("NOT-AN-AGENT", &heartbeat("a1b2c3d4e5f6", 10)), "invalid_agent_id");
        assert_eq!(reason("a1b2c3d4e5f6", b"\xff\xfe garbage"), "malformed_json");
        assert_eq!(reason("a1b2c3d4e5f6", &heartbeat("a1b2c3d4e5f6", 0)), "invalid_message");
        assert_eq!(reason("a1b2c3d4e5f6", &vec![b' '; 5000]), "too_large");
    }
}
