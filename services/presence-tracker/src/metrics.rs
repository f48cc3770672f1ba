//! HELP text of every metric the presence-tracker records (`natsbus`'s included),
//! given to the recorder at start.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

pub(crate) fn describe() {
    natsbus::metrics::describe();
    describe_counter!(
        "opspilot_presence_heartbeats_total",
        Unit::Count,
        "Heartbeats read from the AGENTS bucket, by outcome (recorded, rejected, unknown_agent)."
    );
    describe_histogram!(
        "opspilot_presence_record_seconds",
        Unit::Seconds,
        "Time to record one batch of heartbeats in Redis."
    );
    describe_histogram!(
        "opspilot_presence_record_batch_size",
        Unit::Count,
        "Heartbeats in each batch recorded in Redis."
    );
    describe_counter!(
        "opspilot_presence_transitions_total",
        Unit::Count,
        "Presence transitions this replica wrote, by new state (online, offline)."
    );
    describe_histogram!(
        "opspilot_presence_detection_delay_seconds",
        Unit::Seconds,
        "Time from an agent's offline deadline (last heartbeat plus threshold) to its \
         transition, by what detected it (timeout, key_expired)."
    );
    describe_gauge!(
        "opspilot_presence_agents_online",
        Unit::Count,
        "Agents with a live heartbeat in Redis at the last scan; the same in every replica."
    );
    describe_gauge!(
        "opspilot_presence_detection_paused",
        "1 while offline detection is paused (NATS down, the watch catching up, Redis unable \
         to take heartbeats), else 0."
    );
    describe_counter!(
        "opspilot_presence_keyspace_events_total",
        Unit::Count,
        "Redis keyspace `expired` events of agents' presence keys received."
    );
    describe_counter!(
        "opspilot_presence_watch_restarts_total",
        Unit::Count,
        "Times the KV watch was re-created, by reason (error, ended, reconnect, stalled, resync)."
    );
    describe_counter!(
        "opspilot_presence_redis_resyncs_total",
        Unit::Count,
        "Times Redis was found to have lost the presence data and was re-synced from the bucket."
    );
    describe_counter!(
        "opspilot_presence_last_seen_rows_total",
        Unit::Count,
        "Agents' last_seen_at rows updated in Postgres."
    );
    describe_histogram!(
        "opspilot_presence_last_seen_flush_seconds",
        Unit::Seconds,
        "Time to write one batch of last_seen_at to Postgres."
    );
}

#[cfg(test)]
mod tests {
    test_support::every_metric_described_test!(super::describe, shared: [natsbus::metrics::describe]);
}
