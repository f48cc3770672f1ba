//! HELP text of every metric the event-ingestor records (`natsbus`'s included), given
//! to the recorder at start.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

pub(crate) fn describe() {
    natsbus::metrics::describe();
    describe_counter!(
        "opspilot_events_ingested_total",
        Unit::Count,
        "Events stored and acknowledged (duplicates and dead letters not included)."
    );
    describe_counter!(
        "opspilot_incidents_created_total",
        Unit::Count,
        "Incidents opened by ingested events."
    );
    describe_counter!(
        "opspilot_inventory_snapshots_total",
        Unit::Count,
        "Inventory snapshots stored and acknowledged."
    );
    describe_counter!("opspilot_inventory_rows_total", Unit::Count, "Rows written to the inventory history.");
    describe_histogram!(
        "opspilot_ingest_batch_size",
        Unit::Count,
        "Messages in each batch pulled from JetStream, by consumer (events, inventory)."
    );
    describe_histogram!(
        "opspilot_ingest_batch_seconds",
        Unit::Seconds,
        "Time to decode, store and acknowledge one batch, by consumer (events, inventory)."
    );
    describe_counter!(
        "opspilot_ingest_retries_total",
        Unit::Count,
        "Batches retried in place after a transient failure, by what failed."
    );
    describe_gauge!(
        "opspilot_consumer_pending",
        Unit::Count,
        "Messages in the stream not yet delivered to the durable consumer (its lag), by \
         consumer; the same in every replica."
    );
    describe_gauge!(
        "opspilot_consumer_ack_pending",
        Unit::Count,
        "Messages delivered to the durable consumer and not yet acknowledged, by consumer; \
         the same in every replica."
    );
    describe_counter!(
        "opspilot_feed_recurrences_dropped_total",
        Unit::Count,
        "Incident recurrences not announced on the change feed because too many were pending."
    );
    describe_counter!(
        "opspilot_retention_rows_removed_total",
        Unit::Count,
        "Rows removed by retention, by table (the event ledger's count is the dropped \
         partitions' estimate)."
    );
    describe_counter!(
        "opspilot_retention_bytes_removed_total",
        Unit::Bytes,
        "Bytes removed by retention, by table (the rows' size; a dropped ledger partition's \
         size on disk)."
    );
    describe_gauge!(
        "opspilot_retention_oldest_row_age_seconds",
        Unit::Seconds,
        "Age of the oldest row each history keeps after the last maintenance turn, by table; \
         the same in every replica."
    );
    describe_histogram!(
        "opspilot_retention_run_seconds",
        Unit::Seconds,
        "Duration of each completed maintenance turn."
    );
    describe_counter!(
        "opspilot_retention_failures_total",
        Unit::Count,
        "Maintenance turns that failed (retried at the next)."
    );
}

#[cfg(test)]
mod tests {
    test_support::every_metric_described_test!(super::describe, shared: [natsbus::metrics::describe]);
}
