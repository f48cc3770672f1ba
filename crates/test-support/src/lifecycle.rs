//! The contract every service binary keeps: it logs readiness, answers `/healthz`,
//! serves described metrics with its build and process metrics, stops cleanly on
//! SIGTERM / SIGINT, names its git revision in `--version`, and refuses a bad
//! configuration with exit code 64 and one line naming the variable.

use std::path::Path;
use std::time::Duration;

use crate::process::{ServiceProcess, run_to_exit};

/// Starts `binary`, waits for its readiness line, checks `health_url`, sends `signal`
/// and expects a clean exit (code 0) within `grace`.
pub async fn assert_starts_and_stops(
    binary: &Path,
    env: &[(&str, String)],
    ready_line: &str,
    health_url: &str,
    signal: &str,
    grace: Duration,
) {
    crate::init_tracing();
    let mut process = ServiceProcess::spawn(binary, env, &[]);
    process.wait_for_line(ready_line, Duration::from_secs(30)).await;
    let health = reqwest::get(health_url).await.expect("GET healthz");
    assert_eq!(health.status(), 200, "{health_url}");
    process.signal(signal);
    let code = process.wait(grace).await;
    assert_eq!(code, Some(0), "exit code after SIG{signal}:\n{}", process.output().join("\n"));
    let output = process.output().join("\n");
    assert!(output.contains("shutdown requested"), "{output}");
    assert!(output.contains("\"stopped\""), "{output}");
}

/// The in-process half of the contract, for a service started with `start(config,
/// shutdown)`: `{base}/healthz` answers 200, `{base}/readyz` answers 200 with each of
/// `checks` "ok", and once `shutdown` is cancelled `stopped` (the service's
/// `Running::wait`) ends cleanly within ten seconds.
pub async fn assert_ready_then_stops<E: std::fmt::Debug>(
    base: &str,
    checks: &[&str],
    shutdown: &tokio_util::sync::CancellationToken,
    stopped: impl std::future::Future<Output = Result<(), E>>,
) {
    let health = reqwest::get(format!("{base}/healthz")).await.expect("GET healthz");
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(format!("{base}/readyz")).await.expect("GET readyz");
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.expect("readyz as JSON");
    assert_eq!(body["status"], "ready", "{body}");
    for check in checks {
        assert_eq!(body["checks"][check], "ok", "{check}: {body}");
    }
    stop_within(shutdown, stopped, Duration::from_secs(10)).await;
}

/// Cancels `shutdown` and expects `stopped` (a service's `Running::wait`) to end
/// cleanly within `grace`.
pub async fn stop_within<E: std::fmt::Debug>(
    shutdown: &tokio_util::sync::CancellationToken,
    stopped: impl std::future::Future<Output = Result<(), E>>,
    grace: Duration,
) {
    shutdown.cancel();
    let result = tokio::time::timeout(grace, stopped).await.expect("the service stopped within its grace");
    assert!(result.is_ok(), "the service stopped with an error: {result:?}");
}

/// Runs `binary` with `var=value` added to `env` and expects exit code 64 and a single
/// stderr line that names `var`.
pub async fn assert_config_error(binary: &Path, env: &[(&str, String)], var: &'static str, value: &str) {
    let mut env = env.to_vec();
    env.retain(|(k, _)| *k != var);
    env.push((var, value.to_owned()));
    let (code, stderr) = run_to_exit(binary, &env, &[]).await;
    assert_eq!(code, Some(64), "{var}={value:?}: {stderr:?}");
    assert_eq!(stderr.len(), 1, "{var}={value:?}: expected one line, got {stderr:?}");
    assert!(stderr[0].contains(var), "{var}={value:?}: {stderr:?}");
}

/// `--help` mentions every variable in `vars`.
pub async fn assert_help_documents(binary: &Path, vars: &[&str]) {
    let out = tokio::process::Command::new(binary).arg("--help").output().await.expect("running --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for var in vars {
        assert!(help.contains(var), "--help does not document {var}:\n{help}");
    }
}

/// Starts `binary` with its admin port (`ADMIN_ADDR`) on a free port, waits for its
/// readiness line and scrapes `/metrics`: valid exposition format, HELP and TYPE for
/// every family, `opspilot_build_info` and the process metrics
/// ([`crate::metrics::assert_service_metrics`]). Then stops it with SIGTERM.
pub async fn assert_binary_serves_metrics(binary: &Path, env: &[(&str, String)], ready_line: &str) {
    crate::init_tracing();
    let port = crate::free_port();
    let mut env = env.to_vec();
    env.retain(|(k, _)| *k != "ADMIN_ADDR");
    env.push(("ADMIN_ADDR", format!("127.0.0.1:{port}")));
    let mut process = ServiceProcess::spawn(binary, &env, &[]);
    process.wait_for_line(ready_line, Duration::from_secs(30)).await;
    let text = crate::metrics::scrape(&format!("http://127.0.0.1:{port}")).await;
    crate::metrics::assert_service_metrics(&text);
    process.signal("TERM");
    let code = process.wait(Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "exit code after SIGTERM:\n{}", process.output().join("\n"));
}

/// `binary --version` prints `{name} {version} ({revision})` and exits 0.
pub async fn assert_version_names_the_revision(binary: &Path, name: &str) {
    let out =
        tokio::process::Command::new(binary).arg("--version").output().await.expect("running --version");
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(printed.trim_end(), format!("{name} {}", service_kit::version::FULL));
}

/// Bad values every service refuses (each service adds its own).
pub const COMMON_BAD_CONFIG: &[(&str, &str)] = &[
    ("DB_PORT", "not-a-port"),
    ("DB_SSLMODE", "sometimes"),
    ("DATABASE_URL", "mysql://root:pw@db/x"),
    ("NATS_URLS", "nats://ok:4222,::nope::"),
    ("LOG_FORMAT", "xml"),
    ("RUST_LOG", "info,[broken"),
    ("SUBJECT_ROOT", "ops.*"),
    // A shipped placeholder never works outside OPSPILOT_DEV.
    ("DB_PASSWORD", "REPLACE-ME-postgres-password"),
    ("DATABASE_URL", "postgres://postgres:REPLACE-ME@db:5432/opspilot"),
    ("NATS_TOKEN", "REPLACE-ME-token"),
];

/// Variables every service documents in `--help`.
pub const COMMON_VARIABLES: &[&str] = &[
    "NATS_URLS",
    "NATS_URL",
    "DB_HOST",
    "DB_PORT",
    "DB_USER",
    "DB_PASSWORD",
    "DB_NAME",
    "DB_SSLMODE",
    "DATABASE_URL",
    "LOG_FORMAT",
    "RUST_LOG",
];

/// Starts the binary twice against `env`, stopping it once with SIGTERM and once with
/// SIGINT; `addr_var` is the variable naming the port that serves `/healthz`.
pub async fn assert_signals_stop_cleanly(
    binary: &Path,
    env: &[(&str, String)],
    ready_line: &str,
    addr_var: &'static str,
) {
    for signal in ["TERM", "INT"] {
        let port = crate::free_port();
        let mut env = env.to_vec();
        env.push((addr_var, format!("127.0.0.1:{port}")));
        assert_starts_and_stops(
            binary,
            &env,
            ready_line,
            &format!("http://127.0.0.1:{port}/healthz"),
            signal,
            Duration::from_secs(20),
        )
        .await;
    }
}

/// Every value in `bad` (plus [`COMMON_BAD_CONFIG`]) exits 64 naming its variable.
pub async fn assert_bad_config_refused(binary: &Path, env: &[(&str, String)], bad: &[(&'static str, &str)]) {
    for (var, value) in COMMON_BAD_CONFIG.iter().chain(bad) {
        assert_config_error(binary, env, var, value).await;
    }
}

/// The lifecycle tests of a worker service (its probes on `ADMIN_ADDR`), written into
/// the calling test module: started in process it reports ready with every one of
/// `checks` and the topology in place, then stops when cancelled; the binary stops
/// cleanly on SIGTERM and on SIGINT; it serves `/metrics` in the exposition format with
/// HELP for every family, its build and its process metrics; `--version` names the git
/// revision; each value in `bad` (and [`COMMON_BAD_CONFIG`]) exits 64 naming its
/// variable; `--help` documents every one of `documents` (and [`COMMON_VARIABLES`]).
/// The caller depends on `clap`, `natsbus` and `tokio-util`.
#[macro_export]
macro_rules! worker_lifecycle_tests {
    (
        service: $service:ident,
        binary: $binary:literal,
        identity: $identity:ident,
        redis: $redis:expr,
        checks: [$($check:literal),* $(,)?],
        bad: [$(($var:literal, $value:literal)),* $(,)?],
        documents: [$($doc:literal),* $(,)?] $(,)?
    ) => {
        const BIN: &str = env!(concat!("CARGO_BIN_EXE_", $binary));

        #[tokio::test]
        async fn starts_reports_ready_and_stops_in_process() {
            let stack = $crate::Stack::start().await;
            let mut args = vec![$binary.to_owned(), "--admin-addr".into(), "127.0.0.1:0".into()];
            args.extend(stack.args_for(&::natsbus::auth::Identity::$identity));
            if $redis {
                args.extend(stack.redis_args());
            }
            let config: $service::Config = $crate::parse_config(args);
            let shutdown = ::tokio_util::sync::CancellationToken::new();
            let running = $service::start(config, shutdown.clone()).await.unwrap();
            // The topology exists once the service is ready.
            stack.jetstream().await.get_stream(&stack.topology.events_stream).await.unwrap();
            let base = format!("http://{}", running.admin_addr);
            $crate::lifecycle::assert_ready_then_stops(&base, &[$($check),*], &shutdown, running.wait()).await;
        }

        #[tokio::test]
        async fn the_binary_stops_cleanly_on_sigterm_and_sigint() {
            let stack = $crate::Stack::start().await;
            $crate::lifecycle::assert_signals_stop_cleanly(
                ::std::path::Path::new(BIN),
                &stack.env_for(&::natsbus::auth::Identity::$identity),
                concat!($binary, " ready"),
                "ADMIN_ADDR",
            )
            .await;
        }

        #[tokio::test]
        async fn a_bad_configuration_exits_64_naming_the_variable() {
            $crate::lifecycle::assert_bad_config_refused(
                ::std::path::Path::new(BIN),
                &[],
                &[("ADMIN_ADDR", "nowhere"), ("SHUTDOWN_GRACE", "soon"), $(($var, $value)),*],
            )
            .await;
        }

        #[tokio::test]
        async fn the_binary_serves_described_build_and_process_metrics() {
            let stack = $crate::Stack::start().await;
            $crate::lifecycle::assert_binary_serves_metrics(
                ::std::path::Path::new(BIN),
                &stack.env_for(&::natsbus::auth::Identity::$identity),
                concat!($binary, " ready"),
            )
            .await;
        }

        #[tokio::test]
        async fn version_names_the_git_revision() {
            $crate::lifecycle::assert_version_names_the_revision(::std::path::Path::new(BIN), $binary).await;
        }

        #[tokio::test]
        async fn help_documents_every_variable() {
            let mut vars = $crate::lifecycle::COMMON_VARIABLES.to_vec();
            vars.extend(["ADMIN_ADDR", "SHUTDOWN_GRACE", $($doc),*]);
            $crate::lifecycle::assert_help_documents(::std::path::Path::new(BIN), &vars).await;
        }
    };
}
