use std::path::Path;
use std::time::Duration;

use api_gateway::Config;
use clap::Parser;
use test_support::process::{ServiceProcess, run_to_exit};
use test_support::{Stack, TestDb, free_port, lifecycle};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_api-gateway");
const SECRET: &str = "test-secret-0123456789abcdef0123456789abcdef";

fn env(stack: &Stack) -> Vec<(&'static str, String)> {
    let mut env = stack.env_for(&natsbus::auth::Identity::ApiGateway);
    env.push(("JWT_SECRET", SECRET.to_owned()));
    env
}

#[tokio::test]
async fn starts_reports_ready_and_stops_in_process() {
    let stack = Stack::start().await;
    let config: Config = test_support::parse_config(crate::helpers::base_args(&stack));
    config.validate().unwrap();
    let shutdown = CancellationToken::new();
    let running = api_gateway::start(config, shutdown.clone()).await.unwrap();

    let base = format!("http://{}", running.addr);
    lifecycle::assert_ready_then_stops(&base, &["postgres", "nats", "redis"], &shutdown, running.wait())
        .await;
}

#[tokio::test]
async fn listens_on_8080_by_default() {
    let config = Config::try_parse_from(["api-gateway"]).unwrap();
    assert_eq!(config.serve.http_addr.port(), 8080);
}

#[tokio::test]
async fn the_binary_stops_cleanly_on_sigterm_and_sigint() {
    let stack = Stack::start().await;
    lifecycle::assert_signals_stop_cleanly(Path::new(BIN), &env(&stack), "api-gateway ready", "HTTP_ADDR")
        .await;
}

#[tokio::test]
async fn the_binary_serves_described_build_and_process_metrics() {
    let stack = Stack::start().await;
    let mut env = env(&stack);
    env.push(("HTTP_ADDR", format!("127.0.0.1:{}", free_port())));
    lifecycle::assert_binary_serves_metrics(Path::new(BIN), &env, "api-gateway ready").await;
}

#[tokio::test]
async fn version_names_the_git_revision() {
    lifecycle::assert_version_names_the_revision(Path::new(BIN), "api-gateway").await;
}

#[tokio::test]
async fn a_bad_configuration_exits_64_naming_the_variable() {
    let base = vec![("JWT_SECRET", SECRET.to_owned()), ("OPSPILOT_INSECURE_BUS", "true".to_owned())];
    lifecycle::assert_bad_config_refused(
        Path::new(BIN),
        &base,
        &[
            ("HTTP_ADDR", "port-eighty"),
            ("AGENT_NATS_URLS", "nats://ok:4222,::nope::"),
            ("REDIS_URL", "http://not-redis"),
            ("JWT_SECRET", "change_me"),
            ("JWT_SECRET", "too-short"),
            ("REDIS_URL", "redis://:REPLACE-ME-redis-password@redis:6379"),
            ("JWT_SECRET", "REPLACE-ME-with-at-least-32-random-bytes-compose-demo"),
            ("JWT_SECRET", "opspilot-local-development-secret-0123456789"),
            ("BOOTSTRAP_TOKEN", "REPLACE-ME-compose-demo-enroll-token"),
            ("BOOTSTRAP_TOKEN", "opspilot-local-bootstrap"),
        ],
    )
    .await;
    let mut with_admin = base.clone();
    with_admin.push(("ADMIN_EMAIL", "admin@example.com".to_owned()));
    for password in ["REPLACE-ME-admin-password", "opspilot-local-admin"] {
        lifecycle::assert_config_error(Path::new(BIN), &with_admin, "ADMIN_PASSWORD", password).await;
    }
    // Missing entirely.
    let (code, stderr) = run_to_exit(Path::new(BIN), &[], &[]).await;
    assert_eq!(code, Some(64));
    assert_eq!(stderr.len(), 1);
    assert!(stderr[0].contains("JWT_SECRET"), "{stderr:?}");
}

/// The gateway with `flags`, and `JWT_SECRET` as its only secret.
fn with_jwt_secret(secret: &str, flags: &[&str]) -> Config {
    let vars = [("JWT_SECRET", secret)];
    let args = std::iter::once("api-gateway").chain(flags.iter().copied());
    service_kit::config::try_parse_with_secrets(args, service_kit::config::SecretEnv::fixed(&vars)).unwrap()
}

#[tokio::test]
async fn a_weak_secret_is_accepted_only_in_development_mode() {
    assert!(with_jwt_secret("change_me", &["--insecure-bus"]).validate().is_err());
    with_jwt_secret("change_me", &["--dev", "--insecure-bus"]).validate().unwrap();
    // Placeholders likewise: refused, then accepted in development mode only.
    let placeholder = "REPLACE-ME-with-at-least-32-random-bytes-compose-demo";
    let refused = with_jwt_secret(placeholder, &["--insecure-bus"]).validate().unwrap_err();
    assert!(refused.starts_with("JWT_SECRET:"), "{refused}");
    with_jwt_secret(placeholder, &["--dev", "--insecure-bus"]).validate().unwrap();
}

#[tokio::test]
async fn migrate_applies_the_schema_and_exits() {
    let db = TestDb::create_empty().await;
    let (code, stderr) = run_to_exit(Path::new(BIN), &[("DATABASE_URL", db.url())], &["migrate"]).await;
    assert_eq!(code, Some(0), "{stderr:?}");
    storage::check_schema(&db.pool).await.unwrap();
}

#[tokio::test]
async fn secrets_never_appear_in_logs_even_at_trace_level() {
    let stack = Stack::start().await;
    let port = free_port();
    let mut env = env(&stack);
    env.push(("HTTP_ADDR", format!("127.0.0.1:{port}")));
    env.push(("RUST_LOG", "trace".into()));
    env.push(("DB_PASSWORD", "db-password-never-logged".into()));
    let mut process = ServiceProcess::spawn(Path::new(BIN), &env, &[]);
    process.wait_for_line("api-gateway ready", Duration::from_secs(30)).await;
    process.signal("TERM");
    assert_eq!(process.wait(Duration::from_secs(20)).await, Some(0));
    let output = process.output().join("\n");
    assert!(output.len() > 1000, "trace logging should say a lot");
    let seeds =
        [stack.auth.setup.account_signing_seed.clone(), stack.auth.setup.operator_signing_seed.clone()];
    for secret in [SECRET, "db-password-never-logged", &seeds[0], &seeds[1]] {
        assert!(!output.contains(secret), "secret {secret} leaked into the logs");
    }
}

#[tokio::test]
async fn help_documents_every_variable() {
    let mut vars = lifecycle::COMMON_VARIABLES.to_vec();
    vars.extend(["HTTP_ADDR", "JWT_SECRET", "OPSPILOT_DEV", "REDIS_URL"]);
    lifecycle::assert_help_documents(Path::new(BIN), &vars).await;
}
