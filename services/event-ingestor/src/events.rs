//! Events -> incidents.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, Message};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use wire_models::{
    AgentSubject, DlqOrigin, Event, HEADER_MSG_ID, HEADER_TRACEPARENT, IncidentCreated, PROTOCOL_VERSION,
    Subjects,
};

use crate::consumer::{self, BatchHandler, Checked, Rejection};
use crate::known::KnownAgents;
use crate::stats::Stats;

/// How long events whose incidents could not be announced wait before they come back.
const ANNOUNCE_RETRY: Duration = Duration::from_secs(1);

pub(crate) struct EventsHandler {
    pub(crate) js: jetstream::Context,
    pub(crate) pool: PgPool,
    pub(crate) subjects: Subjects,
    pub(crate) known: Arc<KnownAgents>,
    pub(crate) stats: Arc<Stats>,
    /// Shared by the events and inventory consumers: one allowance per agent.
    pub(crate) dlq_budget: Arc<natsbus::DeadLetterBudget>,
    pub(crate) dedup: bool,
    /// Occurrence updates waiting for the change feed.
    pub(crate) recurrences: Arc<crate::recurrences::Recurrences>,
    pub(crate) ack_wait: Duration,
}

/// Decodes and checks one message (pure, runs on a blocking thread with the batch).
pub(crate) fn decode(
    subjects: &Subjects,
    subject: &str,
    payload: &[u8],
    dedup: bool,
) -> Result<storage::incidents::NewEvent, Rejection> {
    let parsed = subjects.parse(subject).map_err(|e| Rejection::new(e.code(), e.to_string()))?;
    let AgentSubject::Event { agent_id, kind } = parsed else {
        return Err(Rejection::new("invalid_subject", format!("{subject} is not an event subject")));
    };
    let event: Event = wire_models::decode(payload).map_err(|e| Rejection::new(e.code(), e.to_string()))?;
    event.check_subject(&agent_id, &kind).map_err(|e| Rejection::new(e.code(), e.to_string()))?;
    Ok(storage::incidents::new_event(event, dedup))
}

impl BatchHandler for EventsHandler {
    async fn handle(&self, batch: Vec<Message>, shutdown: &CancellationToken) {
        let started = Instant::now();
        let size = batch.len();
        // Agents that sent trace context see their event's ingestion in their trace.
        let spans: Vec<tracing::Span> = batch
            .iter()
            .filter(|m| m.headers.as_ref().is_some_and(|h| h.get(HEADER_TRACEPARENT).is_some()))
            .map(|m| {
                let id = m.headers.as_ref().and_then(|h| h.get(HEADER_MSG_ID)).map(|v| v.as_str().to_owned());
                natsbus::process_span!(&m.subject, m.headers.as_ref(), messaging.message.id = id)
            })
            .collect();

        let (subjects, dedup) = (self.subjects.clone(), self.dedup);
        let Some(Checked { good, mut rejected }) = consumer::decode_enrolled(
            &batch,
            &self.known,
            &self.pool,
            self.ack_wait,
            shutdown,
            move |subject, payload| decode(&subjects, subject, payload, dedup),
            |event| &event.agent_id,
        )
        .await
        else {
            return;
        };

        let events: Vec<storage::incidents::NewEvent> = good.iter().map(|(_, e)| e.clone()).collect();
        let batch_span = batch_span(&spans, size, events.len());
        let write = consumer::retry_transient("incidents", &batch, self.ack_wait, shutdown, || {
            storage::incidents::ingest_events(&self.pool, &events)
        })
        .instrument(batch_span.clone())
        .await;
        let (created, acked, seen_before) = match write {
            None => {
                consumer::nak_all(&batch).await;
                return;
            }
            Some(Ok(outcome)) => {
                self.recurrences.note(outcome.recurred);
                let redelivered = events.len() as u64 - outcome.new_events.min(events.len() as u64);
                Stats::add(&self.stats.redelivered, redelivered);
                // Which events were stored before is not known one by one; the batch's
                // ids serve, as the lookup only finds incidents they opened.
                let seen_before: Vec<uuid::Uuid> =
                    if redelivered > 0 { events.iter().map(|e| e.event_id).collect() } else { Vec::new() };
                (outcome.created, good.iter().map(|(i, _)| *i).collect::<Vec<_>>(), seen_before)
            }
            Some(Err(err)) => {
                // Something in the batch is refused by the database for good (a
                // constraint, say). Write one at a time to find it; park only it.
                tracing::warn!(error = %err, "batch refused by postgres; isolating the offending events");
                let (mut created, mut acked, mut seen_before) = (Vec::new(), Vec::new(), Vec::new());
                for (i, event) in &good {
                    match storage::incidents::ingest_events(&self.pool, std::slice::from_ref(event)).await {
                        Ok(outcome) => {
                            if outcome.new_events == 0 {
                                seen_before.push(event.event_id);
                            }
                            created.extend(outcome.created);
                            self.recurrences.note(outcome.recurred);
                            acked.push(*i);
                        }
                        Err(err) if err.is_transient() => {}
                        Err(err) => rejected.push((*i, Rejection::new("storage_rejected", err.to_string()))),
                    }
                }
                (created, acked, seen_before)
            }
        };

        // Announce before acknowledging. A crash or a failed publish in between leaves
        // the events unacknowledged; their redelivery finds them stored, looks up the
        // incidents they opened that are still new, and announces those again (the
        // message id lets JetStream drop a copy it already has).
        for incident in &created {
            tracing::debug!(incident_id = incident.id, agent_id = %incident.agent_id, kind = %incident.kind, "incident created");
        }
        let announced = async {
            match self.unannounced(&created, &seen_before).await {
                Ok(again) => self.announce_all(created.iter().chain(&again)).await,
                Err(err) => {
                    tracing::warn!(error = %err, "looking up incidents of redelivered events failed");
                    false
                }
            }
        }
        .instrument(batch_span)
        .await;
        if announced {
            for i in &acked {
                let _ = batch[*i].ack().await;
            }
        } else {
            tracing::warn!(
                events = acked.len(),
                "incident-created not announced; the events will be redelivered"
            );
            for i in &acked {
                let _ = batch[*i].ack_with(AckKind::Nak(Some(ANNOUNCE_RETRY))).await;
            }
        }
        let dead = consumer::dead_letter_all(
            &self.js,
            &self.pool,
            &self.subjects,
            &self.dlq_budget,
            DlqOrigin::Events,
            rejected.into_iter().map(|(i, r)| (&batch[i], r)).collect(),
        )
        .await;
        // Events neither acked nor dead-lettered (a transient failure while isolating)
        // come back after the ack deadline.
        let acked = if announced { acked.len() } else { 0 };
        drop(spans);

        Stats::add(&self.stats.messages, size as u64);
        Stats::add(&self.stats.total, size as u64);
        Stats::add(&self.stats.batches, 1);
        Stats::add(&self.stats.batches_total, 1);
        Stats::add(&self.stats.dead_lettered, dead);
        Stats::add(&self.stats.incidents_created, created.len() as u64);
        metrics::counter!("opspilot_events_ingested_total").increment(acked as u64);
        metrics::counter!("opspilot_incidents_created_total").increment(created.len() as u64);
        metrics::histogram!("opspilot_ingest_batch_size", "consumer" => "events").record(size as f64);
        metrics::histogram!("opspilot_ingest_batch_seconds", "consumer" => "events")
            .record(started.elapsed().as_secs_f64());
    }
}

impl EventsHandler {
    /// Incidents opened by events seen before (a redelivery) that may not have been
    /// announced, minus the ones this batch opened itself.
    async fn unannounced(
        &self,
        created: &[storage::incidents::CreatedIncident],
        seen_before: &[uuid::Uuid],
    ) -> Result<Vec<storage::incidents::CreatedIncident>, storage::StorageError> {
        if seen_before.is_empty() {
            return Ok(Vec::new());
        }
        let mut found = storage::incidents::unannounced_by_events(&self.pool, seen_before).await?;
        found.retain(|f| !created.iter().any(|c| c.id == f.id));
        if !found.is_empty() {
            tracing::info!(incidents = found.len(), "announcing incidents of redelivered events again");
        }
        Ok(found)
    }

    /// Tells other services (the analyzer) about new incidents, all publishes in flight
    /// at once. True when JetStream stored every one.
    async fn announce_all<'a>(
        &self,
        incidents: impl Iterator<Item = &'a storage::incidents::CreatedIncident>,
    ) -> bool {
        let results = futures::future::join_all(incidents.map(|incident| self.announce(incident))).await;
        results.into_iter().all(|ok| ok)
    }

    /// Publishes one incident-created message; false when JetStream did not take it.
    async fn announce(&self, incident: &storage::incidents::CreatedIncident) -> bool {
        let msg = IncidentCreated {
            v: PROTOCOL_VERSION,
            incident_id: incident.id,
            agent_id: incident.agent_id.clone(),
            kind: incident.kind.clone(),
            severity: incident.severity,
            is_critical: incident.is_critical,
            fingerprint: incident.fingerprint.clone(),
            created_at: incident.created_at,
        };
        let msg_id = format!("incident-{}", incident.id);
        match natsbus::js_publish(&self.js, self.subjects.incident_created(), &msg, Some(&msg_id)).await {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(incident_id = incident.id, error = %err, "publishing incident-created failed");
                false
            }
        }
    }
}

/// The span of writing one batch. Its database spans belong to the events' traces: it
/// is a child of the first traced event's span and linked to the others' (one span
/// cannot have several parents); a batch without traced events is a trace of its own.
fn batch_span(traced: &[tracing::Span], size: usize, good: usize) -> tracing::Span {
    let span = tracing::info_span!("ingest.batch", size, good, messaging.batch.message_count = size);
    natsbus::trace::adopt_batch(&span, &natsbus::trace::contexts(traced));
    span
}
