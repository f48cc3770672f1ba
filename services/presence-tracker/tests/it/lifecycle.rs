use std::path::Path;

use clap::Parser;
use presence_tracker::Config;
use test_support::{Stack, lifecycle};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_presence-tracker");

#[tokio::test]
async fn starts_reports_ready_and_stops_in_process() {
    let stack = Stack::start().await;
    let mut args = vec!["presence-tracker".to_owned(), "--admin-addr".into(), "127.0.0.1:0".into()];
    args.extend(stack.args_for(&natsbus::auth::Identity::PresenceTracker));
    args.extend(stack.redis_args());
    let config = Config::try_parse_from(args).unwrap();
    let shutdown = CancellationToken::new();
    let running = presence_tracker::start(config, shutdown.clone()).await.unwrap();

    // The topology exists once the service is ready.
    stack.jetstream().await.get_stream(&stack.topology.events_stream).await.unwrap();
    let base = format!("http://{}", running.admin_addr);
    lifecycle::assert_ready_then_stops(&base, &["postgres", "nats", "redis"], &shutdown, running.wait())
        .await;
}

#[tokio::test]
async fn the_binary_stops_cleanly_on_sigterm_and_sigint() {
    let stack = Stack::start().await;
    lifecycle::assert_signals_stop_cleanly(
        Path::new(BIN),
        &stack.env_for(&natsbus::auth::Identity::PresenceTracker),
        "presence-tracker ready",
        "ADMIN_ADDR",
    )
    .await;
}

#[tokio::test]
async fn a_bad_configuration_exits_64_naming_the_variable() {
    lifecycle::assert_bad_config_refused(
        Path::new(BIN),
        &[],
        &[
            ("ADMIN_ADDR", "nowhere"),
            ("SHUTDOWN_GRACE", "soon"),
            ("REDIS_URL", "http://not-redis"),
            ("REDIS_URL", "redis://:REPLACE-ME-redis-password@redis:6379"),
            ("PRESENCE_MISSED_HEARTBEATS", "0"),
            ("PRESENCE_OFFLINE_TIMEOUT", "soon"),
            ("PRESENCE_OFFLINE_TIMEOUT", "500ms"),
            ("PRESENCE_RECONCILE_INTERVAL", "0s"),
            ("PRESENCE_FLUSH_INTERVAL", "1h"),
            ("PRESENCE_BATCH_SIZE", "0"),
            ("PRESENCE_KEYSPACE_EVENTS", "maybe"),
            ("PRESENCE_OFFLINE_INCIDENTS", "sometimes"),
            ("PRESENCE_WATCH_STALL_TIMEOUT", "10ms"),
        ],
    )
    .await;
}

#[tokio::test]
async fn help_documents_every_variable() {
    let mut vars = lifecycle::COMMON_VARIABLES.to_vec();
    vars.extend([
        "ADMIN_ADDR",
        "SHUTDOWN_GRACE",
        "REDIS_URL",
        "REDIS_PREFIX",
        "AGENTS_BUCKET",
        "PRESENCE_MISSED_HEARTBEATS",
        "PRESENCE_OFFLINE_TIMEOUT",
        "PRESENCE_RECONCILE_INTERVAL",
        "PRESENCE_FLUSH_INTERVAL",
        "PRESENCE_BATCH_SIZE",
        "PRESENCE_BATCH_INTERVAL",
        "PRESENCE_KEYSPACE_EVENTS",
        "PRESENCE_OFFLINE_INCIDENTS",
        "PRESENCE_WATCH_STALL_TIMEOUT",
    ]);
    lifecycle::assert_help_documents(Path::new(BIN), &vars).await;
}
