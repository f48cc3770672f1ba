//! Inventory snapshots -> history rows (only when the hash changes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, Message};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use wire_models::{AgentSubject, DlqOrigin, InventoryReport, Subjects};

use crate::consumer::{self, BatchHandler, Checked, Rejection};
use crate::known::KnownAgents;
use crate::stats::Stats;

pub(crate) struct InventoryHandler {
    pub(crate) js: jetstream::Context,
    pub(crate) pool: PgPool,
    pub(crate) subjects: Subjects,
    pub(crate) known: Arc<KnownAgents>,
    pub(crate) stats: Arc<Stats>,
    /// Shared by the events and inventory consumers: one allowance per agent.
    pub(crate) dlq_budget: Arc<natsbus::DeadLetterBudget>,
    pub(crate) ack_wait: Duration,
}

/// Decodes, checks and hashes one snapshot (CPU work: runs on a blocking thread).
pub(crate) fn decode(
    subjects: &Subjects,
    subject: &str,
    payload: &[u8],
) -> Result<storage::inventory::Snapshot, Rejection> {
    let parsed = subjects.parse(subject).map_err(|e| Rejection::new(e.code(), e.to_string()))?;
    let AgentSubject::Inventory { agent_id } = parsed else {
        return Err(Rejection::new("invalid_subject", format!("{subject} is not an inventory subject")));
    };
    let report: InventoryReport =
        wire_models::decode(payload).map_err(|e| Rejection::new(e.code(), e.to_string()))?;
    report.check_subject(&agent_id).map_err(|e| Rejection::new(e.code(), e.to_string()))?;
    storage::inventory::Snapshot::from_report(report)
        .map_err(|e| Rejection::new("invalid_message", e.to_string()))
}

impl BatchHandler for InventoryHandler {
    async fn handle(&self, batch: Vec<Message>, shutdown: &CancellationToken) {
        let started = Instant::now();
        let size = batch.len();
        let subjects = self.subjects.clone();
        let Some(Checked { good, mut rejected }) = consumer::decode_enrolled(
            &batch,
            &self.known,
            &self.pool,
            self.ack_wait,
            shutdown,
            move |subject, payload| decode(&subjects, subject, payload),
            |snapshot| &snapshot.agent_id,
        )
        .await
        else {
            return;
        };
        let (good_index, good): (Vec<usize>, Vec<storage::inventory::Snapshot>) = good.into_iter().unzip();

        let write = consumer::retry_transient("inventory", &batch, self.ack_wait, shutdown, || {
            storage::inventory::ingest_snapshots(&self.pool, &good)
        })
        .await;
        let mut acked = Vec::new();
        let mut rows = 0;
        match write {
            None => {
                consumer::nak_all(&batch).await;
                return;
            }
            Some(Ok(outcome)) => {
                rows = outcome.rows;
                acked = good_index;
            }
            Some(Err(err)) => {
                tracing::warn!(error = %err, "inventory batch refused by postgres; isolating the offending snapshots");
                for (i, snapshot) in good_index.into_iter().zip(&good) {
                    match storage::inventory::ingest_snapshots(&self.pool, std::slice::from_ref(snapshot))
                        .await
                    {
                        Ok(outcome) => {
                            rows += outcome.rows;
                            acked.push(i);
                        }
                        Err(err) if err.is_transient() => {}
                        Err(err) => rejected.push((i, Rejection::new("storage_rejected", err.to_string()))),
                    }
                }
            }
        }
        for i in &acked {
            let _ = batch[*i].ack().await;
        }
        let dead = consumer::dead_letter_all(
            &self.js,
            &self.pool,
            &self.subjects,
            &self.dlq_budget,
            DlqOrigin::Inventory,
            rejected.into_iter().map(|(i, r)| (&batch[i], r)).collect(),
        )
        .await;

        Stats::add(&self.stats.messages, size as u64);
        Stats::add(&self.stats.total, size as u64);
        Stats::add(&self.stats.batches, 1);
        Stats::add(&self.stats.dead_lettered, dead);
        metrics::counter!("opspilot_inventory_snapshots_total").increment(acked.len() as u64);
        metrics::counter!("opspilot_inventory_rows_total").increment(rows);
        metrics::histogram!("opspilot_ingest_batch_size", "consumer" => "inventory").record(size as f64);
        metrics::histogram!("opspilot_ingest_batch_seconds", "consumer" => "inventory")
            .record(started.elapsed().as_secs_f64());
    }
}
