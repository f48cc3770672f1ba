//! Whether the tracker can currently hear agents, which is what entitles it to declare
//! one offline.
//!
//! Silence only means "offline" if the heartbeat could have reached us. Detection
//! pauses while NATS is disconnected, while a (re)created KV watch has not yet
//! delivered the bucket's current contents (or looks stalled), and while Redis cannot
//! take heartbeats. After a NATS outage, and at start (NATS may have been down before
//! us), every agent gets its full threshold again before it can be declared offline:
//! its agent needs that long to reconnect and send a heartbeat.

use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};

/// Why offline detection is paused (bit flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pause {
    /// The NATS connection is down: agents cannot put heartbeats, we cannot see them.
    Nats = 1,
    /// The KV watch is (re)starting, catching up, or looks stalled.
    Watch = 2,
    /// Heartbeats cannot be recorded in Redis.
    Redis = 4,
}

impl Pause {
    fn describe(bits: u8) -> String {
        [
            (Pause::Nats, "nats disconnected"),
            (Pause::Watch, "kv watch catching up"),
            (Pause::Redis, "redis unavailable"),
        ]
        .iter()
        .filter(|(p, _)| bits & (*p as u8) != 0)
        .map(|(_, what)| *what)
        .collect::<Vec<_>>()
        .join(", ")
    }
}

/// Whether an overdue agent may be declared offline now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Yes,
    No,
    /// Not before the bucket proves it took heartbeats after the agent's deadline.
    Unconfirmed,
}

pub(crate) struct InputHealth {
    paused: AtomicU8,
    /// When input last resumed after a gap agents could not bridge (Unix ms).
    resumed_at_ms: AtomicI64,
    /// When the bucket last proved it takes heartbeats (Unix ms): the watch delivered
    /// an entry, or the bucket's stream answered a position check with the watch current.
    confirmed_at_ms: AtomicI64,
}

impl InputHealth {
    /// Starts paused on the watch (nothing delivered yet), with `now_ms` as the start.
    pub(crate) fn new(now_ms: i64) -> Self {
        Self {
            paused: AtomicU8::new(Pause::Watch as u8),
            resumed_at_ms: AtomicI64::new(now_ms),
            confirmed_at_ms: AtomicI64::new(i64::MIN),
        }
    }

    /// Sets or clears one reason; logs when detection as a whole pauses or resumes.
    pub(crate) fn set(&self, reason: Pause, paused: bool) {
        let bit = reason as u8;
        let before = if paused {
            self.paused.fetch_or(bit, Ordering::SeqCst)
        } else {
            self.paused.fetch_and(!bit, Ordering::SeqCst)
        };
        let after = if paused { before | bit } else { before & !bit };
        if before == 0 && after != 0 {
            tracing::info!(reason = %Pause::describe(after), "offline detection paused");
        } else if before != 0 && after == 0 {
            tracing::info!("offline detection resumed");
        }
        metrics::gauge!("opspilot_presence_detection_paused").set(if after == 0 { 0.0 } else { 1.0 });
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst) != 0
    }

    /// Input resumed after a gap agents could not bridge (a NATS outage): every agent
    /// gets its full threshold from now.
    pub(crate) fn resumed(&self, now_ms: i64) {
        self.resumed_at_ms.fetch_max(now_ms, Ordering::SeqCst);
    }

    /// The bucket took heartbeats at `now_ms` (see `confirmed_at_ms`).
    pub(crate) fn confirmed(&self, now_ms: i64) {
        self.confirmed_at_ms.fetch_max(now_ms, Ordering::SeqCst);
    }

    /// Whether an agent with this threshold, silent past its `deadline_ms`, may be
    /// declared offline now: detection is not paused, the agent had a full threshold
    /// since input last resumed, and the bucket proved it took heartbeats after the
    /// deadline (else [`Verdict::Unconfirmed`]: ask again shortly, the next position
    /// check or entry confirms). The last one matters in a cluster: when the node
    /// leading the bucket dies, nobody can put a heartbeat until a new leader is
    /// elected, and the tracker only learns that it is cut off when its next check goes
    /// unanswered, seconds later. Silence is only trusted once the bucket is known to
    /// have been listening.
    pub(crate) fn offline_verdict(&self, now_ms: i64, threshold_ms: i64, deadline_ms: i64) -> Verdict {
        if self.is_paused() || now_ms < self.resumed_at_ms.load(Ordering::SeqCst).saturating_add(threshold_ms)
        {
            Verdict::No
        } else if self.confirmed_at_ms.load(Ordering::SeqCst) < deadline_ms {
            Verdict::Unconfirmed
        } else {
            Verdict::Yes
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_waits_for_input_and_a_full_threshold() {
        let health = InputHealth::new(1_000);
        health.confirmed(i64::MAX);
        assert!(health.offline_verdict(100_000, 3_000, 0) != Verdict::Yes, "the watch has not caught up yet");
        health.set(Pause::Watch, false);
        assert!(health.offline_verdict(3_999, 3_000, 0) != Verdict::Yes, "a full threshold after the start");
        assert!(health.offline_verdict(4_000, 3_000, 0) == Verdict::Yes);

        health.set(Pause::Nats, true);
        health.set(Pause::Redis, true);
        assert!(health.offline_verdict(10_000, 3_000, 0) != Verdict::Yes);
        health.set(Pause::Nats, false);
        assert!(health.offline_verdict(10_000, 3_000, 0) != Verdict::Yes, "redis is still out");
        health.set(Pause::Redis, false);
        health.resumed(10_000);
        assert!(health.offline_verdict(12_000, 3_000, 0) != Verdict::Yes);
        assert!(health.offline_verdict(13_000, 3_000, 0) == Verdict::Yes);
        // Resumption never moves back.
        health.resumed(5_000);
        assert!(health.offline_verdict(13_000, 3_000, 0) == Verdict::Yes);
    }

    #[test]
    fn silence_counts_only_once_the_bucket_listened_past_the_deadline() {
        let health = InputHealth::new(0);
        health.set(Pause::Watch, false);
        assert!(health.offline_verdict(20_000, 3_000, 10_000) != Verdict::Yes, "never confirmed");
        health.confirmed(9_999);
        assert!(
            health.offline_verdict(20_000, 3_000, 10_000) != Verdict::Yes,
            "confirmed only before the deadline"
        );
        assert_eq!(health.offline_verdict(20_000, 3_000, 10_000), Verdict::Unconfirmed);
        health.set(Pause::Nats, true);
        assert_eq!(health.offline_verdict(20_000, 3_000, 10_000), Verdict::No);
        health.set(Pause::Nats, false);
        health.confirmed(10_000);
        assert!(health.offline_verdict(20_000, 3_000, 10_000) == Verdict::Yes);
        // Confirmation never moves back.
        health.confirmed(1_000);
        assert!(health.offline_verdict(20_000, 3_000, 10_000) == Verdict::Yes);
    }

    #[test]
    fn reasons_are_described() {
        assert_eq!(
            Pause::describe(Pause::Nats as u8 | Pause::Redis as u8),
            "nats disconnected, redis unavailable"
        );
    }
}
