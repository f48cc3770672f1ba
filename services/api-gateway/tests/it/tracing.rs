use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use test_support::otlp::{OtlpReceiver, binary};
use test_support::process::ServiceProcess;
use test_support::{Stack, free_port};

use crate::helpers::*;

/// One execute: spans from the api-gateway and from the agent's RPC handling, in one
/// trace, the agent's span a child of the gateway's.
#[tokio::test]
async fn an_execute_is_one_trace_from_gateway_to_agent() {
    let stack = Stack::start().await;
    natsbus::ensure_topology(&stack.jetstream().await, &stack.topology).await.unwrap();
    let receiver = OtlpReceiver::start().await;
    let port = free_port();
    let common = [
        ("JWT_SECRET", SECRET.to_owned()),
        ("HTTP_ADDR", format!("127.0.0.1:{port}")),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
    ];
    let mut env = stack.env_for(&natsbus::auth::Identity::ApiGateway);
    env.extend(common.clone());
    env.push(("LOG_FORMAT", "json".into()));
    let mut gateway = ServiceProcess::spawn(&binary("api-gateway"), &env, &[]);
    gateway.wait_for_line("api-gateway ready", Duration::from_secs(30)).await;
    let mut sim_env = stack.env_for(&natsbus::auth::Identity::SimulatorFleet);
    sim_env.extend(common);
    sim_env.extend([
        ("SIM_AGENTS", "2".to_owned()),
        ("SIM_SEED", "traced".into()),
        ("SIM_EVENTS_PER_SEC", "0".into()),
    ]);
    let mut sim = ServiceProcess::spawn(&binary("agent-sim"), &sim_env, &[]);
    sim.wait_for_line("simulated agents starting", Duration::from_secs(30)).await;

    let fleet = agent_sim::Fleet::numbered("traced", 2);
    let agent = fleet.agents()[0].id.to_string();
    storage::agents::register_many(&stack.db.pool, &[(fleet.agents()[0].id.clone(), "traced".into())])
        .await
        .unwrap();
    sqlx::query("UPDATE agents SET status = 'online', status_changed_at = now() WHERE id = $1")
        .bind(&agent)
        .execute(&stack.db.pool)
        .await
        .unwrap();
    add_user(&stack, "tracer@example.com", "operator").await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let token = login_at(&base, "tracer@example.com").await;

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let response = http
        .post(format!("{base}/api/v1/agents/{agent}/execute"))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({"command": "restart_service", "params": {"service": "nginx"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let agent_span = receiver
        .wait_for("the agent's process span", Duration::from_secs(20), |s| {
            s.service == "agent-sim" && s.trace_id == trace_id && s.kind == "CONSUMER"
        })
        .await;
    let root = stack.topology.subjects.root().as_str();
    assert_eq!(agent_span.name, format!("process {root}.{{agent_id}}.rpc"));
    assert_eq!(agent_span.attribute("messaging.system"), Some("nats"));
    assert_eq!(agent_span.attribute("messaging.operation.type"), Some("process"));
    assert_eq!(
        agent_span.attribute("messaging.destination.name"),
        Some(format!("{root}.{agent}.rpc").as_str())
    );
    let http_span = receiver
        .wait_for("the gateway's http span", Duration::from_secs(20), |s| {
            s.service == "api-gateway" && s.trace_id == trace_id && s.kind == "SERVER"
        })
        .await;
    // The caller's context is honoured: the gateway's request span is its child.
    assert_eq!(http_span.parent_span_id, caller_span);
    assert_eq!(http_span.name, "POST /api/v1/agents/{id}/execute");
    assert_eq!(http_span.attribute("http.request.method"), Some("POST"));
    assert_eq!(http_span.attribute("http.route"), Some("/api/v1/agents/{id}/execute"));
    assert_eq!(http_span.attribute("http.response.status_code"), Some("200"));
    assert_eq!(http_span.attribute("url.path"), Some(format!("/api/v1/agents/{agent}/execute").as_str()));
    assert_eq!(http_span.status, "UNSET", "a 200 is not an error");
    for deprecated in ["http.method", "http.status_code"] {
        assert!(http_span.attribute(deprecated).is_none(), "{deprecated} is deprecated: {http_span:?}");
    }

    // The request to the agent is the messaging client span the agent's span hangs from.
    let request_span = receiver
        .wait_for("the gateway's request span", Duration::from_secs(20), |s| {
            s.service == "api-gateway"
                && s.trace_id == trace_id
                && s.kind == "CLIENT"
                && s.name.starts_with("request ")
        })
        .await;
    assert_eq!(request_span.name, format!("request {root}.{{agent_id}}.rpc"));
    assert_eq!(request_span.attribute("messaging.system"), Some("nats"));
    assert_eq!(request_span.attribute("messaging.operation.name"), Some("request"));
    assert_eq!(agent_span.parent_span_id, request_span.span_id);
    let reply_span = receiver
        .wait_for("the agent's reply span", Duration::from_secs(20), |s| {
            s.service == "agent-sim" && s.trace_id == trace_id && s.kind == "PRODUCER"
        })
        .await;
    assert_eq!(reply_span.attribute("messaging.operation.name"), Some("reply"));
    assert_eq!(reply_span.parent_span_id, agent_span.span_id);

    // Where the time went on the gateway's side: Postgres statements (the audit row) and
    // the Redis presence read, as database client spans without their values.
    let insert = receiver
        .wait_for("a postgres span in the execute's trace", Duration::from_secs(20), |s| {
            s.service == "api-gateway"
                && s.trace_id == trace_id
                && s.attribute("db.system.name") == Some("postgresql")
                && s.attribute("db.operation.name") == Some("INSERT")
        })
        .await;
    assert_eq!(insert.kind, "CLIENT");
    let text = insert.attribute("db.query.text").unwrap_or_default();
    assert!(text.contains('$') && !text.contains("tracer@example.com"), "{text}");
    let redis = receiver
        .wait_for("a redis span in the execute's trace", Duration::from_secs(20), |s| {
            s.service == "api-gateway"
                && s.trace_id == trace_id
                && s.attribute("db.system.name") == Some("redis")
        })
        .await;
    assert_eq!(redis.kind, "CLIENT");
    assert!(
        redis.attribute("db.operation.name").is_some_and(|op| op.chars().all(|c| c.is_ascii_uppercase()))
    );

    // The request's log line leads to its trace and carries the span's fields.
    let logged = gateway
        .output()
        .into_iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(&line).ok())
        .find(|line| line["message"] == "action executed")
        .expect("the execute's log line");
    assert_eq!(logged["trace_id"], trace_id, "{logged}");
    assert_eq!(logged["span_id"].as_str().map(str::len), Some(16), "{logged}");
    assert_eq!(logged["agent_id"], agent.as_str(), "{logged}");
    assert!(logged["request_id"].as_str().is_some_and(|id| id.len() == 36), "{logged}");

    sim.signal("TERM");
    gateway.signal("TERM");
    assert_eq!(sim.wait(Duration::from_secs(20)).await, Some(0));
    assert_eq!(gateway.wait(Duration::from_secs(20)).await, Some(0));
}
