//! The supervised KV watch: every key of the bucket, starting from its current values,
//! so each (re)start re-syncs everything the tracker may have missed.
//!
//! async-nats watchers can hang after a server restart (nats.rs #1596) and a hung
//! watch reports nothing, so the watch is re-created when:
//! - it returns an error or ends;
//! - the client reconnected (the server may have restarted; agents could not put
//!   heartbeats meanwhile, so this also restarts every agent's threshold);
//! - it looks stalled: the bucket's stream holds entries newer than the last one
//!   received and nothing arrived for `stall_timeout` while the connection is up.
//!   Comparing with the stream's last sequence tells a stalled watch from a quiet
//!   fleet, so the timeout can be short without false alarms;
//! - Redis lost the presence data (the reconciler asks for a re-sync).
//!
//! While the bucket's stream does not answer a position check (a cluster electing its
//! new leader), offline detection pauses; when it answers again every agent gets its
//! full threshold, since none could put a heartbeat meanwhile.

use service_kit::backoff::Backoff;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{Operation, Watch};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Signals;
use crate::health::{InputHealth, Pause};

/// A heartbeat as the bucket delivered it, not yet decoded.
#[derive(Debug, Clone)]
pub(crate) struct RawHeartbeat {
    pub(crate) key: String,
    pub(crate) value: Bytes,
    /// The entry's sequence in the bucket's stream.
    pub(crate) revision: u64,
    /// When the server stored it (Unix ms).
    pub(crate) stored_ms: i64,
}

pub(crate) struct WatchSpec {
    pub(crate) client: async_nats::Client,
    pub(crate) js: async_nats::jetstream::Context,
    pub(crate) bucket: String,
    pub(crate) stall_timeout: Duration,
}

/// How often the connection state is looked at.
const STATE_CHECK: Duration = Duration::from_millis(250);
/// How often the stream's last sequence is compared with the watch's position.
const STREAM_CHECK: Duration = Duration::from_secs(1);

/// Why a watch is (re)created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restart {
    Start,
    Error,
    Ended,
    Reconnect,
    Stalled,
    Resync,
}

impl Restart {
    fn as_str(self) -> &'static str {
        match self {
            Restart::Start => "start",
            Restart::Error => "error",
            Restart::Ended => "ended",
            Restart::Reconnect => "reconnect",
            Restart::Stalled => "stalled",
            Restart::Resync => "resync",
        }
    }
}

/// Runs the watch until `shutdown`, feeding `out`.
pub(crate) async fn run(
    spec: WatchSpec,
    out: mpsc::Sender<RawHeartbeat>,
    health: Arc<InputHealth>,
    signals: Arc<Signals>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let stats = spec.client.statistics();
    let mut reason = Restart::Start;
    let mut attempt: u32 = 0;
    loop {
        health.set(Pause::Watch, true);
        let created = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            created = create(&spec, attempt) => created,
        };
        let (watch, snapshot_end) = match created {
            Ok(watch) => watch,
            Err(err) => {
                attempt += 1;
                if service_kit::backoff::worth_logging(attempt) {
                    tracing::warn!(attempt, error = %err, bucket = %spec.bucket, "cannot start the kv watch; retrying");
                }
                if service_kit::service::sleep_or_shutdown(Backoff::RECONNECT.delay(attempt), &shutdown).await
                {
                    return Ok(());
                }
                continue;
            }
        };
        attempt = 0;
        // Reconnects while the watch was being (re)created are behind this new watch.
        let mut connects = stats.connects.load(std::sync::atomic::Ordering::Relaxed);
        // Until the watch exists the bucket may have had no leader (in a cluster, a
        // creation waits or fails while one is elected), and then nobody could put a
        // heartbeat: every agent gets its full threshold from here, not from when the
        // gap began. The re-sync delivers old entries at once, so they cannot stand in
        // for heartbeats the agents had no chance to send.
        health.resumed(crate::now_ms());
        if reason == Restart::Start {
            tracing::info!(bucket = %spec.bucket, "kv watch started; syncing current heartbeats");
        } else {
            tracing::info!(bucket = %spec.bucket, reason = reason.as_str(), "kv watch re-created; re-syncing current heartbeats");
            metrics::counter!("opspilot_presence_watch_restarts_total", "reason" => reason.as_str())
                .increment(1);
        }
        let mut session = Session::new(watch, snapshot_end);
        if snapshot_end == 0 {
            // An empty bucket: nothing to sync.
            session.mark_caught_up(&spec, &health, &signals);
        }
        reason = match session.follow(&spec, &out, &health, &signals, &mut connects, &shutdown).await {
            Some(reason) => reason,
            None => return Ok(()),
        };
    }
}

/// Creates the watch; also returns the stream's last sequence just before, which the
/// re-sync has delivered in full once the watch reaches it (0: the bucket is empty).
/// `attempt` counts the failed ones before.
async fn create(spec: &WatchSpec, attempt: u32) -> anyhow::Result<(Watch, u64)> {
    let started = async {
        let stream = spec.js.get_stream(format!("KV_{}", spec.bucket)).await?;
        let state = &stream.cached_info().state;
        let snapshot_end = if state.messages == 0 { 0 } else { state.last_sequence };
        let kv = spec.js.get_key_value(&spec.bucket).await?;
        // Last value per key first (the re-sync), then every change.
        let watch = kv.watch_with_history(">").await?;
        Ok::<_, anyhow::Error>((watch, snapshot_end))
    };
    // A request sent while the bucket (or the cluster's metadata) has no leader is never
    // answered, even once a leader is elected a moment later: a short first attempt
    // finds the new leader sooner. Later ones get longer, for a server under load.
    let limit = (Duration::from_secs(2) * attempt.saturating_add(1)).min(Duration::from_secs(10));
    tokio::time::timeout(limit, started).await.map_err(|_| anyhow::anyhow!("creating the watch timed out"))?
}

/// One watch's life.
struct Session {
    watch: Watch,
    /// The stream's last sequence when the watch was created: reaching it completes
    /// the re-sync.
    snapshot_end: u64,
    /// Highest revision received.
    last_revision: u64,
    last_received: Instant,
    started: Instant,
    received: u64,
    caught_up: bool,
    /// The bucket's stream failed to answer its last position check.
    unanswered: bool,
}

impl Session {
    fn new(watch: Watch, snapshot_end: u64) -> Self {
        let now = Instant::now();
        Self {
            watch,
            snapshot_end,
            last_revision: 0,
            last_received: now,
            started: now,
            received: 0,
            caught_up: false,
            unanswered: false,
        }
    }

    /// Follows the watch until it must be re-created (the reason) or shutdown (`None`).
    async fn follow(
        &mut self,
        spec: &WatchSpec,
        out: &mpsc::Sender<RawHeartbeat>,
        health: &InputHealth,
        signals: &Signals,
        connects: &mut u64,
        shutdown: &CancellationToken,
    ) -> Option<Restart> {
        let stream_name = format!("KV_{}", spec.bucket);
        let mut state_check = tokio::time::interval(STATE_CHECK);
        state_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_stream_check = Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return None,
                _ = signals.resync.notified() => return Some(Restart::Resync),
                entry = self.watch.next() => match entry {
                    Some(Ok(entry)) => {
                        self.last_revision = self.last_revision.max(entry.revision);
                        self.last_received = Instant::now();
                        // The bucket stored this: it takes heartbeats.
                        health.confirmed(crate::now_ms());
                        self.received += 1;
                        if entry.operation == Operation::Put {
                            let raw = RawHeartbeat {
                                key: entry.key,
                                value: entry.value,
                                revision: entry.revision,
                                stored_ms: i64::try_from(entry.created.unix_timestamp_nanos() / 1_000_000)
                                    .unwrap_or(i64::MAX),
                            };
                            if out.send(raw).await.is_err() {
                                // The ingest stopped: shutting down.
                                return None;
                            }
                        }
                        if !self.caught_up && (entry.delta == 0 || self.last_revision >= self.snapshot_end) {
                            self.mark_caught_up(spec, health, signals);
                        }
                    }
                    Some(Err(err)) => {
                        tracing::warn!(error = %err, "kv watch failed; re-creating it");
                        return Some(Restart::Error);
                    }
                    None => {
                        tracing::warn!("kv watch ended; re-creating it");
                        return Some(Restart::Ended);
                    }
                },
                _ = state_check.tick() => {
                    let now_connects = spec.client.statistics().connects.load(std::sync::atomic::Ordering::Relaxed);
                    if now_connects != *connects {
                        *connects = now_connects;
                        // Agents could not put heartbeats while the connection was down.
                        health.resumed(crate::now_ms());
                        // Still paused: the new watch has to catch up first.
                        health.set(Pause::Watch, true);
                        health.set(Pause::Nats, false);
                        return Some(Restart::Reconnect);
                    }
                    let connected =
                        spec.client.connection_state() == async_nats::connection::State::Connected;
                    health.set(Pause::Nats, !connected);
                    if connected && last_stream_check.elapsed() >= STREAM_CHECK {
                        last_stream_check = Instant::now();
                        if let Some(restart) = self.check_position(spec, &stream_name, health, signals).await {
                            return Some(restart);
                        }
                    }
                }
            }
        }
    }

    fn mark_caught_up(&mut self, spec: &WatchSpec, health: &InputHealth, signals: &Signals) {
        self.caught_up = true;
        health.set(Pause::Watch, false);
        signals.caught_up.notify_one();
        tracing::info!(
            bucket = %spec.bucket,
            entries = self.received,
            elapsed_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "kv watch caught up with the bucket"
        );
    }

    /// Compares the watch's position with the stream's: catches the end of an initial
    /// sync that delivered nothing (empty bucket) and a watch that stopped delivering.
    async fn check_position(
        &mut self,
        spec: &WatchSpec,
        stream_name: &str,
        health: &InputHealth,
        signals: &Signals,
    ) -> Option<Restart> {
        let info = match tokio::time::timeout(Duration::from_secs(2), spec.js.get_stream(stream_name)).await {
            Ok(Ok(stream)) if !leaderless(stream.cached_info()) => stream.cached_info().state.clone(),
            failed => {
                match failed {
                    Ok(Ok(_)) => tracing::debug!("the bucket's stream has no leader"),
                    Ok(Err(err)) => tracing::debug!(error = %err, "cannot read the bucket's stream state"),
                    Err(_) => tracing::debug!("reading the bucket's stream state timed out"),
                }
                // The bucket's stream does not answer, or answers without a leader,
                // while the connection is up: in a cluster, it is electing a new leader
                // (after losing a node, or deposed by one coming back from a partition),
                // and agents cannot put heartbeats either. Silence means nothing until
                // it has a leader again, and then every agent gets its full threshold.
                if !self.unanswered {
                    tracing::info!(bucket = %spec.bucket, "the bucket's stream does not answer; offline detection waits");
                }
                self.unanswered = true;
                health.set(Pause::Watch, true);
                return None;
            }
        };
        if std::mem::take(&mut self.unanswered) {
            tracing::info!(bucket = %spec.bucket, "the bucket's stream answers again; every agent gets its full threshold");
            health.resumed(crate::now_ms());
        }
        let verdict = position_verdict(
            info.messages,
            info.last_sequence,
            self.last_revision,
            self.last_received.elapsed(),
            spec.stall_timeout,
        );
        if matches!(verdict, Position::Current | Position::Receiving) {
            health.confirmed(crate::now_ms());
        }
        match verdict {
            Position::Current => {
                if !self.caught_up {
                    self.mark_caught_up(spec, health, signals);
                } else {
                    health.set(Pause::Watch, false);
                }
                None
            }
            Position::Receiving => {
                // Behind only by what is in flight: alive. (Under steady traffic the
                // stream is always a little ahead, so this, not `Current`, is what
                // lifts a pause set while the watch looked suspect.)
                if self.caught_up {
                    health.set(Pause::Watch, false);
                }
                None
            }
            Position::Suspect => {
                // Behind and silent: do not trust silence until the watch moves again.
                health.set(Pause::Watch, true);
                None
            }
            Position::Stalled => {
                tracing::warn!(
                    bucket = %spec.bucket,
                    stream_last_sequence = info.last_sequence,
                    watch_revision = self.last_revision,
                    silent_ms = u64::try_from(self.last_received.elapsed().as_millis()).unwrap_or(u64::MAX),
                    "kv watch stalled; re-creating it"
                );
                Some(Restart::Stalled)
            }
        }
    }
}

/// A replicated stream without a leader takes no writes, yet each of its replicas
/// answers an info request from its own copy (nats-server lets them, so that a client
/// can see the group is leaderless): such an answer proves nothing about heartbeats.
fn leaderless(info: &async_nats::jetstream::stream::Info) -> bool {
    info.cluster.as_ref().is_some_and(|cluster| cluster.leader.is_none())
}

/// Where a watch stands against its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// Everything in the stream was received.
    Current,
    /// Behind, but entries keep arriving.
    Receiving,
    /// Behind and nothing arrived for a while.
    Suspect,
    /// Behind and nothing arrived for the stall timeout: re-create it.
    Stalled,
}

fn position_verdict(
    stream_messages: u64,
    stream_last_sequence: u64,
    watch_revision: u64,
    silent_for: Duration,
    stall_timeout: Duration,
) -> Position {
    let behind = stream_messages > 0 && stream_last_sequence > watch_revision;
    if !behind {
        Position::Current
    } else if silent_for >= stall_timeout {
        Position::Stalled
    } else if silent_for >= STREAM_CHECK {
        Position::Suspect
    } else {
        Position::Receiving
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(5);

    #[test]
    fn a_quiet_bucket_is_not_a_stall() {
        // Nothing new in the stream: however long the silence, the watch is current.
        assert_eq!(position_verdict(10, 42, 42, Duration::from_secs(600), STALL), Position::Current);
        assert_eq!(position_verdict(0, 42, 0, Duration::from_secs(600), STALL), Position::Current);
        assert_eq!(position_verdict(0, 0, 0, Duration::from_secs(600), STALL), Position::Current);
    }

    /// What nats-server sends for a replicated stream: each replica answers from its
    /// own copy while the group has no leader, and then names none.
    #[test]
    fn an_answer_without_a_leader_is_leaderless() {
        let info = |cluster: serde_json::Value| -> async_nats::jetstream::stream::Info {
            serde_json::from_value(serde_json::json!({
                "config": async_nats::jetstream::stream::Config {
                    name: "KV_AGENTS".into(),
                    ..Default::default()
                },
                "created": "2026-11-30T00:00:00Z",
                "state": {
                    "messages": 3, "bytes": 300, "first_seq": 1, "first_ts": "2026-11-30T00:00:00Z",
                    "last_seq": 3, "last_ts": "2026-11-30T00:00:01Z", "consumer_count": 1
                },
                "cluster": cluster,
            }))
            .unwrap()
        };
        assert!(leaderless(&info(serde_json::json!({"name": "c", "raft_group": "S-R3F-x"}))));
        assert!(!leaderless(&info(
            serde_json::json!({"name": "c", "raft_group": "S-R3F-x", "leader": "n1"})
        )));
        // A single server names itself.
        assert!(!leaderless(&info(serde_json::json!({"leader": "n0"}))));
    }

    #[test]
    fn a_silent_watch_behind_its_stream_is_suspect_then_stalled() {
        assert_eq!(position_verdict(10, 50, 42, Duration::from_millis(100), STALL), Position::Receiving);
        assert_eq!(position_verdict(10, 50, 42, Duration::from_secs(2), STALL), Position::Suspect);
        assert_eq!(position_verdict(10, 50, 42, Duration::from_secs(5), STALL), Position::Stalled);
    }
}
