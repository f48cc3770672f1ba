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
        .json(&json!({"command": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let agent_span = receiver
        .wait_for("the agent's rpc span", Duration::from_secs(20), |s| {
            s.service == "agent-sim" && s.trace_id == trace_id
        })
        .await;
    let http_span = receiver
        .wait_for("the gateway's http span", Duration::from_secs(20), |s| {
            s.service == "api-gateway" && s.trace_id == trace_id && s.name.contains("/execute")
        })
        .await;
    // The caller's context is honoured: the gateway's request span is its child.
    assert_eq!(http_span.parent_span_id, caller_span);
    let gateway_spans: Vec<String> = receiver
        .spans()
        .into_iter()
        .filter(|s| s.service == "api-gateway" && s.trace_id == trace_id)
        .map(|s| s.span_id)
        .collect();
    assert!(
        gateway_spans.contains(&agent_span.parent_span_id),
        "agent span {agent_span:?} is not a child of a gateway span"
    );

    sim.signal("TERM");
    gateway.signal("TERM");
    assert_eq!(sim.wait(Duration::from_secs(20)).await, Some(0));
    assert_eq!(gateway.wait(Duration::from_secs(20)).await, Some(0));
}
