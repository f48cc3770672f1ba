use std::time::Duration;

use ai_analyzer::{Config, Running};
use serde_json::{Value, json};
use test_support::Stack;
use tokio_util::sync::CancellationToken;
use wire_models::{AgentId, AnalyzeReply, AnalyzeRequest, PROTOCOL_VERSION};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The model the fake provider is asked for.
pub const MODEL: &str = "test/model";
/// The key the analyzer sends.
pub const KEY: &str = "sk-or-test-key";
/// The fake provider's chat-completions path.
pub const CHAT_PATH: &str = "/api/v1/chat/completions";

/// The analyzer's arguments for `stack`; `provider` is the fake's base URL (None: no
/// key, the rules answer). Short timeouts and backoffs keep the tests fast; automatic
/// analysis is off unless `extra` turns it on.
pub fn config(stack: &Stack, provider: Option<&MockServer>, extra: &[&str]) -> Config {
    let mut args: Vec<String> = [
        "ai-analyzer",
        "--admin-addr",
        "127.0.0.1:0",
        "--ai-timeout",
        "2s",
        "--ai-deadline",
        "10s",
        "--ai-backoff",
        "10ms",
        "--ai-backoff-max",
        "40ms",
        "--auto-analyze",
        "false",
        "--shutdown-grace",
        "5s",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    args.extend(stack.args_for(&natsbus::auth::Identity::AiAnalyzer));
    args.extend(stack.redis_args());
    if let Some(server) = provider {
        args.extend([
            "--openrouter-key-file".to_owned(),
            stack.secret_file("openrouter-key", KEY),
            "--openrouter-base-url".to_owned(),
            format!("{}/api/v1", server.uri()),
            "--openrouter-model".to_owned(),
            MODEL.to_owned(),
        ]);
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let config: Config = test_support::parse_config(args);
    config.validate().unwrap();
    config
}

pub async fn start(config: Config) -> (Running, CancellationToken) {
    let shutdown = CancellationToken::new();
    let running = ai_analyzer::start(config, shutdown.clone()).await.unwrap();
    (running, shutdown)
}

pub async fn stop(running: Running, shutdown: CancellationToken) {
    test_support::lifecycle::stop_within(&shutdown, running.wait(), Duration::from_secs(20)).await;
}

/// An enrolled agent with an inventory: Debian 12, nginx failed, postgresql running.
pub async fn agent(stack: &Stack, hostname: &str) -> AgentId {
    let id = AgentId::random();
    storage::agents::register(&stack.db.pool, &id, hostname).await.unwrap();
    let data = json!({
        "hostname": hostname,
        "os": {"name": "Debian GNU/Linux", "version": "12", "kernel": "6.1.0-28-amd64", "arch": "x86_64"},
        "services": [{"name": "nginx", "state": "failed"}, {"name": "postgresql", "state": "running"}],
        "packages": [{"name": "nginx", "version": "1.22.1"}],
        "meta": {},
    });
    sqlx::query(
        "INSERT INTO agents_inventory (agent_id, hash, data, collected_at) VALUES ($1, repeat('a', 64), $2, now())",
    )
    .bind(id.as_str())
    .bind(&data)
    .execute(&stack.db.pool)
    .await
    .unwrap();
    id
}

/// What an incident is made of.
pub struct NewIncident<'a> {
    pub kind: &'a str,
    pub severity: &'a str,
    pub source: &'a str,
    pub raw_error: &'a str,
    /// Incidents with the same fingerprint share a cached analysis.
    pub fingerprint: String,
}

impl<'a> NewIncident<'a> {
    pub fn new(kind: &'a str, severity: &'a str, source: &'a str, raw_error: &'a str) -> Self {
        Self { kind, severity, source, raw_error, fingerprint: test_support::unique_token() }
    }
}

/// Inserts an open incident and returns its id.
pub async fn incident(stack: &Stack, agent: &AgentId, new: &NewIncident<'_>) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO incidents (agent_id, type, source, raw_error, context, is_critical, severity, event_id,
                                fingerprint, dedup_key, occurrences)
         VALUES ($1, $2, $3, $4, $5, $6, $7, gen_random_uuid(), $8, gen_random_uuid()::text, 3)
         RETURNING id",
    )
    .bind(agent.as_str())
    .bind(new.kind)
    .bind(new.source)
    .bind(new.raw_error)
    .bind(json!({"unit": format!("{}.service", new.source)}))
    .bind(new.severity == "critical")
    .bind(new.severity)
    .bind(&new.fingerprint)
    .fetch_one(&stack.db.pool)
    .await
    .unwrap()
}

/// The analysis columns of an incident.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Row {
    pub status: String,
    pub is_critical: bool,
    pub analysis_status: String,
    pub ai_analysis: Option<String>,
    pub suggested_action: Option<Value>,
    pub dropped_action: Option<Value>,
    pub analyzer: Option<String>,
    pub analyzer_model: Option<String>,
    pub analysis_error: Option<String>,
    pub analyzed: bool,
}

pub async fn row(stack: &Stack, id: i64) -> Row {
    sqlx::query_as(
        "SELECT status, is_critical, analysis_status, ai_analysis, suggested_action, dropped_action, analyzer,
                analyzer_model, analysis_error, analyzed_at IS NOT NULL AS analyzed
         FROM incidents WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&stack.db.pool)
    .await
    .unwrap()
}

/// Sends an analyze request the way the API does and decodes the reply.
pub async fn analyze(
    client: &async_nats::Client,
    stack: &Stack,
    incident_id: i64,
    force: bool,
) -> AnalyzeReply {
    let request =
        AnalyzeRequest { v: PROTOCOL_VERSION, incident_id, force, requested_by: Some("test".into()) };
    let payload = wire_models::encode(&request).unwrap();
    let reply = tokio::time::timeout(
        Duration::from_secs(20),
        client.request(stack.topology.subjects.analyze(), payload.into()),
    )
    .await
    .expect("no analyze reply within 20s")
    .expect("analyze request");
    wire_models::decode(&reply.payload).unwrap()
}

/// A chat completion whose message content is `content`.
pub fn completion(content: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "gen-1",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 812, "completion_tokens": 97, "total_tokens": 909},
    }))
}

/// A good answer: critical, restart nginx.
pub fn good_answer() -> String {
    json!({
        "analysis": "nginx was killed by SIGKILL; restart it and check the OOM killer.",
        "critical": true,
        "suggested_action": {"command": "restart_service", "params": {"service": "nginx"}},
    })
    .to_string()
}

/// A fake provider answering every chat completion with `response`.
pub async fn provider(response: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST")).and(path(CHAT_PATH)).respond_with(response).mount(&server).await;
    server
}

pub async fn calls(server: &MockServer) -> Vec<wiremock::Request> {
    server.received_requests().await.unwrap_or_default()
}
