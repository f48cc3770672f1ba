use std::path::Path;
use std::time::Duration;

use agent_sim::Fleet;
use async_nats::HeaderMap;
use test_support::otlp::OtlpReceiver;
use test_support::process::ServiceProcess;
use wire_models::{EventKind, HEADER_MSG_ID, HEADER_TRACEPARENT, Severity};

use crate::helpers::*;

/// An agent that sends `traceparent` on an event sees the ingestion in its trace.
#[tokio::test]
async fn an_event_with_a_traceparent_is_ingested_in_that_trace() {
    let (stack, bus) = setup().await;
    let receiver = OtlpReceiver::start().await;
    let fleet = Fleet::numbered("traced", 1);
    enroll(&stack, &fleet).await;

    let mut env = stack.env_for(&natsbus::auth::Identity::EventIngestor);
    env.push(("ADMIN_ADDR", "127.0.0.1:0".into()));
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.clone()));
    env.push(("OTEL_BSP_SCHEDULE_DELAY", "200".into()));
    let mut ingestor = ServiceProcess::spawn(Path::new(env!("CARGO_BIN_EXE_event-ingestor")), &env, &[]);
    ingestor.wait_for_line("event-ingestor ready", Duration::from_secs(30)).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let agent_span = "00f067aa0ba902b7";
    let event = fleet.agents()[0].event(
        EventKind::parse("oom").unwrap(),
        Severity::Critical,
        "kernel",
        "Out of memory",
    );
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_MSG_ID, event.event_id.to_string());
    headers.insert(HEADER_TRACEPARENT, format!("00-{trace_id}-{agent_span}-01"));
    bus.js
        .publish_with_headers(
            stack.topology.subjects.event(&event.agent_id, &event.kind),
            headers,
            wire_models::encode(&event).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    let span = receiver
        .wait_for("the ingestor's process span in the agent's trace", Duration::from_secs(20), |s| {
            s.service == "event-ingestor" && s.trace_id == trace_id && s.kind == "CONSUMER"
        })
        .await;
    assert_eq!(span.parent_span_id, agent_span, "{span:?}");
    let root = stack.topology.subjects.root().as_str();
    assert_eq!(span.name, format!("process {root}.{{agent_id}}.events.{{kind}}"));
    assert_eq!(span.attribute("messaging.system"), Some("nats"));
    assert_eq!(span.attribute("messaging.operation.type"), Some("process"));
    let subject = stack.topology.subjects.event(&event.agent_id, &event.kind);
    assert_eq!(span.attribute("messaging.destination.name"), Some(subject.as_str()));
    assert_eq!(span.attribute("messaging.message.id"), Some(event.event_id.to_string().as_str()));

    // The batch that wrote it, and the statements that did, are in the same trace.
    let batch = receiver
        .wait_for("the batch span", Duration::from_secs(20), |s| {
            s.service == "event-ingestor" && s.trace_id == trace_id && s.name == "ingest.batch"
        })
        .await;
    assert_eq!(batch.parent_span_id, span.span_id);
    let insert = receiver
        .wait_for("the statement writing the incident", Duration::from_secs(20), |s| {
            s.trace_id == trace_id
                && s.attribute("db.system.name") == Some("postgresql")
                && s.attribute("db.query.text").is_some_and(|q| q.contains("INSERT INTO incidents"))
        })
        .await;
    assert_eq!(insert.kind, "CLIENT");
    assert_eq!(insert.parent_span_id, batch.span_id);
    assert!(insert.attribute("db.query.text").is_some_and(|q| !q.contains("Out of memory")), "{insert:?}");
    // And so is the notification the ingestor publishes for the new incident.
    let publish = receiver
        .wait_for("the incident notification", Duration::from_secs(20), |s| {
            s.service == "event-ingestor" && s.trace_id == trace_id && s.kind == "PRODUCER"
        })
        .await;
    assert_eq!(publish.name, format!("publish {}", stack.topology.subjects.incident_created()));
    assert_eq!(publish.attribute("messaging.operation.type"), Some("send"));
    ingestor.signal("TERM");
    assert_eq!(ingestor.wait(Duration::from_secs(20)).await, Some(0));
}
