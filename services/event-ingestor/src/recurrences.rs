//! Occurrences on the change feed, coalesced. An incident that recurs a thousand times a
//! second is one `incident.updated` message a second (per ingestor), carrying its latest
//! count: operators' streams see it move without the feed carrying every event again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use natsbus::feed::FeedPublisher;
use storage::incidents::RecurredIncident;
use tokio_util::sync::CancellationToken;
use wire_models::{IncidentChange, IncidentUpdated, PROTOCOL_VERSION};

/// Incidents waiting for the next round at most; past it, more are left for a later
/// round (their next recurrence notes them again).
const MAX_PENDING: usize = 100_000;

#[derive(Default)]
pub(crate) struct Recurrences {
    pending: Mutex<HashMap<i64, RecurredIncident>>,
}

impl Recurrences {
    /// Keeps each incident's latest state for the next round.
    pub(crate) fn note(&self, recurred: Vec<RecurredIncident>) {
        let Ok(mut pending) = self.pending.lock() else { return };
        for incident in recurred {
            let full = pending.len() >= MAX_PENDING;
            match pending.get_mut(&incident.id) {
                Some(known) if known.occurrences >= incident.occurrences => {}
                Some(known) => *known = incident,
                None if full => metrics::counter!("opspilot_feed_recurrences_dropped_total").increment(1),
                None => {
                    pending.insert(incident.id, incident);
                }
            }
        }
    }

    fn take(&self) -> Vec<RecurredIncident> {
        self.pending.lock().map(|mut p| p.drain().map(|(_, i)| i).collect()).unwrap_or_default()
    }

    /// Publishes what accumulated every `every`, and once more when stopping.
    pub(crate) async fn run(
        self: Arc<Self>,
        feed: FeedPublisher,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = shutdown.cancelled() => true,
                _ = tick.tick() => false,
            };
            for incident in self.take() {
                feed.incident_updated(&IncidentUpdated {
                    v: PROTOCOL_VERSION,
                    incident_id: incident.id,
                    agent_id: incident.agent_id,
                    change: IncidentChange::Occurrences,
                    status: Some(incident.status.as_str().to_owned()),
                    occurrences: Some(incident.occurrences),
                    last_seen_at: Some(incident.last_seen_at),
                    analysis_status: None,
                    updated_at: Utc::now(),
                })
                .await;
            }
            if stopping {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use storage::incidents::IncidentStatus;
    use wire_models::AgentId;

    use super::*;

    fn recurred(id: i64, occurrences: i64) -> RecurredIncident {
        RecurredIncident {
            id,
            agent_id: AgentId::parse("a1b2c3d4e5f6").unwrap(),
            status: IncidentStatus::New,
            occurrences,
            last_seen_at: DateTime::from_timestamp(1_764_460_800 + occurrences, 0).unwrap(),
        }
    }

    #[test]
    fn each_incident_is_kept_once_at_its_highest_count() {
        let r = Recurrences::default();
        r.note(vec![recurred(1, 5), recurred(2, 3)]);
        // A batch that committed earlier but arrives later does not move a count back.
        r.note(vec![recurred(1, 4), recurred(1, 9)]);
        let mut taken = r.take();
        taken.sort_by_key(|i| i.id);
        assert_eq!(taken.iter().map(|i| (i.id, i.occurrences)).collect::<Vec<_>>(), [(1, 9), (2, 3)]);
        assert!(r.take().is_empty(), "a round takes everything");
    }
}
