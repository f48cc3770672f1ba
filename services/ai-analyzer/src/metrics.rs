//! HELP text of every metric the ai-analyzer records (`natsbus`'s included), given to
//! the recorder at start.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

pub(crate) fn describe() {
    natsbus::metrics::describe();
    describe_counter!(
        "opspilot_analyses_total",
        Unit::Count,
        "Analyses asked for, by trigger (request, auto) and outcome."
    );
    describe_counter!(
        "opspilot_ai_calls_total",
        Unit::Count,
        "Calls to an analyzer (openrouter, rules), by analyzer and outcome (ok or the error code)."
    );
    describe_histogram!(
        "opspilot_ai_call_seconds",
        Unit::Seconds,
        "Duration of each analyzer call, retries included, by analyzer."
    );
    describe_counter!(
        "opspilot_ai_failures_total",
        Unit::Count,
        "Analyzer calls that failed, by analyzer and reason."
    );
    describe_counter!(
        "opspilot_ai_retryable_failures_total",
        Unit::Count,
        "Attempts at the AI endpoint that failed in a way worth retrying, by reason."
    );
    describe_counter!(
        "opspilot_ai_retries_total",
        Unit::Count,
        "Attempts at the AI endpoint retried after a retryable failure, by reason."
    );
    describe_counter!(
        "opspilot_ai_tokens_total",
        Unit::Count,
        "Tokens the AI endpoint reported using, by analyzer and kind (prompt, completion)."
    );
    describe_counter!(
        "opspilot_ai_dropped_actions_total",
        Unit::Count,
        "Suggested actions refused by the command allow-list, by analyzer."
    );
    describe_counter!(
        "opspilot_ai_ungrounded_actions_total",
        Unit::Count,
        "Suggested mutating actions dropped for naming a service the incident and host do not."
    );
    describe_counter!("opspilot_ai_cache_hits_total", Unit::Count, "Analyses answered from the Redis cache.");
    describe_counter!(
        "opspilot_ai_cache_misses_total",
        Unit::Count,
        "Analyses not found in the Redis cache."
    );
    describe_counter!(
        "opspilot_ai_cache_errors_total",
        Unit::Count,
        "Reads of the analysis cache that failed or timed out (analyzed without it)."
    );
    describe_counter!(
        "opspilot_notifications_routed_total",
        Unit::Count,
        "Notification deliveries queued, one per matching target, by event."
    );
    describe_counter!(
        "opspilot_notifications_unroutable_total",
        Unit::Count,
        "Change-feed messages the notifier could not read (left in the stream, not routed)."
    );
    describe_counter!(
        "opspilot_notification_attempts_total",
        Unit::Count,
        "Notification posts, by target kind and outcome (delivered, retry, failed)."
    );
    describe_histogram!(
        "opspilot_notification_post_seconds",
        Unit::Seconds,
        "Duration of each notification post, by target kind."
    );
    describe_counter!(
        "opspilot_notifications_digested_total",
        Unit::Count,
        "Notifications over a target's rate folded into a digest instead of sent one by one."
    );
    describe_gauge!(
        "opspilot_notifications_backlog",
        Unit::Count,
        "Notification deliveries waiting, by status (pending, sending); the same in every replica."
    );
}

#[cfg(test)]
mod tests {
    test_support::every_metric_described_test!(super::describe, shared: [natsbus::metrics::describe]);
}
