//! HELP text of every metric the api-gateway records (`natsbus`'s included), given to
//! the recorder at start.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

pub(crate) fn describe() {
    natsbus::metrics::describe();
    describe_counter!(
        "opspilot_http_requests_total",
        Unit::Count,
        "HTTP requests answered, by route (the matched pattern), method and status."
    );
    describe_histogram!(
        "opspilot_http_request_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request, by route and method."
    );
    describe_histogram!(
        "opspilot_rpc_seconds",
        Unit::Seconds,
        "Round trip of each action sent to an agent, by command and outcome."
    );
    describe_counter!(
        "opspilot_fleet_actions_total",
        Unit::Count,
        "Fleet-wide actions ended, by final state (finished, cancelled, unfinished)."
    );
    describe_counter!("opspilot_logins_total", Unit::Count, "Login attempts, by outcome (ok, refused).");
    describe_counter!("opspilot_enrollments_total", Unit::Count, "Agent enrollments, by outcome.");
    describe_counter!(
        "opspilot_password_hash_busy_total",
        Unit::Count,
        "Requests answered 503 because every password-hashing slot stayed busy."
    );
    describe_counter!(
        "opspilot_ratelimited_total",
        Unit::Count,
        "Requests refused by a rate limit, by scope."
    );
    describe_counter!(
        "opspilot_ratelimit_unavailable_total",
        Unit::Count,
        "Rate-limit checks that could not reach Redis."
    );
    describe_counter!(
        "opspilot_api_cache_total",
        Unit::Count,
        "Cached reads, by where they were answered from (local, shared, miss)."
    );
    describe_histogram!(
        "opspilot_audit_batch_rows",
        Unit::Count,
        "Audit rows written per group commit, by queue (begin, finish)."
    );
    describe_counter!(
        "opspilot_audit_write_failures_total",
        Unit::Count,
        "Audit group commits that failed, by queue (begin, finish)."
    );
    describe_gauge!(
        "opspilot_bus_revocations",
        Unit::Count,
        "Keys on the bus account's revocation list as last pushed; the same in every replica."
    );
    describe_gauge!(
        "opspilot_stream_clients",
        Unit::Count,
        "Live-stream (SSE) clients connected to this replica."
    );
    describe_counter!(
        "opspilot_stream_feed_messages_total",
        Unit::Count,
        "Change-feed messages read by this replica for its live streams."
    );
    describe_counter!(
        "opspilot_stream_lagged_total",
        Unit::Count,
        "Live-stream clients closed for falling behind the feed."
    );
}

#[cfg(test)]
mod tests {
    test_support::every_metric_described_test!(super::describe, shared: [natsbus::metrics::describe]);
}
