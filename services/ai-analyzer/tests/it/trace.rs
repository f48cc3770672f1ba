//! The trace of an analyze request continues from the request's headers to the call
//! to the AI provider.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use test_support::Stack;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use wire_models::{AnalyzeRequest, PROTOCOL_VERSION};

use crate::helpers::*;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test]
async fn the_trace_goes_from_the_request_to_the_provider_call() {
    // The process-wide subscriber needs the OpenTelemetry layer, as in production; it
    // can only be installed once per process (nextest runs each test in its own).
    let tracer_provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let layer = tracing_opentelemetry::layer().with_tracer(tracer_provider.tracer("ai-analyzer-test"));
    if tracing_subscriber::registry().with(layer).try_init().is_err() {
        eprintln!("skipped: another test installed the global subscriber (run with cargo nextest)");
        return;
    }
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );

    let stack = Stack::start().await;
    let fake = provider(completion(&good_answer())).await;
    let agent = agent(&stack, "web-01").await;
    let id = incident(&stack, &agent, &NewIncident::new("service_down", "error", "nginx", "exited")).await;
    let (running, shutdown) = start(config(&stack, Some(&fake), &[])).await;

    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01").as_str());
    let request = AnalyzeRequest { v: PROTOCOL_VERSION, incident_id: id, force: false, requested_by: None };
    let client = stack.client().await;
    let reply = tokio::time::timeout(
        Duration::from_secs(20),
        client.request_with_headers(
            stack.topology.subjects.analyze(),
            headers,
            wire_models::encode(&request).unwrap().into(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let _: wire_models::AnalyzeReply = wire_models::decode(&reply.payload).unwrap();

    let requests = calls(&fake).await;
    let traceparent = requests[0].headers.get("traceparent").expect("traceparent sent to the provider");
    let traceparent = traceparent.to_str().unwrap();
    assert!(traceparent.starts_with(&format!("00-{TRACE_ID}-")), "{traceparent}");
    assert!(!traceparent.contains("00f067aa0ba902b7"), "the provider call is a child span: {traceparent}");
    stop(running, shutdown).await;
}
