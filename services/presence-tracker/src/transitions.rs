//! Transitions: candidates come in (a fresh heartbeat of an agent not online, an
//! overdue deadline, an expired key), are re-checked against Redis, decided by
//! Postgres, mirrored back into Redis, then announced and logged.
//!
//! Candidates wait in a map keyed by agent (the newest intent wins), so repeats from
//! the scan, the keyspace events and several heartbeats cost nothing, and a Postgres
//! outage holds at most one entry per agent while it is retried with backoff. A flap
//! that starts and ends entirely within such an outage is not recorded; the state is
//! right once Postgres is back.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::DateTime;
use presence::{AgentPresence, PresenceStore, StateChange};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wire_models::{AgentId, PROTOCOL_VERSION, PresenceChanged, PresenceState, Subjects};

use crate::Thresholds;
use crate::health::{InputHealth, Verdict};
use storage::presence::{AppliedTransition, StoredPresence, Transition, TransitionOptions};

/// Most candidates handled in one round (one Redis read, one statement per state).
const ROUND: usize = 5000;

/// Why a transition is proposed; recorded with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// A fresh heartbeat of an agent that is not online.
    Heartbeat,
    /// The deadline scan found the agent overdue.
    Timeout,
    /// The agent's TTL key expired (keyspace event).
    KeyExpired,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Heartbeat => "heartbeat",
            Reason::Timeout => "timeout",
            Reason::KeyExpired => "key_expired",
        }
    }
}

/// A proposed transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Intent {
    pub(crate) agent_id: AgentId,
    pub(crate) state: PresenceState,
    pub(crate) reason: Reason,
}

pub(crate) struct Transitions {
    pub(crate) store: PresenceStore,
    pub(crate) pool: PgPool,
    pub(crate) client: async_nats::Client,
    pub(crate) subjects: Subjects,
    pub(crate) thresholds: Thresholds,
    pub(crate) health: Arc<InputHealth>,
    pub(crate) options: TransitionOptions,
}

type Pending = HashMap<AgentId, (PresenceState, Reason)>;

/// What [`Transitions::offline_transition`] decided for an overdue candidate.
enum Offline {
    Now(Transition),
    Not,
    Unconfirmed,
}

/// Whether a round went through, or must be retried later.
enum Round {
    Done,
    Retry,
    /// Overdue agents wait for the bucket to confirm it was listening (see
    /// [`InputHealth::offline_verdict`]): asked again after [`UNCONFIRMED_RETRY`].
    Unconfirmed,
}

/// How soon an overdue agent whose silence is not yet confirmed is looked at again.
const UNCONFIRMED_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

impl Transitions {
    pub(crate) async fn run(
        self,
        mut rx: mpsc::Receiver<Intent>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut pending: Pending = HashMap::new();
        let mut buf = Vec::with_capacity(4096);
        let mut retry_at: Option<Instant> = None;
        let mut attempt: u32 = 0;
        loop {
            // Wait for work, or for the retry time (taking candidates meanwhile).
            let wait_until = if pending.is_empty() { None } else { retry_at };
            if pending.is_empty() || wait_until.is_some() {
                let sleep = async {
                    match wait_until {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Ok(()),
                    n = rx.recv_many(&mut buf, 4096) => {
                        if n == 0 {
                            return Ok(());
                        }
                        merge(&mut pending, buf.drain(..));
                        continue;
                    }
                    _ = sleep => retry_at = None,
                }
            }
            while let Ok(intent) = rx.try_recv() {
                merge(&mut pending, std::iter::once(intent));
            }
            let round: Pending = if pending.len() <= ROUND {
                std::mem::take(&mut pending)
            } else {
                let ids: Vec<AgentId> = pending.keys().take(ROUND).cloned().collect();
                ids.into_iter().filter_map(|id| pending.remove_entry(&id)).collect()
            };
            match self.round(round, &mut pending).await {
                Round::Done => attempt = 0,
                Round::Retry => {
                    attempt += 1;
                    retry_at = Some(Instant::now() + crate::RETRY.delay(attempt));
                }
                Round::Unconfirmed => {
                    attempt = 0;
                    retry_at = Some(Instant::now() + UNCONFIRMED_RETRY);
                }
            }
            if shutdown.is_cancelled() {
                return Ok(());
            }
        }
    }

    /// Handles one round of candidates; what must be retried goes back into `pending`.
    async fn round(&self, round: Pending, pending: &mut Pending) -> Round {
        let ids: Vec<AgentId> = round.keys().cloned().collect();
        let known = match self.store.inspect(&ids).await {
            Ok(known) => known,
            Err(err) => {
                tracing::warn!(error = %err, candidates = ids.len(), "cannot re-check presence candidates in redis; retrying");
                putback(pending, round);
                return Round::Retry;
            }
        };
        let now = crate::now_ms();
        let mut offline = Vec::new();
        let mut online = Vec::new();
        let mut unconfirmed = false;
        for presence in known {
            let Some(&(state, reason)) = round.get(&presence.agent_id) else { continue };
            match state {
                PresenceState::Offline => match self.offline_transition(&presence, reason, now) {
                    Offline::Now(t) => offline.push(t),
                    Offline::Not => {}
                    Offline::Unconfirmed => {
                        pending.entry(presence.agent_id.clone()).or_insert((state, reason));
                        unconfirmed = true;
                    }
                },
                PresenceState::Online => {
                    if let Some(t) = self.online_transition(&presence, reason, now) {
                        online.push(t);
                    }
                }
            }
        }
        let mut outcome = if unconfirmed { Round::Unconfirmed } else { Round::Done };
        for (state, transitions) in [(PresenceState::Offline, offline), (PresenceState::Online, online)] {
            if transitions.is_empty() {
                continue;
            }
            if let Round::Retry = self.apply(state, transitions, &round, pending).await {
                outcome = Round::Retry;
            }
        }
        outcome
    }

    /// The offline transition, if the agent is still overdue and may be declared offline
    /// (re-checked here: a heartbeat may have landed since the candidate was found).
    fn offline_transition(&self, p: &AgentPresence, reason: Reason, now: i64) -> Offline {
        let Some(deadline) = p.deadline_ms else { return Offline::Not };
        let threshold = p.threshold_ms.unwrap_or_else(|| self.thresholds.fallback());
        if deadline > now {
            return Offline::Not;
        }
        match self.health.offline_verdict(now, threshold, deadline) {
            Verdict::No => return Offline::Not,
            Verdict::Unconfirmed => return Offline::Unconfirmed,
            Verdict::Yes => {}
        }
        let Some(changed_at) = DateTime::from_timestamp_millis(deadline) else { return Offline::Not };
        Offline::Now(Transition {
            agent_id: p.agent_id.clone(),
            // The agent has been offline since it missed its deadline.
            changed_at,
            last_seen_at: p.last_seen_ms.and_then(DateTime::from_timestamp_millis),
            threshold_secs: secs(threshold),
            reason: reason.as_str().to_owned(),
        })
    }

    /// The online transition, if the agent's heartbeat is still fresh and Redis does not
    /// already say online (Postgres said so before, to this or another replica).
    fn online_transition(&self, p: &AgentPresence, reason: Reason, now: i64) -> Option<Transition> {
        if p.state == Some(PresenceState::Online) || p.deadline_ms? <= now {
            return None;
        }
        let last_seen = p.last_seen_ms?;
        Some(Transition {
            agent_id: p.agent_id.clone(),
            changed_at: DateTime::from_timestamp_millis(last_seen)?,
            last_seen_at: DateTime::from_timestamp_millis(last_seen),
            threshold_secs: secs(p.threshold_ms.unwrap_or_else(|| self.thresholds.fallback())),
            reason: reason.as_str().to_owned(),
        })
    }

    /// Lets Postgres decide, mirrors the decision in Redis, announces what changed.
    async fn apply(
        &self,
        state: PresenceState,
        transitions: Vec<Transition>,
        round: &Pending,
        pending: &mut Pending,
    ) -> Round {
        let putback = |pending: &mut Pending| {
            for t in &transitions {
                if let Some(entry) = round.get(&t.agent_id) {
                    pending.entry(t.agent_id.clone()).or_insert(*entry);
                }
            }
        };
        // Going offline: Redis stops claiming "online" before Postgres decides, so a
        // decision that is committed but never mirrored is made again, not lost (a
        // returning agent's heartbeats would otherwise find it "online" in Redis and
        // nobody would ask Postgres). Coming back online needs no such step: until
        // mirrored, the agent's heartbeats keep proposing it.
        if state == PresenceState::Offline {
            let ids: Vec<AgentId> = transitions.iter().map(|t| t.agent_id.clone()).collect();
            if let Err(err) = self.store.unsettle(&ids).await {
                tracing::warn!(agents = ids.len(), error = %err, "cannot prepare offline decisions in redis; retrying");
                putback(pending);
                return Round::Retry;
            }
        }
        let outcome =
            storage::presence::apply_transitions(&self.pool, state, &transitions, self.options).await;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(err) if err.is_transient() => {
                tracing::warn!(%state, agents = transitions.len(), error = %err, "cannot record presence transitions in postgres; retrying");
                putback(pending);
                return Round::Retry;
            }
            Err(err) => {
                tracing::error!(%state, agents = transitions.len(), error = %err, "postgres refused presence transitions");
                return Round::Done;
            }
        };

        // Mirror: what this call changed, and what Postgres already had.
        let now = crate::now_ms();
        let by_id: HashMap<&AgentId, &Transition> = transitions.iter().map(|t| (&t.agent_id, t)).collect();
        let mut changes: Vec<StateChange> = outcome.applied.iter().map(change_from_applied).collect();
        changes.extend(
            outcome
                .unchanged
                .iter()
                .filter(|s| s.state == state)
                .map(|s| change_from_stored(s, by_id.get(&s.agent_id))),
        );
        match self.store.mark(state, &changes, now).await {
            Ok(raced) => {
                // Declared offline while a heartbeat landed: it is back already.
                for agent_id in raced {
                    tracing::debug!(%agent_id, "heartbeat raced the offline decision; bringing the agent back");
                    pending.insert(agent_id, (PresenceState::Online, Reason::Heartbeat));
                }
            }
            Err(err) => {
                // Postgres decided; Redis catches up through the next heartbeat or scan,
                // which find the mismatch and ask Postgres again.
                tracing::warn!(%state, error = %err, "cannot mirror presence decisions in redis");
            }
        }
        if !outcome.missing.is_empty() {
            tracing::info!(agents = outcome.missing.len(), "agents no longer in postgres; no longer tracked");
            if let Err(err) = self.store.forget(&outcome.missing).await {
                tracing::warn!(error = %err, "cannot forget removed agents in redis");
            }
        }
        for applied in &outcome.applied {
            self.announce(applied, now).await;
        }
        Round::Done
    }

    /// Publishes the change (after the commit), logs it, counts it.
    async fn announce(&self, t: &AppliedTransition, now: i64) {
        let msg = PresenceChanged {
            v: PROTOCOL_VERSION,
            agent_id: t.agent_id.clone(),
            state: t.state,
            changed_at: t.changed_at,
            last_seen_at: t.last_seen_at,
            threshold_secs: t.threshold_secs,
            reason: t.reason.clone(),
        };
        if let Err(err) =
            natsbus::publish(&self.client, self.subjects.presence_changed(&t.agent_id), &msg).await
        {
            tracing::warn!(agent_id = %t.agent_id, error = %err, "publishing presence-changed failed");
        }
        if let Some(incident_id) = t.incident_id {
            self.announce_incident(t, incident_id).await;
        }
        let last_seen = t.last_seen_at.map(|at| at.to_rfc3339());
        match t.state {
            PresenceState::Online => tracing::info!(
                agent_id = %t.agent_id,
                last_seen = last_seen.as_deref(),
                threshold_secs = t.threshold_secs,
                reason = %t.reason,
                "agent online"
            ),
            PresenceState::Offline => {
                tracing::info!(
                    agent_id = %t.agent_id,
                    last_seen = last_seen.as_deref(),
                    threshold_secs = t.threshold_secs,
                    reason = %t.reason,
                    incident_id = t.incident_id,
                    "agent offline"
                );
                // Marked offline minus (last heartbeat + threshold).
                let delay_ms = now - t.changed_at.timestamp_millis();
                metrics::histogram!("opspilot_presence_detection_delay_seconds", "reason" => t.reason.clone())
                    .record(delay_ms.max(0) as f64 / 1000.0);
            }
        }
        metrics::counter!("opspilot_presence_transitions_total", "state" => t.state.as_str()).increment(1);
    }
}

impl Transitions {
    /// Tells the change feed about the `agent_offline` incident the transition opened
    /// (offline) or resolved (online), at most once like the presence change: the
    /// record is in Postgres, the feed only spares operators a reload.
    async fn announce_incident(&self, t: &AppliedTransition, incident_id: i64) {
        let published = match t.state {
            PresenceState::Offline => {
                let msg = wire_models::IncidentCreated {
                    v: PROTOCOL_VERSION,
                    incident_id,
                    agent_id: t.agent_id.clone(),
                    kind: match wire_models::EventKind::parse(storage::incidents::OFFLINE_INCIDENT_TYPE) {
                        Ok(kind) => kind,
                        Err(_) => return,
                    },
                    severity: wire_models::Severity::Critical,
                    is_critical: true,
                    fingerprint: storage::incidents::offline_fingerprint(&t.agent_id),
                    created_at: t.changed_at,
                };
                natsbus::publish(&self.client, self.subjects.incident_created(), &msg).await
            }
            PresenceState::Online => {
                let msg = wire_models::IncidentUpdated {
                    v: PROTOCOL_VERSION,
                    incident_id,
                    agent_id: t.agent_id.clone(),
                    change: wire_models::IncidentChange::Status,
                    status: Some(storage::incidents::IncidentStatus::Resolved.as_str().to_owned()),
                    occurrences: None,
                    last_seen_at: t.last_seen_at,
                    analysis_status: None,
                    updated_at: t.changed_at,
                };
                natsbus::publish(&self.client, self.subjects.incident_updated(), &msg).await
            }
        };
        if let Err(err) = published {
            tracing::warn!(agent_id = %t.agent_id, incident_id, error = %err, "publishing the offline incident's change failed");
        }
    }
}

fn merge(pending: &mut Pending, intents: impl Iterator<Item = Intent>) {
    for intent in intents {
        pending.insert(intent.agent_id, (intent.state, intent.reason));
    }
}

/// Puts a round back, without overriding newer intents that arrived meanwhile.
fn putback(pending: &mut Pending, round: Pending) {
    for (id, entry) in round {
        pending.entry(id).or_insert(entry);
    }
}

fn secs(ms: i64) -> u32 {
    u32::try_from((ms.max(0) + 999) / 1000).unwrap_or(u32::MAX)
}

fn change_from_applied(t: &AppliedTransition) -> StateChange {
    StateChange {
        agent_id: t.agent_id.clone(),
        since_ms: t.changed_at.timestamp_millis(),
        last_seen_ms: t.last_seen_at.map_or(0, |at| at.timestamp_millis()),
        threshold_ms: i64::from(t.threshold_secs) * 1000,
    }
}

fn change_from_stored(s: &StoredPresence, proposed: Option<&&Transition>) -> StateChange {
    let last_seen = s.last_seen_at.or_else(|| proposed.and_then(|t| t.last_seen_at));
    let threshold = proposed.map_or(s.threshold_secs.unwrap_or(0), |t| t.threshold_secs);
    StateChange {
        agent_id: s.agent_id.clone(),
        since_ms: s.since.map_or(0, |at| at.timestamp_millis()),
        last_seen_ms: last_seen.map_or(0, |at| at.timestamp_millis()),
        threshold_ms: i64::from(threshold) * 1000,
    }
}
