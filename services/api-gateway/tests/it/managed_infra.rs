//! The stack against managed infrastructure, as the binaries run in production: a
//! nats-server that speaks only TLS and verifies client certificates, a Redis that
//! speaks only TLS and wants a password and a client certificate, certificates from a
//! CA of the test's own, and every secret from a file. Secrets are never flags.

use std::time::Duration;

use natsbus::auth::Identity;
use reqwest::StatusCode;
use serde_json::{Value, json};
use test_support::otlp::binary;
use test_support::process::{ServiceProcess, run_to_exit};
use test_support::{RedisServer, Stack, TestPki, free_port};

const JWT_SECRET: &str = "managed-infra-jwt-secret-0123456789abcdef";
const ADMIN_EMAIL: &str = "root@example.com";
const ADMIN_PASSWORD: &str = "managed infra admin password";
const REDIS_PASSWORD: &str = "managed-redis-password-0123456789";

/// The environment of `identity` on a TLS stack, with Redis at `redis` over TLS and
/// every secret in a file: the variables a Kubernetes Secret mounted as files gives.
fn env(stack: &Stack, identity: &Identity, redis: &RedisServer) -> Vec<(&'static str, String)> {
    let pki = stack.tls.as_ref().expect("a TLS stack");
    let mut env: Vec<_> = stack
        .env_for(identity)
        .into_iter()
        .filter(|(var, _)| !matches!(*var, "REDIS_URL" | "DATABASE_URL" | "ADMIN_ADDR"))
        .collect();
    env.extend([
        ("DATABASE_URL_FILE", stack.secret_file("database-url", &stack.db.url())),
        ("REDIS_URL", format!("rediss://127.0.0.1:{}", redis.port())),
        ("REDIS_PASSWORD_FILE", stack.secret_file("redis-password", &format!("{REDIS_PASSWORD}\n"))),
        ("REDIS_TLS_CA", pki.ca().display().to_string()),
        ("REDIS_TLS_CERT", pki.client_cert().display().to_string()),
        ("REDIS_TLS_KEY", pki.client_key().display().to_string()),
        ("ADMIN_ADDR", "127.0.0.1:0".to_owned()),
    ]);
    env
}

#[tokio::test]
async fn every_service_runs_against_tls_nats_and_a_tls_redis_with_a_password() {
    let stack = Stack::start_tls().await;
    // The harness itself gets in only with the client certificate.
    natsbus::ensure_topology(&stack.jetstream().await, &stack.topology).await.unwrap();
    let redis = RedisServer::with_tls_from(REDIS_PASSWORD, stack.tls.as_ref().unwrap()).await;

    let (http_port, admin_port) = (free_port(), free_port());
    let mut gateway_env = env(&stack, &Identity::ApiGateway, &redis);
    gateway_env.retain(|(var, _)| *var != "ADMIN_ADDR");
    gateway_env.extend([
        ("HTTP_ADDR", format!("127.0.0.1:{http_port}")),
        ("ADMIN_ADDR", format!("127.0.0.1:{admin_port}")),
        ("JWT_SECRET_FILE", stack.secret_file("jwt-secret", &format!("{JWT_SECRET}\n"))),
        ("ADMIN_EMAIL", ADMIN_EMAIL.to_owned()),
        ("ADMIN_PASSWORD_FILE", stack.secret_file("admin-password", ADMIN_PASSWORD)),
    ]);
    let mut processes =
        vec![("api-gateway ready", ServiceProcess::spawn(&binary("api-gateway"), &gateway_env, &[]))];
    for (name, identity) in [
        ("event-ingestor", Identity::EventIngestor),
        ("presence-tracker", Identity::PresenceTracker),
        ("ai-analyzer", Identity::AiAnalyzer),
    ] {
        let ready = match name {
            "event-ingestor" => "event-ingestor ready",
            "presence-tracker" => "presence-tracker ready",
            _ => "ai-analyzer ready",
        };
        processes.push((ready, ServiceProcess::spawn(&binary(name), &env(&stack, &identity, &redis), &[])));
    }
    for (ready, process) in &mut processes {
        process.wait_for_line(ready, Duration::from_secs(30)).await;
    }

    // Readiness checks NATS and Redis through their TLS connections.
    let ready: Value =
        reqwest::get(format!("http://127.0.0.1:{admin_port}/readyz")).await.unwrap().json().await.unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    for check in ["nats", "redis", "postgres"] {
        assert_eq!(ready["checks"][check], "ok", "{check}: {ready}");
    }
    // A login goes through the rate limiter in Redis; the first admin came from
    // ADMIN_PASSWORD_FILE and the token is signed with JWT_SECRET_FILE's secret.
    let base = format!("http://127.0.0.1:{http_port}");
    let http = reqwest::Client::new();
    let login = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    let token: Value = login.json().await.unwrap();
    let token = token["access_token"].as_str().unwrap();
    let key = jsonwebtoken::DecodingKey::from_secret(JWT_SECRET.as_bytes());
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_issuer(&["opspilot"]);
    validation.validate_aud = false;
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .unwrap_or_else(|e| panic!("the token is not signed with the file's secret: {e}"));
    let agents = http.get(format!("{base}/api/v1/agents")).bearer_auth(token).send().await.unwrap();
    assert_eq!(agents.status(), StatusCode::OK);

    // Nothing secret on any command line (`ps` shows them to every user of the host).
    for (_, process) in &processes {
        let pid = process.pid().unwrap();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let cmdline = String::from_utf8_lossy(&cmdline);
        for secret in [JWT_SECRET, ADMIN_PASSWORD, REDIS_PASSWORD] {
            assert!(!cmdline.contains(secret), "{cmdline}");
        }
    }
    for (_, process) in &mut processes {
        process.signal("TERM");
        assert_eq!(process.wait(Duration::from_secs(20)).await, Some(0), "{}", process.output().join("\n"));
    }
}

#[tokio::test]
async fn an_untrusted_certificate_keeps_a_service_from_becoming_ready_and_says_why() {
    let stack = Stack::start_tls().await;
    let redis = RedisServer::with_tls_from(REDIS_PASSWORD, stack.tls.as_ref().unwrap()).await;
    let stranger = TestPki::generate();

    // NATS presents a certificate from a CA the ingestor does not trust: it keeps
    // retrying, saying why, and never reports ready.
    let mut ingestor_env = env(&stack, &Identity::EventIngestor, &redis);
    ingestor_env.retain(|(var, _)| *var != "NATS_TLS_CA");
    ingestor_env.push(("NATS_TLS_CA", stranger.ca().display().to_string()));
    let mut ingestor = ServiceProcess::spawn(&binary("event-ingestor"), &ingestor_env, &[]);
    let line = ingestor.wait_for_line("cannot connect to nats yet", Duration::from_secs(20)).await;
    assert!(line.contains("invalid peer certificate"), "{line}");

    // Redis likewise, for the tracker: it stops with the reason instead of starting.
    let mut tracker_env = env(&stack, &Identity::PresenceTracker, &redis);
    tracker_env.retain(|(var, _)| *var != "REDIS_TLS_CA");
    tracker_env.push(("REDIS_TLS_CA", stranger.ca().display().to_string()));
    let mut tracker = ServiceProcess::spawn(&binary("presence-tracker"), &tracker_env, &[]);
    let code = tracker.wait(Duration::from_secs(30)).await;
    let output = tracker.output().join("\n");
    assert_ne!(code, Some(0), "{output}");
    assert!(output.contains("stopped on error") && output.contains("invalid peer certificate"), "{output}");
    assert!(!output.contains("presence-tracker ready"), "{output}");

    assert!(!ingestor.output().iter().any(|l| l.contains("event-ingestor ready")));
    ingestor.signal("KILL");
    ingestor.wait(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn secrets_are_refused_as_flags_and_when_set_twice() {
    let bin = binary("api-gateway");
    for flag in [
        "--jwt-secret",
        "--admin-password",
        "--bootstrap-token",
        "--database-url",
        "--db-password",
        "--redis-url",
        "--nats-token",
    ] {
        let (code, stderr) = run_to_exit(&bin, &[], &[flag, "hunter2-on-the-command-line"]).await;
        assert_eq!(code, Some(64), "{flag}: {stderr:?}");
        assert_eq!(stderr.len(), 1, "{flag}: {stderr:?}");
        assert!(stderr[0].contains(&format!("unexpected argument '{flag}'")), "{flag}: {stderr:?}");
        assert!(!stderr[0].contains("hunter2"), "{flag}: {stderr:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwt-secret");
    std::fs::write(&file, JWT_SECRET).unwrap();
    let both = [
        ("JWT_SECRET", "another-secret-0123456789abcdef0123456789".to_owned()),
        ("JWT_SECRET_FILE", file.display().to_string()),
    ];
    let (code, stderr) = run_to_exit(&bin, &both, &[]).await;
    assert_eq!(code, Some(64), "{stderr:?}");
    assert_eq!(stderr.len(), 1, "{stderr:?}");
    assert!(stderr[0].contains("JWT_SECRET and JWT_SECRET_FILE"), "{stderr:?}");
    assert!(!stderr[0].contains("another-secret") && !stderr[0].contains(JWT_SECRET), "{stderr:?}");
    let missing = [("JWT_SECRET_FILE", dir.path().join("nope").display().to_string())];
    let (code, stderr) = run_to_exit(&bin, &missing, &[]).await;
    assert_eq!(code, Some(64), "{stderr:?}");
    assert!(
        stderr[0].starts_with("config error: JWT_SECRET_FILE:") && stderr[0].contains("nope"),
        "{stderr:?}"
    );
}

#[tokio::test]
async fn help_groups_the_settings_and_subcommands_take_the_connection_flags() {
    let bin = binary("api-gateway");
    let out = tokio::process::Command::new(&bin).arg("--help").output().await.unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    // Each variable under its own section's heading.
    let section = |heading: &str| {
        let start =
            help.find(&format!("\n{heading}:\n")).unwrap_or_else(|| panic!("no {heading} section:\n{help}"));
        let rest = &help[start + heading.len() + 3..];
        let end = rest.find("\n\n").map_or(rest.len(), |e| e);
        rest[..end].to_owned()
    };
    for (heading, vars) in [
        (
            "NATS",
            &["NATS_URLS", "NATS_CREDS", "NATS_TOKEN_FILE", "NATS_TLS_CA", "NATS_TLS_CERT", "NATS_TLS_KEY"][..],
        ),
        ("Postgres", &["DATABASE_URL_FILE", "DB_PASSWORD_FILE", "DB_SSLMODE", "DB_SSLROOTCERT"][..]),
        ("Redis", &["REDIS_URL_FILE", "REDIS_PASSWORD_FILE", "REDIS_TLS_CA", "REDIS_TLS_CERT"][..]),
        ("Telemetry", &["LOG_FORMAT", "RUST_LOG"][..]),
        ("HTTP API", &["HTTP_ADDR", "JWT_SECRET_FILE", "ADMIN_PASSWORD_FILE", "BOOTSTRAP_TOKEN_FILE"][..]),
    ] {
        // Long lines wrap, `[env: NAME=]` included.
        let text = section(heading).split_whitespace().collect::<Vec<_>>().join(" ");
        for var in vars {
            assert!(text.contains(&format!("[env: {var}=")), "{var} not under {heading}:\n{text}");
        }
    }
    // `migrate` and `create-user` reach Postgres, `nats-init --rotate` NATS, with flags
    // given after the subcommand too.
    let db = test_support::TestDb::create_empty().await;
    let (_dir, url_file) = dir_file(&db.url());
    let args = [
        "migrate",
        "--database-url-file",
        url_file.to_str().unwrap(),
        "--db-acquire-timeout",
        "10s",
        "--log-format",
        "json",
    ];
    let (code, stderr) = run_to_exit(&bin, &[], &args).await;
    assert_eq!(code, Some(0), "{stderr:?}");
    storage::check_schema(&db.pool).await.unwrap();
    let out = tokio::process::Command::new(&bin).args(["nats-init", "--help"]).output().await.unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for var in ["NATS_URLS", "NATS_TLS_CA", "DATABASE_URL_FILE"] {
        assert!(help.contains(var), "nats-init --help lacks {var}:\n{help}");
    }
}

/// A file holding `value` (and the directory keeping it).
fn dir_file(value: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("value");
    std::fs::write(&path, value).unwrap();
    (dir, path)
}
