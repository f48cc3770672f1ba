//! The load: simulated agents publishing events at a steady rate, each with its event
//! id as `Nats-Msg-Id`, retried (same id) until JetStream acknowledges it, as a real
//! agent does. Every event is recorded in a ledger (what was sent, what JetStream
//! said), so the accounting can check that every acknowledged event was stored or
//! dead-lettered, and nothing twice.
//!
//! A small share of the events is poison on purpose (from an agent that is not
//! enrolled, or under another agent's subject): well-formed, acknowledged by JetStream,
//! and bound for the dead-letter stream, so `stored + dead-lettered` is exercised on
//! both sides.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use agent_sim::{Bus, Fleet, SimAgent};
use bytes::Bytes;
use futures::StreamExt;
use rand::Rng;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// How much load, how fast.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub events: u64,
    /// Events per second across the fleet.
    pub rate: f64,
    /// Publishes awaiting their ack at once.
    pub concurrency: usize,
    /// One event in this many is poison (0 = none).
    pub poison_every: u64,
    /// How long one event is retried before it counts as unacknowledged. Kept inside
    /// JetStream's duplicate window (2 min), which is what makes the retry safe.
    pub give_up_after: Duration,
}

impl LoadPlan {
    pub fn new(events: u64, rate: f64) -> Self {
        Self { events, rate, concurrency: 256, poison_every: 1000, give_up_after: Duration::from_secs(90) }
    }
}

/// Where an event should end up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Stored,
    DeadLettered,
}

/// What JetStream answered for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged as new on attempt `attempts`.
    Acked { attempts: u32 },
    /// A retry acknowledged as a duplicate: an earlier attempt was stored but its ack
    /// was lost (a restart in between). Stored once all the same.
    RetriedDuplicate { attempts: u32 },
    /// Reported as a duplicate on the first attempt: the id was published before, which
    /// the load never does.
    FirstAttemptDuplicate,
    /// Never acknowledged within `give_up_after`.
    Unacked,
}

/// One event's record.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub id: Uuid,
    pub expect: Expect,
    pub outcome: Outcome,
}

/// Everything the load did.
#[derive(Debug, Default)]
pub struct Ledger {
    pub entries: Vec<Entry>,
    pub elapsed: Duration,
}

impl Ledger {
    pub fn count(&self, f: impl Fn(&Entry) -> bool) -> u64 {
        self.entries.iter().filter(|e| f(e)).count() as u64
    }
}

/// A load running in the background.
pub struct Load {
    started: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
    total: u64,
    task: JoinHandle<Ledger>,
}

struct Prepared {
    id: Uuid,
    subject: String,
    payload: Bytes,
    expect: Expect,
}

impl Load {
    /// Starts publishing `plan.events` events from `fleet`'s agents (and poison from
    /// `stranger`, which is not enrolled).
    pub fn start(
        bus: Bus,
        fleet: Arc<Fleet>,
        stranger: Arc<SimAgent>,
        plan: LoadPlan,
    ) -> anyhow::Result<Self> {
        let agents = fleet.agents();
        anyhow::ensure!(agents.len() >= 2, "the load needs at least two agents");
        let mut prepared = Vec::with_capacity(usize::try_from(plan.events).unwrap_or(0));
        {
            let mut rng = rand::rng();
            for n in 0..plan.events {
                let agent = &agents[rng.random_range(0..agents.len())];
                let poison = plan.poison_every > 0 && n % plan.poison_every == plan.poison_every / 2;
                let (event, subject, expect) = if !poison {
                    let event = agent.random_event(&mut rng);
                    let subject = bus.subjects.event(&event.agent_id, &event.kind);
                    (event, subject, Expect::Stored)
                } else if (n / plan.poison_every).is_multiple_of(2) {
                    // From an agent nobody enrolled: `unknown_agent`.
                    let event = stranger.random_event(&mut rng);
                    let subject = bus.subjects.event(&event.agent_id, &event.kind);
                    (event, subject, Expect::DeadLettered)
                } else {
                    // One agent's event under another agent's subject: `agent_mismatch`.
                    let event = agent.random_event(&mut rng);
                    let other = agents.iter().find(|a| a.id != agent.id).unwrap_or(agent);
                    let subject = bus.subjects.event(&other.id, &event.kind);
                    (event, subject, Expect::DeadLettered)
                };
                prepared.push(Prepared {
                    id: event.event_id,
                    subject,
                    payload: Bytes::from(wire_models::encode(&event)?),
                    expect,
                });
            }
        }
        let started = Arc::new(AtomicU64::new(0));
        let acked = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run(bus, prepared, plan.clone(), Arc::clone(&started), Arc::clone(&acked)));
        Ok(Self { started, acked, total: plan.events, task })
    }

    /// Events whose first publish has been sent.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Events acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits until `fraction` of the events were sent (or the load ended).
    pub async fn wait_fraction(&self, fraction: f64) {
        let target = (self.total as f64 * fraction) as u64;
        while self.started() < target && !self.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for every event to be acknowledged (or given up on).
    pub async fn finish(self) -> anyhow::Result<Ledger> {
        Ok(self.task.await?)
    }
}

async fn run(
    bus: Bus,
    prepared: Vec<Prepared>,
    plan: LoadPlan,
    started: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
) -> Ledger {
    let begin = Instant::now();
    let entries = Arc::new(Mutex::new(Vec::with_capacity(prepared.len())));
    let interval = if plan.rate > 0.0 { Duration::from_secs_f64(1.0 / plan.rate) } else { Duration::ZERO };
    let pace = tokio::time::Instant::now();
    futures::stream::iter(prepared.into_iter().enumerate())
        .map(|(n, event)| {
            let (bus, started, acked, entries) = (bus.clone(), &started, &acked, &entries);
            let give_up_after = plan.give_up_after;
            async move {
                // Paced: event n goes out at n / rate.
                let at = pace + interval.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
                tokio::time::sleep_until(at).await;
                started.fetch_add(1, Ordering::Relaxed);
                let outcome = publish_until_acked(&bus, &event, give_up_after).await;
                if matches!(outcome, Outcome::Acked { .. } | Outcome::RetriedDuplicate { .. }) {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                // Held only to push one entry; never across an await.
                entries.lock().unwrap_or_else(PoisonError::into_inner).push(Entry {
                    id: event.id,
                    expect: event.expect,
                    outcome,
                });
            }
        })
        .buffer_unordered(plan.concurrency.max(1))
        .collect::<()>()
        .await;
    let entries = std::mem::take(&mut *entries.lock().unwrap_or_else(PoisonError::into_inner));
    Ledger { entries, elapsed: begin.elapsed() }
}

/// Publishes one event until JetStream acknowledges it, always with the same
/// `Nats-Msg-Id`, so a retry after a lost ack is recognised as a duplicate.
async fn publish_until_acked(bus: &Bus, event: &Prepared, give_up_after: Duration) -> Outcome {
    let started = Instant::now();
    let msg_id = event.id.to_string();
    let mut attempts: u32 = 0;
    loop {
        attempts += 1;
        let attempt = tokio::time::timeout(
            Duration::from_secs(10),
            bus.publish_raw_event(event.subject.clone(), &msg_id, event.payload.clone()),
        )
        .await;
        match attempt {
            Ok(Ok(false)) => return Outcome::Acked { attempts },
            Ok(Ok(true)) if attempts == 1 => return Outcome::FirstAttemptDuplicate,
            Ok(Ok(true)) => return Outcome::RetriedDuplicate { attempts },
            Ok(Err(err)) => tracing::debug!(error = %err, attempts, "publish failed; retrying"),
            Err(_) => tracing::debug!(attempts, "publish ack timed out; retrying"),
        }
        if started.elapsed() >= give_up_after {
            return Outcome::Unacked;
        }
        let backoff = Duration::from_millis(100u64.saturating_mul(1 << attempts.min(4)));
        tokio::time::sleep(backoff).await;
    }
}
