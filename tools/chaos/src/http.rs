//! Bad input over HTTP, against the api-gateway binary: a hand-written hostile set
//! (SQL and path-traversal strings, oversized and malformed bodies, raw protocol
//! abuse, forged tokens, privilege escalation, enrollment without or with forged,
//! replayed and garbage proofs, executing what was not suggested, spoofed client
//! addresses), then schemathesis (PyPI) generating requests from the served OpenAPI
//! document with an admin token, checking that no response is a 5xx and every
//! response matches the schema.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use natsbus::auth::KeyPair;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cluster::{Cluster, ClusterOptions};
use crate::load::{Load, LoadPlan};
use crate::scenarios::Ctx;

/// Where schemathesis is and how hard it works.
#[derive(Debug, Clone)]
pub struct SchemathesisOptions {
    /// The `schemathesis` executable (None: skip it, reported as not run).
    pub executable: Option<PathBuf>,
    pub max_examples: u32,
    pub seed: u64,
    pub workers: u32,
    /// Its `--checks`.
    pub checks: String,
}

/// The HTTP step's outcome.
#[derive(Debug, Default)]
pub struct HttpReport {
    pub hostile_cases: usize,
    pub schemathesis: Option<SchemathesisRun>,
    pub notes: Vec<String>,
    pub failures: Vec<String>,
    pub elapsed: Duration,
}

#[derive(Debug)]
pub struct SchemathesisRun {
    pub exit_code: Option<i32>,
    pub summary: Vec<String>,
    pub log: PathBuf,
    pub elapsed: Duration,
}

impl HttpReport {
    pub fn pass(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Starts a cluster with some data in it, runs the hostile set, then schemathesis.
pub async fn run(ctx: &Ctx, options: &SchemathesisOptions) -> HttpReport {
    let started = Instant::now();
    let mut report = HttpReport::default();
    let cluster_options =
        ClusterOptions { fleet: 20, probes: 0, fleet_rpc: true, ..ClusterOptions::default() };
    let cluster =
        match Cluster::start("6-http", &ctx.run_dir, &ctx.bins, &ctx.secrets, &cluster_options).await {
            Ok(cluster) => cluster,
            Err(err) => {
                report.failures.push(format!("starting the cluster: {err:#}"));
                return report;
            }
        };
    if let Err(err) = body(&cluster, options, &mut report).await {
        report.failures.push(format!("{err:#}"));
    }
    report.failures.extend(cluster.finish().await);
    report.elapsed = started.elapsed();
    report
}

async fn body(
    cluster: &Cluster,
    options: &SchemathesisOptions,
    report: &mut HttpReport,
) -> anyhow::Result<()> {
    // Incidents, inventory and presence to read, so generated requests meet real rows.
    let load = Load::start(
        cluster.fleet_bus.clone(),
        cluster.fleet.clone(),
        cluster.stranger.clone(),
        LoadPlan::new(500, 1000.0),
    )?;
    load.finish().await?;
    cluster.drain(Duration::from_secs(60)).await?;
    // An operator (for what only admins may do) and an incident with a suggested action
    // (for executing anything else), before the users are counted.
    let operator = cluster.add_user(OPERATOR_EMAIL, "operator").await?;
    let incident = analyzed_incident(cluster).await?;
    let users_before = count(cluster, "SELECT count(*) FROM users").await?;

    let failures = hostile(cluster, &operator, incident).await?;
    report.hostile_cases = failures.1;
    report.notes.push(format!(
        "hand-written hostile set: {} requests, {} unexpected answers",
        failures.1,
        failures.0.len()
    ));
    report.failures.extend(failures.0);
    let spoofed = spoofed_logins(cluster).await;
    report.hostile_cases += spoofed.tried;
    report.notes.push(format!(
        "logins with spoofed client addresses (X-Forwarded-For, X-Real-IP, Forwarded; no TRUSTED_PROXIES): \
         {} requests, {} answered 401 then {} 429 by the real address",
        spoofed.tried, spoofed.refused, spoofed.limited
    ));
    report.failures.extend(spoofed.failures);
    match metrics_on_admin_port(cluster).await {
        Ok(note) => report.notes.push(note),
        Err(err) => report.failures.push(format!("{err:#}")),
    }
    let users_after = count(cluster, "SELECT count(*) FROM users").await?;
    if users_after != users_before {
        report
            .failures
            .push(format!("the hostile set changed the users table ({users_before} -> {users_after})"));
    }
    if !cluster.is_ready("api-gateway").await {
        report.failures.push("the gateway is not ready after the hostile set".into());
    }

    match &options.executable {
        None => report.notes.push("schemathesis: not run (no executable; see `make chaos`)".into()),
        Some(executable) => {
            let run = schemathesis(cluster, executable, options).await?;
            report.notes.push(format!(
                "schemathesis exited with {:?} in {:.0}s; {}",
                run.exit_code,
                run.elapsed.as_secs_f64(),
                run.summary.join(" | ")
            ));
            if run.exit_code != Some(0) {
                report.failures.push(format!("schemathesis found problems; see {}", run.log.display()));
            }
            report.schemathesis = Some(run);
            if !cluster.is_ready("api-gateway").await {
                report.failures.push("the gateway is not ready after schemathesis".into());
            }
        }
    }
    Ok(())
}

async fn count(cluster: &Cluster, sql: &'static str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(&cluster.stack.db.pool).await?)
}

const OPERATOR_EMAIL: &str = "chaos-operator@example.com";

/// An incident with a suggested action: the first critical one, analyzed through the
/// API (the mock AI suggests restarting nginx); any incident when none is critical.
async fn analyzed_incident(cluster: &Cluster) -> anyhow::Result<i64> {
    let suggested: Option<i64> =
        sqlx::query_scalar("SELECT id FROM incidents WHERE suggested_action IS NOT NULL ORDER BY id LIMIT 1")
            .fetch_optional(&cluster.stack.db.pool)
            .await?;
    if let Some(id) = suggested {
        return Ok(id);
    }
    let critical: Option<i64> =
        sqlx::query_scalar("SELECT id FROM incidents WHERE type <> $1 AND is_critical ORDER BY id LIMIT 1")
            .bind(storage::incidents::OFFLINE_INCIDENT_TYPE)
            .fetch_optional(&cluster.stack.db.pool)
            .await?;
    if let Some(id) = critical {
        let (status, body) = cluster
            .api_post(&format!("/api/v1/incidents/{id}/analyze"), &cluster.admin_token, &json!({}))
            .await?;
        anyhow::ensure!(status == StatusCode::OK, "analyzing incident {id}: {status} {body}");
        return Ok(id);
    }
    sqlx::query_scalar("SELECT id FROM incidents ORDER BY id LIMIT 1")
        .fetch_optional(&cluster.stack.db.pool)
        .await?
        .context("the load opened no incident")
}

/// `/metrics` is served on the gateway's admin port (and only there: the public port's
/// 404 is a hostile case).
async fn metrics_on_admin_port(cluster: &Cluster) -> anyhow::Result<String> {
    let base = cluster.admin_base("api-gateway").context("no gateway")?;
    let response = cluster.http.get(format!("{base}/metrics")).send().await?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    anyhow::ensure!(
        status == StatusCode::OK && text.contains("opspilot_"),
        "GET /metrics on the gateway's admin port answered {status}: {}",
        short(&text)
    );
    Ok(format!("GET /metrics on the gateway's admin port: 200, {} lines", text.lines().count()))
}

/// Runs schemathesis against the served document; its output goes to the run directory.
async fn schemathesis(
    cluster: &Cluster,
    executable: &Path,
    options: &SchemathesisOptions,
) -> anyhow::Result<SchemathesisRun> {
    let dir = cluster.dir.join("schemathesis");
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("schemathesis.log");
    let file = std::fs::File::create(&log)?;
    let started = Instant::now();
    let status = tokio::process::Command::new(executable)
        .arg("run")
        .arg(format!("{}/api/v1/openapi.json", cluster.api_base))
        .args(["--url", &cluster.api_base])
        .args(["--header", &format!("Authorization: Bearer {}", cluster.admin_token)])
        .args(["--checks", &options.checks])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", &options.max_examples.to_string()])
        .args(["--seed", &options.seed.to_string()])
        .args(["--workers", &options.workers.to_string()])
        .args(["--request-timeout", "10"])
        .args(["--report", "junit"])
        .arg("--report-dir")
        .arg(&dir)
        .args(["--output-sanitize", "true"])
        .arg("--no-color")
        .env("NO_COLOR", "1")
        // Its own state (`.schemathesis/`) goes into the run directory, not the repository.
        .current_dir(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(file.try_clone()?))
        .stderr(std::process::Stdio::from(file))
        .kill_on_drop(true)
        .status()
        .await
        .with_context(|| format!("running {}", executable.display()))?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let summary = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("API Operations:")
                || l.starts_with("Test Phases:")
                || l.starts_with("Test cases:")
                || l.contains(" passed")
                || l.contains(" failed")
                || l.starts_with("Seed:")
        })
        .map(short)
        .collect();
    Ok(SchemathesisRun { exit_code: status.code(), summary, log, elapsed: started.elapsed() })
}

/// What a hostile request may be answered with.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// Exactly this status.
    Status(u16),
    /// Any 4xx.
    ClientError,
    /// Anything but a 5xx (a filter that simply matches nothing is fine).
    NotServerError,
    /// One of these statuses.
    OneOf(&'static [u16]),
}

struct Case {
    name: String,
    method: Method,
    path: String,
    token: Option<String>,
    headers: Vec<(&'static str, String)>,
    content_type: Option<&'static str>,
    body: Option<Vec<u8>>,
    want: Want,
}

impl Case {
    fn new(name: impl Into<String>, method: Method, path: impl Into<String>, want: Want) -> Self {
        Self {
            name: name.into(),
            method,
            path: path.into(),
            token: None,
            headers: Vec::new(),
            content_type: None,
            body: None,
            want,
        }
    }

    fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn json(mut self, body: &Value) -> Self {
        self.content_type = Some("application/json");
        self.body = Some(body.to_string().into_bytes());
        self
    }

    fn raw(mut self, content_type: &'static str, body: Vec<u8>) -> Self {
        self.content_type = Some(content_type);
        self.body = Some(body);
        self
    }
}

const HOSTILE: &[&str] = &[
    "' OR '1'='1",
    "1; DROP TABLE agents; --",
    "1 UNION SELECT password_hash FROM users",
    "../../../../etc/passwd",
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "%00",
    "\u{0}",
    "ａｂｃ１２３",
    "a1b2c3d4e5f6*",
    "ops.>",
    "<script>alert(1)</script>",
    "${jndi:ldap://x}",
    "-9223372036854775808",
    "99999999999999999999999999",
];

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Runs the hand-written hostile set; returns the unexpected answers and the count.
async fn hostile(cluster: &Cluster, operator: &str, incident: i64) -> anyhow::Result<(Vec<String>, usize)> {
    let admin = cluster.admin_token.as_str();
    let viewer = cluster.viewer_token.as_str();
    let agent = cluster.fleet.agents()[0].id.to_string();
    let mut cases = Vec::new();

    for s in HOSTILE {
        let e = encode(s);
        cases.push(
            Case::new(
                format!("agent id {s:?}"),
                Method::GET,
                format!("/api/v1/agents/{e}"),
                Want::ClientError,
            )
            .token(admin),
        );
        cases.push(
            Case::new(
                format!("incident id {s:?}"),
                Method::GET,
                format!("/api/v1/incidents/{e}"),
                Want::ClientError,
            )
            .token(admin),
        );
        cases.push(
            Case::new(
                format!("analyze {s:?}"),
                Method::POST,
                format!("/api/v1/incidents/{e}/analyze"),
                Want::ClientError,
            )
            .token(admin),
        );
        cases.push(
            Case::new(
                format!("hostname_prefix {s:?}"),
                Method::GET,
                format!("/api/v1/agents?hostname_prefix={e}"),
                Want::NotServerError,
            )
            .token(admin),
        );
        cases.push(
            Case::new(
                format!("audit agent_id {s:?}"),
                Method::GET,
                format!("/api/v1/audit?agent_id={e}"),
                Want::ClientError,
            )
            .token(admin),
        );
        cases.push(
            Case::new(
                format!("incident status {s:?}"),
                Method::GET,
                format!("/api/v1/agents/{agent}/incidents?status={e}"),
                Want::ClientError,
            )
            .token(admin),
        );
        // Some of these are valid service names (digits are); none may break anything.
        cases.push(
            Case::new(
                format!("execute service {s:?}"),
                Method::POST,
                format!("/api/v1/agents/{agent}/execute"),
                Want::NotServerError,
            )
            .token(admin)
            .json(&json!({"command": "restart_service", "params": {"service": s}})),
        );
        cases.push(
            Case::new(format!("login {s:?}"), Method::POST, "/api/v1/auth/login", Want::ClientError)
                .json(&json!({"email": s, "password": s})),
        );
    }
    // Path traversal through the allow-list and the docs page.
    for path in
        ["/var/log/../../etc/shadow", "/etc/passwd", "/var/log/%2e%2e/%2e%2e/etc/shadow", "/var/log/\u{0}x"]
    {
        cases.push(
            Case::new(
                format!("tail_log {path:?}"),
                Method::POST,
                format!("/api/v1/agents/{agent}/execute"),
                Want::Status(400),
            )
            .token(admin)
            .json(&json!({"command": "tail_log", "params": {"path": path, "lines": 5}})),
        );
    }
    cases.push(
        Case::new(
            "command off the allow-list",
            Method::POST,
            format!("/api/v1/agents/{agent}/execute"),
            Want::Status(400),
        )
        .token(admin)
        .json(&json!({"command": "rm_rf", "params": {"path": "/"}})),
    );
    cases.push(Case::new(
        "docs traversal",
        Method::GET,
        "/api/v1/docs/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        Want::ClientError,
    ));
    // Oversized and malformed bodies.
    let big = json!({"email": "a@b.c", "password": "x".repeat(100 * 1024)});
    cases.push(
        Case::new("100 KiB login body", Method::POST, "/api/v1/auth/login", Want::Status(413)).json(&big),
    );
    cases.push(
        Case::new("8 MiB body", Method::POST, "/api/v1/enrollment-tokens", Want::Status(413))
            .token(admin)
            .raw("application/json", vec![b' '; 8 * 1024 * 1024]),
    );
    for (name, body) in [
        ("truncated JSON", b"{\"email\": ".to_vec()),
        ("empty body", Vec::new()),
        ("JSON null", b"null".to_vec()),
        ("JSON array", b"[1,2,3]".to_vec()),
        ("wrong types", br#"{"email": 5, "password": ["x"]}"#.to_vec()),
        ("invalid UTF-8", b"{\"email\": \"\xff\xfe\", \"password\": \"x\"}".to_vec()),
        ("lone surrogate", br#"{"email": "\ud800@x.io", "password": "correct horse battery"}"#.to_vec()),
        ("deep nesting", [vec![b'['; 100_000], vec![b']'; 100_000]].concat()),
        ("NUL in email", br#"{"email": "a\u0000@b.c", "password": "correct horse battery"}"#.to_vec()),
    ] {
        cases.push(
            Case::new(name, Method::POST, "/api/v1/auth/login", Want::ClientError)
                .raw("application/json", body),
        );
    }
    cases.push(
        Case::new("duplicate keys", Method::POST, "/api/v1/users", Want::ClientError).token(admin).raw(
            "application/json",
            br#"{"email": "dup@example.com", "password": "correct horse battery", "role": "viewer", "role": "admin"}"#.to_vec(),
        ),
    );
    cases.push(
        Case::new("text/plain body", Method::POST, "/api/v1/auth/login", Want::Status(415))
            .raw("text/plain", b"email=a".to_vec()),
    );
    // Forged and misused tokens.
    for (name, token) in forged_tokens(cluster)? {
        cases.push(
            Case::new(format!("token: {name}"), Method::GET, "/api/v1/auth/me", Want::Status(401))
                .token(&token),
        );
    }
    cases.push(Case::new(
        "token in the query string",
        Method::GET,
        format!("/api/v1/auth/me?access_token={admin}"),
        Want::Status(401),
    ));
    // A viewer is not an admin, whatever it asks for.
    cases.push(
        Case::new("viewer creates a user", Method::POST, "/api/v1/users", Want::Status(403))
            .token(viewer)
            .json(&json!({"email": "escalate@example.com", "password": "correct horse battery", "role": "admin"})),
    );
    cases.push(
        Case::new(
            "viewer revokes an agent",
            Method::DELETE,
            format!("/api/v1/agents/{agent}"),
            Want::Status(403),
        )
        .token(viewer),
    );
    cases.push(
        Case::new(
            "viewer executes",
            Method::POST,
            format!("/api/v1/agents/{agent}/execute"),
            Want::Status(403),
        )
        .token(viewer)
        .json(&json!({"command": "ping"})),
    );

    cases.extend(enrollment_cases(cluster).await?);
    cases.extend(identity_admin_cases(cluster, operator, &agent));
    cases.extend(incident_execute_cases(cluster, operator, incident));
    cases.push(Case::new("/metrics on the public port", Method::GET, "/metrics", Want::Status(404)));
    cases.push(
        Case::new("/metrics on the public port, as admin", Method::GET, "/metrics", Want::Status(404))
            .token(admin),
    );

    let mut failures = Vec::new();
    let total = cases.len();
    for case in cases {
        if let Err(failure) = send(cluster, &case).await {
            failures.push(failure);
        }
    }
    // Below HTTP's semantics: raw bytes on the socket.
    let raw = raw_cases(cluster).await;
    let raw_total = raw.len();
    for (name, outcome) in raw {
        match outcome {
            Ok(status) if (400..500).contains(&status) => {}
            Ok(status) => failures.push(format!("raw {name}: answered {status}")),
            Err(err) => failures.push(format!("raw {name}: {err:#}")),
        }
    }
    Ok((failures, total + raw_total))
}

/// Sends a case; returns its status, or what was wrong with the answer.
async fn send(cluster: &Cluster, case: &Case) -> Result<u16, String> {
    let mut request = cluster.http.request(case.method.clone(), format!("{}{}", cluster.api_base, case.path));
    if let Some(token) = &case.token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    for (name, value) in &case.headers {
        request = request.header(*name, value);
    }
    if let Some(content_type) = case.content_type {
        request = request.header("Content-Type", content_type);
    }
    if let Some(body) = &case.body {
        request = request.body(body.clone());
    }
    let response = match request.send().await {
        Ok(response) => response,
        // The server may close the connection on an oversized body before reading it.
        Err(err) if matches!(case.want, Want::Status(413)) && (err.is_request() || err.is_body()) => {
            return Ok(413);
        }
        Err(err) => return Err(format!("{}: no answer: {err}", case.name)),
    };
    let status = response.status();
    let problem = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/problem+json"));
    let body = response.text().await.unwrap_or_default();
    let ok = match case.want {
        Want::Status(code) => status.as_u16() == code,
        Want::ClientError => status.is_client_error(),
        Want::NotServerError => !status.is_server_error(),
        Want::OneOf(codes) => codes.contains(&status.as_u16()),
    };
    if !ok {
        return Err(format!(
            "{}: {} {} answered {status}: {}",
            case.name,
            case.method,
            short(&case.path),
            short(&body)
        ));
    }
    if status.is_client_error() && status != StatusCode::NOT_FOUND && !problem {
        return Err(format!("{}: {status} without a problem document: {}", case.name, short(&body)));
    }
    if body.contains("root:x:0:0") || body.contains("$argon2") {
        return Err(format!("{}: the answer leaks data: {}", case.name, short(&body)));
    }
    if status.is_client_error() && (body.contains("\"nats_credentials\"") || body.contains("BEGIN NATS")) {
        return Err(format!("{}: a refusal carries credentials: {}", case.name, short(&body)));
    }
    Ok(status.as_u16())
}

/// A proof signed by `signer` over a nonce, a fingerprint and a key.
fn proof(signer: &KeyPair, nonce: &str, fingerprint: &str, key: Option<&str>) -> anyhow::Result<Value> {
    let message = wire_models::enroll_proof_message(nonce, fingerprint, key);
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signer.sign(&message)?);
    Ok(json!({"public_key": signer.public_key(), "nonce": nonce, "signature": signature}))
}

/// Enrollment of a machine that is enrolled (the steady probe) without proving its
/// key, with forged, replayed and malformed proofs, with keys that are not user
/// NKeys, and the challenge endpoint misused. Every request counts against the
/// enrollment rate limit of this address (60 a minute), so the set stays small.
async fn enrollment_cases(cluster: &Cluster) -> anyhow::Result<Vec<Case>> {
    const ENROLL: &str = "/api/v1/agents/enroll";
    const CHALLENGE: &str = "/api/v1/agents/enroll/challenge";
    let token = cluster.enrollment_token("chaos hostile http", 10).await?;
    let fingerprint = cluster.steady.machine_fingerprint();
    let hostname = cluster.steady.hostname.clone();
    let on_record: Option<String> = sqlx::query_scalar("SELECT identity_key FROM agents WHERE id = $1")
        .bind(cluster.steady.id.as_str())
        .fetch_one(&cluster.stack.db.pool)
        .await?;
    let on_record = on_record.context("the steady probe has no key on record")?;
    let attacker = KeyPair::new_user();
    cluster.secrets.add(format!("{} attacker key seed", cluster.name), attacker.seed()?);
    let attacker_key = attacker.public_key();
    let enroll =
        |name: &str, want: Want, body: Value| Case::new(name, Method::POST, ENROLL, want).json(&body);
    let mut cases = Vec::new();

    // An enrolled machine without a proof: refused, whatever the token.
    cases.push(enroll(
        "enrolled machine, valid token, new key, no proof",
        Want::Status(409),
        json!({"token": token, "machine_fingerprint": fingerprint, "hostname": "evil-host",
               "nats_public_key": attacker_key}),
    ));
    cases.push(enroll(
        "enrolled machine, valid token, no key, no proof",
        Want::Status(409),
        json!({"token": token, "machine_fingerprint": fingerprint, "hostname": hostname}),
    ));
    // A proof signed with another key that claims the key on record.
    let nonce = cluster.enroll_challenge().await?;
    let mut forged = proof(&attacker, &nonce, &fingerprint, Some(&attacker_key))?;
    forged["public_key"] = json!(on_record);
    cases.push(enroll(
        "proof forged for the key on record",
        Want::Status(401),
        json!({"token": token, "machine_fingerprint": fingerprint, "hostname": "evil-host",
               "nats_public_key": attacker_key, "proof": forged}),
    ));
    // A well-formed nonce the API never issued.
    let unissued = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]);
    cases.push(enroll(
        "proof with a nonce never issued",
        Want::Status(401),
        json!({"machine_fingerprint": fingerprint, "hostname": hostname, "nats_public_key": attacker_key,
               "proof": proof(&attacker, &unissued, &fingerprint, Some(&attacker_key))?}),
    ));
    // The same proof twice: whatever the first answer, the nonce is spent.
    let nonce = cluster.enroll_challenge().await?;
    let once = json!({"machine_fingerprint": fingerprint, "hostname": hostname, "nats_public_key": attacker_key,
                      "proof": proof(&attacker, &nonce, &fingerprint, Some(&attacker_key))?});
    cases.push(enroll("proof used the first time", Want::ClientError, once.clone()));
    cases.push(enroll("the same proof replayed", Want::Status(401), once));
    // Proofs that are not proofs.
    let sig = "A".repeat(86);
    for (name, garbage) in [
        (
            "proof signature too short",
            json!({"public_key": attacker_key, "nonce": unissued, "signature": "c2hvcnQ"}),
        ),
        (
            "proof signature not base64url",
            json!({"public_key": attacker_key, "nonce": unissued, "signature": "!".repeat(86)}),
        ),
        ("proof nonce with a space", json!({"public_key": attacker_key, "nonce": "a b", "signature": sig})),
        ("proof nonce too short", json!({"public_key": attacker_key, "nonce": "abc", "signature": sig})),
        (
            "proof nonce of 4 KiB",
            json!({"public_key": attacker_key, "nonce": "n".repeat(4096), "signature": sig}),
        ),
        (
            "proof key an account key",
            json!({"public_key": KeyPair::new_account().public_key(), "nonce": unissued, "signature": sig}),
        ),
        ("proof key garbage", json!({"public_key": "U' OR '1'='1", "nonce": unissued, "signature": sig})),
    ] {
        cases.push(enroll(
            name,
            Want::Status(400),
            json!({"machine_fingerprint": fingerprint, "hostname": hostname, "proof": garbage}),
        ));
    }
    cases.push(enroll(
        "proof without fields",
        Want::ClientError,
        json!({"machine_fingerprint": fingerprint, "hostname": hostname, "proof": {}}),
    ));
    // Keys that are not user NKeys; a seed sent by mistake must not reach a log either.
    let seed = KeyPair::new_user().seed()?;
    cases.push(enroll(
        "nats_public_key is a user seed",
        Want::Status(400),
        json!({"token": token, "machine_fingerprint": "chaos-http-machine-seed", "hostname": "h", "nats_public_key": seed}),
    ));
    cluster.secrets.add(format!("{} seed sent as a public key", cluster.name), seed);
    for (name, key) in [
        ("an account key", KeyPair::new_account().public_key()),
        ("an operator key", KeyPair::new_operator().public_key()),
        ("not a key", "Unot-a-key".to_owned()),
        ("empty", String::new()),
    ] {
        cases.push(enroll(
            &format!("nats_public_key {name}"),
            Want::Status(400),
            json!({"token": token, "machine_fingerprint": "chaos-http-machine-key", "hostname": "h",
                   "nats_public_key": key}),
        ));
    }
    // The challenge endpoint: a body is ignored, other methods are not allowed.
    cases.push(
        Case::new("challenge with a JSON body", Method::POST, CHALLENGE, Want::NotServerError)
            .json(&json!({"nonce": "chosen-by-the-client-0000"})),
    );
    cases.push(
        Case::new("challenge with a text body", Method::POST, CHALLENGE, Want::NotServerError)
            .raw("text/plain", b"hello".to_vec()),
    );
    for method in [Method::GET, Method::PUT, Method::DELETE, Method::PATCH] {
        cases.push(Case::new(format!("challenge by {method}"), method, CHALLENGE, Want::Status(405)));
    }
    Ok(cases)
}

/// What only admins may do about agent identity, asked by others and asked wrongly.
fn identity_admin_cases(cluster: &Cluster, operator: &str, agent: &str) -> Vec<Case> {
    let (admin, viewer) = (cluster.admin_token.as_str(), cluster.viewer_token.as_str());
    let revoked = format!("/api/v1/revoked-agents/{agent}");
    let resolve = "/api/v1/identity-conflicts/1/resolve";
    let reject = json!({"resolution": "reject"});
    vec![
        Case::new("viewer deletes a revoked agent", Method::DELETE, revoked.clone(), Want::Status(403))
            .token(viewer),
        Case::new("operator deletes a revoked agent", Method::DELETE, revoked.clone(), Want::Status(403))
            .token(operator),
        Case::new("anonymous deletes a revoked agent", Method::DELETE, revoked.clone(), Want::Status(401)),
        Case::new(
            "delete a revoked agent, history=bogus",
            Method::DELETE,
            format!("{revoked}?history=bogus"),
            Want::Status(400),
        )
        .token(admin),
        // The agent is not revoked: nothing to delete.
        Case::new("delete an agent that is not revoked", Method::DELETE, revoked, Want::Status(404))
            .token(admin),
        Case::new(
            "delete a revoked agent with a bad id",
            Method::DELETE,
            "/api/v1/revoked-agents/..%2F..%2Fetc",
            Want::ClientError,
        )
        .token(admin),
        Case::new(
            "viewer lists identity conflicts",
            Method::GET,
            "/api/v1/identity-conflicts",
            Want::Status(403),
        )
        .token(viewer),
        Case::new(
            "operator lists identity conflicts",
            Method::GET,
            "/api/v1/identity-conflicts",
            Want::Status(403),
        )
        .token(operator),
        Case::new(
            "anonymous lists identity conflicts",
            Method::GET,
            "/api/v1/identity-conflicts",
            Want::Status(401),
        ),
        Case::new(
            "identity conflicts, status=bogus",
            Method::GET,
            "/api/v1/identity-conflicts?status=bogus",
            Want::Status(400),
        )
        .token(admin),
        Case::new("viewer resolves a conflict", Method::POST, resolve, Want::Status(403))
            .token(viewer)
            .json(&reject),
        Case::new("operator resolves a conflict", Method::POST, resolve, Want::Status(403))
            .token(operator)
            .json(&reject),
        Case::new(
            "resolve a conflict that does not exist",
            Method::POST,
            "/api/v1/identity-conflicts/9000000000000/resolve",
            Want::Status(404),
        )
        .token(admin)
        .json(&reject),
        Case::new("resolve a conflict as \"bogus\"", Method::POST, resolve, Want::ClientError)
            .token(admin)
            .json(&json!({"resolution": "bogus"})),
        Case::new(
            "resolve a conflict with a bad id",
            Method::POST,
            "/api/v1/identity-conflicts/abc/resolve",
            Want::ClientError,
        )
        .token(admin)
        .json(&reject),
    ]
}

/// Executing an incident's suggestion without repeating it, or repeating something
/// else: refused before anything runs (the real suggestion is never sent).
fn incident_execute_cases(cluster: &Cluster, operator: &str, incident: i64) -> Vec<Case> {
    let (admin, viewer) = (cluster.admin_token.as_str(), cluster.viewer_token.as_str());
    let path = format!("/api/v1/incidents/{incident}/execute");
    let other = json!({"command": "ping", "params": {}});
    vec![
        Case::new("execute a suggestion without a body", Method::POST, path.clone(), Want::ClientError)
            .token(admin),
        Case::new("execute a suggestion with an empty object", Method::POST, path.clone(), Want::ClientError)
            .token(admin)
            .json(&json!({})),
        Case::new("execute a suggestion with a JSON null", Method::POST, path.clone(), Want::ClientError)
            .token(admin)
            .raw("application/json", b"null".to_vec()),
        Case::new("execute other than suggested (ping)", Method::POST, path.clone(), Want::ClientError)
            .token(operator)
            .json(&other),
        Case::new(
            "execute other than suggested (another service)",
            Method::POST,
            path.clone(),
            Want::ClientError,
        )
        .token(admin)
        .json(&json!({"command": "restart_service", "params": {"service": "sshd"}})),
        Case::new(
            "execute a command off the allow-list as suggested",
            Method::POST,
            path.clone(),
            Want::Status(400),
        )
        .token(admin)
        .json(&json!({"command": "rm_rf", "params": {"path": "/"}})),
        Case::new("viewer executes a suggestion", Method::POST, path, Want::Status(403))
            .token(viewer)
            .json(&other),
        Case::new(
            "execute the suggestion of an incident that does not exist",
            Method::POST,
            "/api/v1/incidents/9000000000000/execute",
            Want::Status(404),
        )
        .token(admin)
        .json(&other),
    ]
}

/// What the spoofed-address logins got.
struct Spoofed {
    tried: usize,
    refused: usize,
    limited: usize,
    failures: Vec<String>,
}

/// Wrong-password logins, each claiming a different client address in the headers
/// proxies set. The gateway runs without TRUSTED_PROXIES, so it must count them all
/// against the real address: answered 401 until that address's login limit is used
/// up, then 429 (with Retry-After), whatever address the headers claim.
async fn spoofed_logins(cluster: &Cluster) -> Spoofed {
    /// More than the login limit per address and minute (10), twice over, so a minute
    /// window that turns over in between still fills.
    const ATTEMPTS: usize = 24;
    /// Attempts after the first 429, each from a new claimed address.
    const AFTER_LIMIT: usize = 4;
    let mut out = Spoofed { tried: 0, refused: 0, limited: 0, failures: Vec::new() };
    let body = json!({"email": "chaos-spoofed@example.com", "password": "not the password, surely"});
    for i in 0..ATTEMPTS + AFTER_LIMIT {
        if out.limited == 0 && i >= ATTEMPTS {
            break;
        }
        if out.limited > AFTER_LIMIT {
            break;
        }
        let claimed = format!("203.0.113.{}", i + 1);
        let (header, value) = match i % 4 {
            0 => ("X-Forwarded-For", claimed.clone()),
            1 => ("X-Forwarded-For", format!("{claimed}, 198.51.100.{}", i + 1)),
            2 => ("X-Real-IP", claimed.clone()),
            _ => ("Forwarded", format!("for={claimed}")),
        };
        let want = if out.limited > 0 { Want::Status(429) } else { Want::OneOf(&[401, 429]) };
        let case =
            Case::new(format!("login claiming {header}: {value}"), Method::POST, "/api/v1/auth/login", want)
                .header(header, value)
                .json(&body);
        out.tried += 1;
        let mut request = cluster.http.post(format!("{}{}", cluster.api_base, case.path)).json(&body);
        for (name, value) in &case.headers {
            request = request.header(*name, value);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response.headers().contains_key("retry-after");
                let ok = match case.want {
                    Want::Status(code) => status == code,
                    Want::OneOf(codes) => codes.contains(&status),
                    Want::ClientError | Want::NotServerError => false,
                };
                if !ok {
                    out.failures.push(format!(
                        "{}: answered {status} (the claimed address was believed, or the login was not refused)",
                        case.name
                    ));
                }
                match status {
                    401 => out.refused += 1,
                    429 => {
                        out.limited += 1;
                        if !retry_after {
                            out.failures.push(format!("{}: 429 without Retry-After", case.name));
                        }
                    }
                    _ => {}
                }
            }
            Err(err) => out.failures.push(format!("{}: no answer: {err}", case.name)),
        }
    }
    if out.limited == 0 {
        out.failures.push(format!(
            "{} wrong-password logins from one address, each claiming another, were never rate limited",
            out.tried
        ));
    }
    out
}

fn short(s: &str) -> String {
    let mut out: String = s.chars().take(160).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// Tokens that must all be refused: forged, expired, from another issuer, for a user
/// who does not exist, or not a token at all.
fn forged_tokens(cluster: &Cluster) -> anyhow::Result<Vec<(&'static str, String)>> {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let real = cluster.admin_token.as_str();
    let parts: Vec<&str> = real.split('.').collect();
    anyhow::ensure!(parts.len() == 3, "the admin token is not a JWT");
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1]).context("decoding the token")?,
    )?;
    let now = chrono::Utc::now().timestamp();
    let with = |changes: &[(&str, Value)]| {
        let mut c = claims.clone();
        for (key, value) in changes {
            c[*key] = value.clone();
        }
        c
    };
    let sign = |secret: &[u8], claims: &Value| {
        let header = b64(json!({"alg": "HS256", "typ": "JWT"}).to_string().as_bytes());
        let payload = b64(claims.to_string().as_bytes());
        let signature = b64(&hmac_sha256(secret, format!("{header}.{payload}").as_bytes()));
        format!("{header}.{payload}.{signature}")
    };
    let secret = cluster.jwt_secret().as_bytes();
    Ok(vec![
        ("alg none", format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), parts[1])),
        ("wrong key", sign(b"chaos-attacker-key-0123456789abcdef0123456789", &claims)),
        (
            "tampered payload",
            format!(
                "{}.{}.{}",
                parts[0],
                b64(with(&[("email", json!("attacker@example.com"))]).to_string().as_bytes()),
                parts[2]
            ),
        ),
        ("expired", sign(secret, &with(&[("iat", json!(now - 7200)), ("exp", json!(now - 3600))]))),
        ("another issuer", sign(secret, &with(&[("iss", json!("someone-else"))]))),
        ("unknown user", sign(secret, &with(&[("sub", json!(uuid::Uuid::new_v4()))]))),
        (
            "HS256 header, RS256 claim",
            format!("{}.{}.{}", b64(br#"{"alg":"RS256","typ":"JWT"}"#), parts[1], parts[2]),
        ),
        ("garbage", "not.a.token".into()),
        ("huge", "A".repeat(16 * 1024)),
    ])
}

/// HMAC-SHA256 (RFC 2104), to sign test tokens with a known key.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let (mut ipad, mut opad) = ([0x36u8; 64], [0x5cu8; 64]);
    for i in 0..64 {
        ipad[i] ^= block[i];
        opad[i] ^= block[i];
    }
    let inner = Sha256::new().chain_update(ipad).chain_update(message).finalize();
    Sha256::new().chain_update(opad).chain_update(inner).finalize().into()
}

/// Requests HTTP clients would never send: a chunked body far over the limit, a huge
/// header, garbage, a Content-Length far over the limit.
async fn raw_cases(cluster: &Cluster) -> Vec<(&'static str, anyhow::Result<u16>)> {
    let addr = cluster.api_base.trim_start_matches("http://").to_owned();
    let mut chunked = b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..64 {
        chunked.extend_from_slice(format!("{:x}\r\n", 32 * 1024).as_bytes());
        chunked.extend(std::iter::repeat_n(b' ', 32 * 1024));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let huge_header =
        format!("GET /api/v1/agents HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(256 * 1024))
            .into_bytes();
    let announced =
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{".to_vec();
    let mut out = Vec::new();
    for (name, bytes) in [
        ("chunked 2 MiB body", chunked),
        ("256 KiB header", huge_header),
        ("garbage request line", b"\x16\x03\x01\x02\x00 hello\r\n\r\n".to_vec()),
        ("10 MB Content-Length announced", announced),
    ] {
        out.push((name, raw_request(&addr, &bytes).await));
    }
    out
}

async fn raw_request(addr: &str, bytes: &[u8]) -> anyhow::Result<u16> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        // The server may answer and close before reading everything: that is fine.
        let _ = stream.write_all(bytes).await;
        let mut response = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    response.extend_from_slice(&buf[..n]);
                    if response.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
        let text = String::from_utf8_lossy(&response);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .with_context(|| format!("no HTTP status in {:?}", short(&text)))?;
        anyhow::Ok(status)
    };
    tokio::time::timeout(Duration::from_secs(15), exchange).await.context("no answer within 15 s")?
}

#[cfg(test)]
mod tests {
    use super::hmac_sha256;

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}
