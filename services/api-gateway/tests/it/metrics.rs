//! `/metrics` after real traffic: the gateway and the three other services in-process,
//! an agent enrolled through the API heartbeating and sending a critical event that is
//! ingested, opens an incident and is analyzed. Every family then served, whichever
//! service recorded it, has HELP and TYPE, so a metric recorded without a description
//! fails here. In-process the four share one recorder; each binary's own `/metrics` is
//! checked by the lifecycle tests.

use std::time::Duration;

use reqwest::StatusCode;
use wire_models::{EventKind, Severity};

use crate::helpers::*;

/// Recorded by the flow below, at least one per service.
const EXPECTED: &[&str] = &[
    // api-gateway
    "opspilot_http_requests_total",
    "opspilot_http_request_seconds",
    "opspilot_logins_total",
    "opspilot_enrollments_total",
    // event-ingestor
    "opspilot_events_ingested_total",
    "opspilot_incidents_created_total",
    "opspilot_ingest_batch_seconds",
    "opspilot_consumer_pending",
    // presence-tracker
    "opspilot_presence_heartbeats_total",
    "opspilot_presence_transitions_total",
    // ai-analyzer
    "opspilot_analyses_total",
    "opspilot_ai_calls_total",
];

#[tokio::test]
async fn every_service_serves_described_metrics_after_real_traffic() {
    let api = start(&[]).await;
    let services = Services::start(&api).await;
    let mut agents = enroll_agents(&api, 1).await;
    agents[0].start(Duration::from_secs(1));
    let event = agents[0].sim().event(
        EventKind::parse("service_down").unwrap(),
        Severity::Critical,
        "nginx",
        "nginx.service: Main process exited, code=killed, status=9/KILL",
    );
    assert!(!agents[0].bus.publish_event(&event).await.unwrap(), "a new event");
    test_support::eventually(Duration::from_secs(20), "the event's incident analyzed", || {
        let (api, event_id) = (&api, event.event_id);
        async move {
            let id: i64 = sqlx::query_scalar("SELECT id FROM incidents WHERE event_id = $1")
                .bind(event_id)
                .fetch_optional(&api.stack.db.pool)
                .await
                .ok()??;
            let (status, incident) = api.get(&format!("/api/v1/incidents/{id}"), &api.viewer).await;
            (status == StatusCode::OK && incident["status"] == "analyzed").then_some(())
        }
    })
    .await;
    let admin = api.admin_base();
    test_support::eventually(Duration::from_secs(10), "every expected family served", || {
        let admin = admin.clone();
        async move {
            let text = test_support::metrics::scrape(&admin).await;
            let exposition = test_support::metrics::assert_exposition(&text);
            EXPECTED.iter().all(|name| exposition.family(name).is_some()).then_some(())
        }
    })
    .await;

    let bases = [
        admin,
        format!("http://{}", services.ingestor.admin_addr),
        format!("http://{}", services.tracker.admin_addr),
        format!("http://{}", services.analyzer.admin_addr),
    ];
    for base in &bases {
        let text = test_support::metrics::scrape(base).await;
        let exposition = test_support::metrics::assert_service_metrics(&text);
        for name in EXPECTED {
            let family = exposition.family(name).unwrap_or_else(|| panic!("{base}: no {name}"));
            assert!(!family.help.is_empty(), "{base}: {name}");
        }
    }

    agents[0].stop().await;
    services.stop().await;
    api.stop().await;
}
