use std::path::Path;

use ai_analyzer::Config;
use clap::Parser;
use test_support::{Stack, lifecycle};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_ai-analyzer");

#[tokio::test]
async fn starts_reports_ready_and_stops_in_process() {
    let stack = Stack::start().await;
    let mut args = vec!["ai-analyzer".to_owned(), "--admin-addr".into(), "127.0.0.1:0".into()];
    args.extend(stack.args_for(&natsbus::auth::Identity::AiAnalyzer));
    args.extend(stack.redis_args());
    let config = Config::try_parse_from(args).unwrap();
    let shutdown = CancellationToken::new();
    let running = ai_analyzer::start(config, shutdown.clone()).await.unwrap();

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
        &stack.env_for(&natsbus::auth::Identity::AiAnalyzer),
        "ai-analyzer ready",
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
            ("OPENROUTER_BASE_URL", "ftp://openrouter.ai/api/v1"),
            ("OPENROUTER_MODEL", "two words"),
            ("OPENROUTER_KEY", "REPLACE-ME-openrouter-key"),
            ("AI_TIMEOUT", "soon"),
            ("AI_DEADLINE", "1s"),
            ("AI_MAX_ATTEMPTS", "0"),
            ("AI_BACKOFF_MAX", "1ms"),
            ("AI_CONCURRENCY", "0"),
            ("ANALYSIS_CACHE_TTL", "forever"),
            ("AUTO_ANALYZE", "maybe"),
            ("AUTO_ANALYZE_CONSUMER", "has.dots"),
            ("RECENT_INCIDENTS", "500"),
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
        "OPENROUTER_KEY",
        "OPENROUTER_BASE_URL",
        "OPENROUTER_MODEL",
        "AI_TIMEOUT",
        "AI_DEADLINE",
        "AI_MAX_ATTEMPTS",
        "AI_BACKOFF",
        "AI_BACKOFF_MAX",
        "AI_CONCURRENCY",
        "AI_MAX_TOKENS",
        "ANALYSIS_CACHE_TTL",
        "AUTO_ANALYZE",
        "AUTO_ANALYZE_CONSUMER",
        "RECENT_INCIDENTS",
    ]);
    lifecycle::assert_help_documents(Path::new(BIN), &vars).await;
}
