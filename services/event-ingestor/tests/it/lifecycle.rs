use std::path::Path;

use clap::Parser;
use event_ingestor::Config;
use test_support::{Stack, lifecycle};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_event-ingestor");

#[tokio::test]
async fn starts_reports_ready_and_stops_in_process() {
    let stack = Stack::start().await;
    let mut args = vec!["event-ingestor".to_owned(), "--admin-addr".into(), "127.0.0.1:0".into()];
    args.extend(stack.args_for(&natsbus::auth::Identity::EventIngestor));
    let config = Config::try_parse_from(args).unwrap();
    let shutdown = CancellationToken::new();
    let running = event_ingestor::start(config, shutdown.clone()).await.unwrap();

    // The topology exists once the service is ready.
    stack.jetstream().await.get_stream(&stack.topology.events_stream).await.unwrap();
    let base = format!("http://{}", running.admin_addr);
    lifecycle::assert_ready_then_stops(&base, &["postgres", "nats"], &shutdown, running.wait()).await;
}

#[tokio::test]
async fn the_binary_stops_cleanly_on_sigterm_and_sigint() {
    let stack = Stack::start().await;
    lifecycle::assert_signals_stop_cleanly(
        Path::new(BIN),
        &stack.env_for(&natsbus::auth::Identity::EventIngestor),
        "event-ingestor ready",
        "ADMIN_ADDR",
    )
    .await;
}

#[tokio::test]
async fn a_bad_configuration_exits_64_naming_the_variable() {
    lifecycle::assert_bad_config_refused(
        Path::new(BIN),
        &[],
        &[("ADMIN_ADDR", "nowhere"), ("SHUTDOWN_GRACE", "soon")],
    )
    .await;
}

#[tokio::test]
async fn help_documents_every_variable() {
    let mut vars = lifecycle::COMMON_VARIABLES.to_vec();
    vars.extend(["ADMIN_ADDR", "SHUTDOWN_GRACE", "EVENTS_STREAM", "INVENTORY_STREAM", "DLQ_STREAM"]);
    lifecycle::assert_help_documents(Path::new(BIN), &vars).await;
}
