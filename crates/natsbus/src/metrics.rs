//! HELP text of the metrics `natsbus` records (dead letters, the change feed), for
//! every service that uses it to pass to `service_kit::metrics::init` with its own.

use metrics::{Unit, describe_counter};

/// Describes every metric this crate records.
pub fn describe() {
    describe_counter!(
        "opspilot_dead_lettered_total",
        Unit::Count,
        "Messages parked on the dead-letter stream, by origin (events, inventory, heartbeats) and reason."
    );
    describe_counter!(
        "opspilot_dead_letters_suppressed_total",
        Unit::Count,
        "Bad messages dropped without a dead letter because their agent used up its hourly \
         dead-letter budget, by origin and reason."
    );
    describe_counter!(
        "opspilot_feed_publish_failures_total",
        Unit::Count,
        "Change-feed messages (incident updates, presence, action ends) that could not be \
         published, by message; the feed is at most once."
    );
}

#[cfg(test)]
mod tests {
    test_support::every_metric_described_test!(super::describe);
}
