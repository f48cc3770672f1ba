//! Automatic analysis of new critical incidents from the incident-created messages.

use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use test_support::{Stack, eventually};
use wire_models::{AgentId, EventKind, IncidentCreated, PROTOCOL_VERSION, Severity};

use crate::helpers::*;

async fn announce(stack: &Stack, agent: &AgentId, incident_id: i64, critical: bool) {
    let js = stack.jetstream().await;
    let msg = IncidentCreated {
        v: PROTOCOL_VERSION,
        incident_id,
        agent_id: agent.clone(),
        kind: EventKind::parse("service_down").unwrap(),
        severity: if critical { Severity::Critical } else { Severity::Error },
        is_critical: critical,
        fingerprint: "f".repeat(64),
        created_at: chrono::Utc::now(),
    };
    natsbus::js_publish(
        &js,
        stack.topology.subjects.incident_created(),
        &msg,
        Some(&format!("incident-{incident_id}")),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_new_critical_incident_is_analyzed_automatically_and_others_are_skipped() {
    let stack = Stack::start().await;
    let fake = provider(completion(&good_answer())).await;
    let agent = agent(&stack, "web-01").await;
    let critical =
        incident(&stack, &agent, &NewIncident::new("service_down", "critical", "nginx", "nginx exited"))
            .await;
    let minor =
        incident(&stack, &agent, &NewIncident::new("high_cpu", "warning", "node_exporter", "cpu 91%")).await;
    let (running, shutdown) = start(config(&stack, Some(&fake), &["--auto-analyze", "true"])).await;

    announce(&stack, &agent, critical, true).await;
    announce(&stack, &agent, minor, false).await;
    let analyzed = eventually(Duration::from_secs(15), "the critical incident to be analyzed", || async {
        let row = row(&stack, critical).await;
        (row.analysis_status == "ok").then_some(row)
    })
    .await;
    assert_eq!(analyzed.status, "analyzed");
    assert_eq!(analyzed.analyzer.as_deref(), Some("openrouter"));
    assert!(analyzed.suggested_action.is_some());

    // Both messages acknowledged; the non-critical incident was left alone.
    let js = stack.jetstream().await;
    eventually(Duration::from_secs(15), "the auto-analysis consumer to drain", || {
        let js = js.clone();
        let stream = stack.topology.incidents_stream.clone();
        async move {
            let stream = js.get_stream(&stream).await.ok()?;
            let mut consumer = stream.get_consumer::<pull::Config>("ai-analyzer").await.ok()?;
            let info = consumer.info().await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        }
    })
    .await;
    assert_eq!(row(&stack, minor).await.analysis_status, "none");
    assert_eq!(calls(&fake).await.len(), 1);
    stop(running, shutdown).await;
}

#[tokio::test]
async fn auto_analysis_can_be_switched_off() {
    let stack = Stack::start().await;
    let agent = agent(&stack, "web-01").await;
    let id = incident(&stack, &agent, &NewIncident::new("service_down", "critical", "nginx", "nginx exited"))
        .await;
    let (running, shutdown) = start(config(&stack, None, &["--auto-analyze", "false"])).await;
    announce(&stack, &agent, id, true).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(row(&stack, id).await.analysis_status, "none");
    let js = stack.jetstream().await;
    let stream = js.get_stream(&stack.topology.incidents_stream).await.unwrap();
    assert!(stream.get_consumer::<pull::Config>("ai-analyzer").await.is_err(), "no consumer when off");
    stop(running, shutdown).await;
}
