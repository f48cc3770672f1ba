use std::time::Duration;

use agent_sim::RpcBehaviour;
use reqwest::StatusCode;
use serde_json::json;
use test_support::otlp::{OtlpReceiver, binary};
use test_support::process::ServiceProcess;
use test_support::{Stack, free_port};

use crate::helpers::*;

/// Analyze, then execute the suggestion, against a simulated agent: the audit log shows
/// the suggested action with its incident.
#[tokio::test]
async fn analyze_then_execute_the_suggestion_end_to_end() {
    let api = start(&[]).await;
    let (analyzer, stop_analyzer) = start_analyzer(&api.stack, &[]).await;
    let fleet = api.online_fleet("e2e", 1).await;
    let agent = fleet.agents()[0].id.to_string();
    let stop_rpc = api.serve_rpc(&fleet, RpcBehaviour::default()).await;
    let id = api.nginx_incident(&agent).await;

    let (status, incident) =
        api.post(&format!("/api/v1/incidents/{id}/analyze"), &api.operator, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{incident}");
    assert_eq!(incident["status"], "analyzed");
    assert_eq!(incident["analysis"]["status"], "ok");
    assert_eq!(incident["analysis"]["analyzer"], "rules");
    assert!(incident["ai_analysis"].as_str().is_some_and(|a| !a.is_empty()));
    assert_eq!(
        incident["suggested_action"],
        json!({"command": "restart_service", "params": {"service": "nginx"}})
    );

    // Confirmed as shown: the command and params the operator saw.
    let (status, executed) = api
        .post(&format!("/api/v1/incidents/{id}/execute"), &api.operator, incident["suggested_action"].clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{executed}");
    assert_eq!(executed["result"]["output"], "restarted nginx");
    let (_, audit) = api.get(&format!("/api/v1/audit?agent_id={agent}"), &api.admin).await;
    assert_eq!(audit["items"][0]["action"], "execute_suggested");
    assert_eq!(audit["items"][0]["incident_id"], id);
    assert_eq!(audit["items"][0]["outcome"], "ok");
    assert_eq!(audit["items"][0]["actor"], "operator@example.com");

    // An unknown incident is 404 through the analyzer path too.
    let (status, _) = api.post("/api/v1/incidents/987654/analyze", &api.operator, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    stop_rpc.cancel();
    stop_analyzer.cancel();
    analyzer.wait().await.unwrap();
    api.stop().await;
}

/// One analyze: spans from the api-gateway and the ai-analyzer in one trace, the
/// analyzer's span a child of the gateway's.
#[tokio::test]
async fn an_analyze_is_one_trace_from_gateway_to_analyzer() {
    let stack = Stack::start().await;
    natsbus::ensure_topology(&stack.jetstream().await, &stack.topology).await.unwrap();
    let receiver = OtlpReceiver::start().await;
    let port = free_port();
    let common = [
        ("JWT_SECRET", SECRET.to_owned()),
        ("HTTP_ADDR", format!("127.0.0.1:{port}")),
        ("ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
    ];
    let mut gateway_env = stack.env_for(&natsbus::auth::Identity::ApiGateway);
    gateway_env.extend(common.clone());
    let mut analyzer_env = stack.env_for(&natsbus::auth::Identity::AiAnalyzer);
    analyzer_env.extend(common);
    let mut gateway = ServiceProcess::spawn(&binary("api-gateway"), &gateway_env, &[]);
    let mut analyzer = ServiceProcess::spawn(&binary("ai-analyzer"), &analyzer_env, &[]);
    gateway.wait_for_line("api-gateway ready", Duration::from_secs(30)).await;
    analyzer.wait_for_line("ai-analyzer ready", Duration::from_secs(30)).await;

    let agent = wire_models::AgentId::parse("abcabcabcabc").unwrap();
    storage::agents::register(&stack.db.pool, &agent, "traced").await.unwrap();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO incidents (agent_id, type, source, raw_error, event_id, fingerprint, dedup_key)
         VALUES ($1, 'oom', 'kernel', 'Out of memory: Killed process 42', gen_random_uuid(), 'fp-trace', 'fp-trace') RETURNING id",
    )
    .bind(agent.as_str())
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    add_user(&stack, "tracer@example.com", "operator").await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let token = login_at(&base, "tracer@example.com").await;
    let trace_id = "5b8efff798038103d269b633813fc60c";
    let response = http
        .post(format!("{base}/api/v1/incidents/{id}/analyze"))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{trace_id}-eee19b7ec3c1b174-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // The analyzer handles the request in a `process` span whose parent is the gateway's
    // request to it; spans arrive in batches, so each is waited for by what it is.
    let analyzer_span = receiver
        .wait_for("the analyzer's process span", Duration::from_secs(20), |s| {
            s.service == "ai-analyzer" && s.trace_id == trace_id && s.kind == "CONSUMER"
        })
        .await;
    let request_span = receiver
        .wait_for("the gateway's span the analyzer's hangs from", Duration::from_secs(20), |s| {
            s.service == "api-gateway" && s.trace_id == trace_id && s.span_id == analyzer_span.parent_span_id
        })
        .await;
    assert_eq!(request_span.kind, "CLIENT", "{request_span:?}");
    assert_eq!(request_span.attribute("messaging.operation.name"), Some("request"));
    // The analyzer's database work is in the same trace, under its process span.
    receiver
        .wait_for("an analyzer statement in the trace", Duration::from_secs(20), |s| {
            s.service == "ai-analyzer"
                && s.trace_id == trace_id
                && s.attribute("db.system.name") == Some("postgresql")
        })
        .await;

    gateway.signal("TERM");
    analyzer.signal("TERM");
    assert_eq!(gateway.wait(Duration::from_secs(20)).await, Some(0));
    assert_eq!(analyzer.wait(Duration::from_secs(20)).await, Some(0));
}
