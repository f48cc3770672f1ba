//! From the change feed to delivery rows: which target hears about what.
//!
//! One durable consumer on the incidents stream is shared by every replica, so each
//! feed message is routed by one replica at a time; the delivery row's unique key
//! (target, what is notified) makes a redelivery write nothing new. Messages are
//! acknowledged once their rows are committed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, Message};
use futures::{FutureExt, StreamExt};
use natsbus::feed::Change;
use serde_json::json;
use storage::PgPool;
use storage::notifications::{NewDelivery, NotifyEvent, Target};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use wire_models::{ActionFinished, IncidentCreated, PresenceChanged, PresenceState, Subjects};

/// Redelivery deadline of a message being routed.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Deliveries of a message whose rows cannot be written (Postgres away) before it is
/// given up; with RETRY_DELAY between them, about eight minutes of outage.
const MAX_DELIVER: i64 = 100;
const RETRY_DELAY: Duration = Duration::from_secs(5);
/// Feed messages routed together (one insert).
const BATCH: usize = 256;
/// How long the target list is reused before it is read again, so an admin's change
/// applies within this.
const TARGETS_TTL: Duration = Duration::from_secs(2);

pub(crate) fn spec(stream: String, durable: String) -> natsbus::DurableSpec {
    natsbus::DurableSpec {
        stream,
        durable,
        description: "OpsPilot notification routing (shared by every analyzer replica)".into(),
        // The stream holds only the change feed; every message is looked at.
        filter: String::new(),
        ack_wait: ACK_WAIT,
        max_deliver: MAX_DELIVER,
        max_ack_pending: 10_000,
        from_now: true,
    }
}

/// The enabled targets, re-read every [`TARGETS_TTL`].
struct Targets {
    pool: PgPool,
    targets: Vec<Target>,
    read_at: Option<Instant>,
}

impl Targets {
    async fn current(&mut self) -> Result<&[Target], storage::StorageError> {
        if self.read_at.is_none_or(|at| at.elapsed() >= TARGETS_TTL) {
            self.targets = storage::notifications::enabled_targets(&self.pool).await?;
            self.read_at = Some(Instant::now());
        }
        Ok(&self.targets)
    }
}

/// One notification before it is addressed to its targets.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Notice {
    pub(crate) event: NotifyEvent,
    pub(crate) dedup_key: String,
    pub(crate) agent_id: String,
    pub(crate) summary: String,
    pub(crate) payload: serde_json::Value,
}

fn incident_notice(m: &IncidentCreated, hostname: &str) -> Notice {
    let severity = if m.is_critical { "critical" } else { m.severity.as_str() };
    Notice {
        event: NotifyEvent::Incident,
        dedup_key: format!("incident:{}", m.incident_id),
        agent_id: m.agent_id.to_string(),
        summary: format!("{severity} {} on {hostname}: incident #{}", m.kind, m.incident_id),
        payload: json!({
            "incident_id": m.incident_id,
            "agent_id": m.agent_id,
            "hostname": hostname,
            "kind": m.kind,
            "severity": m.severity,
            "is_critical": m.is_critical,
            "created_at": m.created_at,
        }),
    }
}

fn offline_notice(m: &PresenceChanged, hostname: &str) -> Notice {
    Notice {
        event: NotifyEvent::Offline,
        dedup_key: format!("offline:{}:{}", m.agent_id, m.changed_at.timestamp_micros()),
        agent_id: m.agent_id.to_string(),
        summary: format!("{hostname} went offline ({}, silent over {} s)", m.reason, m.threshold_secs),
        payload: json!({
            "agent_id": m.agent_id,
            "hostname": hostname,
            "changed_at": m.changed_at,
            "last_seen_at": m.last_seen_at,
            "threshold_secs": m.threshold_secs,
            "reason": m.reason,
        }),
    }
}

fn action_notice(m: &ActionFinished, hostname: &str) -> Notice {
    Notice {
        event: NotifyEvent::ActionFailed,
        dedup_key: format!("action:{}", m.request_id),
        agent_id: m.agent_id.to_string(),
        summary: format!("{} on {hostname} ended: {}", m.command, m.outcome),
        payload: json!({
            "request_id": m.request_id,
            "agent_id": m.agent_id,
            "hostname": hostname,
            "command": m.command,
            "outcome": m.outcome,
            "incident_id": m.incident_id,
            "duration_ms": m.duration_ms,
            "finished_at": m.finished_at,
        }),
    }
}

/// The targets a change goes to, or nothing (updates, online, successful actions).
fn wanted<'t>(change: &Change, targets: &'t [Target]) -> Vec<&'t Target> {
    let pick = |f: &dyn Fn(&Target) -> bool| targets.iter().filter(|t| f(t)).collect();
    match change {
        // An agent_offline incident is what the `offline` notification already says.
        Change::IncidentCreated(m) if m.kind.as_str() == storage::incidents::OFFLINE_INCIDENT_TYPE => {
            Vec::new()
        }
        Change::IncidentCreated(m) => pick(&|t| t.wants_incident(m.kind.as_str(), m.severity, m.is_critical)),
        Change::Presence(m) if m.state == PresenceState::Offline => pick(&|t| t.wants(NotifyEvent::Offline)),
        Change::ActionFinished(m) if m.outcome != "ok" => pick(&|t| t.wants(NotifyEvent::ActionFailed)),
        // A fleet action's per-agent failures are in its results, not one post each.
        Change::IncidentUpdated(_)
        | Change::Presence(_)
        | Change::ActionFinished(_)
        | Change::FleetAction(_) => Vec::new(),
    }
}

pub(crate) struct Router {
    pub(crate) pool: PgPool,
    pub(crate) subjects: Subjects,
    /// Woken when rows were written, so this replica sends them without waiting a poll.
    pub(crate) written: Arc<Notify>,
}

impl Router {
    /// Routes a batch of feed messages into delivery rows (one statement).
    async fn route(&self, targets: &mut Targets, batch: &[Message]) -> Result<u64, storage::StorageError> {
        let targets = targets.current().await?;
        if targets.is_empty() {
            return Ok(0);
        }
        let mut hostnames: HashMap<String, String> = HashMap::new();
        let mut rows = Vec::new();
        for msg in batch {
            let Some(change) = Change::decode(&self.subjects, &msg.subject, &msg.payload) else {
                // Only the backend publishes here: a newer publisher or a bug, not an
                // agent's input. Said and counted, then left; it is still in the stream.
                tracing::warn!(subject = %msg.subject, "feed message not understood; not routed");
                metrics::counter!("opspilot_notifications_unroutable_total").increment(1);
                continue;
            };
            let to = wanted(&change, targets);
            if to.is_empty() {
                continue;
            }
            let Some(agent) = change.agent_id() else { continue };
            let hostname = match hostnames.get(agent.as_str()) {
                Some(name) => name.clone(),
                None => {
                    let name = storage::agents::get(&self.pool, agent)
                        .await?
                        .map_or_else(|| agent.to_string(), |row| row.hostname);
                    hostnames.insert(agent.to_string(), name.clone());
                    name
                }
            };
            let notice = match &change {
                Change::IncidentCreated(m) => incident_notice(m, &hostname),
                Change::Presence(m) => offline_notice(m, &hostname),
                Change::ActionFinished(m) => action_notice(m, &hostname),
                Change::IncidentUpdated(_) | Change::FleetAction(_) => continue,
            };
            metrics::counter!("opspilot_notifications_routed_total", "event" => notice.event.as_str())
                .increment(to.len() as u64);
            rows.extend(to.into_iter().map(|t| NewDelivery {
                target_id: t.id,
                dedup_key: notice.dedup_key.clone(),
                event: notice.event.as_str().to_owned(),
                agent_id: Some(notice.agent_id.clone()),
                summary: notice.summary.clone(),
                payload: notice.payload.clone(),
            }));
        }
        storage::notifications::enqueue(&self.pool, &rows).await
    }
}

/// Runs until `shutdown`.
pub(crate) async fn run(
    js: jetstream::Context,
    spec: natsbus::DurableSpec,
    router: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut targets = Targets { pool: router.pool.clone(), targets: Vec::new(), read_at: None };
    let limits = natsbus::PullLimits { messages: BATCH, bytes: None };
    while let Some(mut messages) = natsbus::pull_until(&js, &spec, limits, "notifications", &shutdown).await {
        tracing::info!(durable = %spec.durable, "notification routing started");
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                next = messages.next() => next,
            };
            let first = match first {
                Some(Ok(msg)) => msg,
                Some(Err(err)) => {
                    tracing::debug!(error = %err, "notification consumer hiccup");
                    continue;
                }
                None => break,
            };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match messages.next().now_or_never() {
                    Some(Some(Ok(msg))) => batch.push(msg),
                    _ => break,
                }
            }
            match router.route(&mut targets, &batch).await {
                Ok(written) => {
                    for msg in &batch {
                        let _ = msg.ack().await;
                    }
                    if written > 0 {
                        router.written.notify_one();
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, messages = batch.len(), "routing notifications failed; retrying");
                    for msg in &batch {
                        let _ = msg.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
                    }
                }
            }
        }
        tracing::warn!("notification consumer ended; re-subscribing");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use secrecy::SecretString;
    use storage::notifications::{TargetKind, TargetSource};
    use wire_models::{AgentId, EventKind, Severity};

    use super::*;

    fn target(events: &[NotifyEvent], min: Severity, kinds: &[&str]) -> Target {
        Target {
            id: uuid::Uuid::now_v7(),
            name: "t".into(),
            kind: TargetKind::Webhook,
            url: SecretString::from("http://127.0.0.1:1/"),
            secret: None,
            events: events.to_vec(),
            min_severity: min,
            kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
            rate_per_minute: 10,
            enabled: true,
            source: TargetSource::Api,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn agent() -> AgentId {
        AgentId::parse("0123456789ab").unwrap()
    }

    fn created(kind: &str, severity: Severity, is_critical: bool) -> Change {
        Change::IncidentCreated(IncidentCreated {
            v: 1,
            incident_id: 1,
            agent_id: agent(),
            kind: EventKind::parse(kind).unwrap(),
            severity,
            is_critical,
            fingerprint: "f".into(),
            created_at: Utc::now(),
        })
    }

    #[test]
    fn incidents_route_by_severity_kind_and_event() {
        let all = [NotifyEvent::Incident, NotifyEvent::Offline, NotifyEvent::ActionFailed];
        let critical_only = target(&all, Severity::Critical, &[]);
        let errors_of_disk = target(&[NotifyEvent::Incident], Severity::Error, &["disk_full"]);
        let offline_only = target(&[NotifyEvent::Offline], Severity::Info, &[]);
        let mut disabled = target(&all, Severity::Info, &[]);
        disabled.enabled = false;
        let targets = [critical_only, errors_of_disk, offline_only, disabled];
        let names = |change: &Change| -> Vec<usize> {
            let to = wanted(change, &targets);
            targets
                .iter()
                .enumerate()
                .filter(|(_, t)| to.iter().any(|w| w.id == t.id))
                .map(|(i, _)| i)
                .collect()
        };
        assert_eq!(names(&created("disk_full", Severity::Critical, true)), vec![0, 1]);
        assert_eq!(names(&created("disk_full", Severity::Error, false)), vec![1]);
        assert_eq!(names(&created("oom", Severity::Error, false)), Vec::<usize>::new());
        // A critical flag counts as critical whatever the severity field says.
        assert_eq!(names(&created("oom", Severity::Warning, true)), vec![0]);
        assert!(
            names(&created(storage::incidents::OFFLINE_INCIDENT_TYPE, Severity::Critical, true)).is_empty()
        );
        let offline = Change::Presence(PresenceChanged {
            v: 1,
            agent_id: agent(),
            state: PresenceState::Offline,
            changed_at: Utc::now(),
            last_seen_at: None,
            threshold_secs: 90,
            reason: "timeout".into(),
        });
        assert_eq!(names(&offline), vec![0, 2]);
        let Change::Presence(mut online) = offline else { unreachable!() };
        online.state = PresenceState::Online;
        assert!(names(&Change::Presence(online)).is_empty());
        let mut action = ActionFinished {
            v: 1,
            request_id: uuid::Uuid::now_v7(),
            agent_id: agent(),
            command: "restart_service".into(),
            outcome: "timeout".into(),
            incident_id: None,
            duration_ms: 5,
            finished_at: Utc::now(),
        };
        assert_eq!(names(&Change::ActionFinished(action.clone())), vec![0]);
        action.outcome = "ok".into();
        assert!(names(&Change::ActionFinished(action)).is_empty());
    }
}
