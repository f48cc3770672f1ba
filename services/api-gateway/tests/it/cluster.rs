//! The backend on a three-node NATS cluster, every stream and the bucket replicated on
//! all three. Each node in turn is killed (SIGKILL) and later restarted; while it is
//! down every service's connection has moved to another node: an agent's event still
//! becomes an incident that the analyzer takes up, its heartbeats still reach the
//! tracker (which never takes the agent for offline meanwhile), and an execute from the
//! gateway still reaches it.

use std::time::Duration;

use serde_json::json;
use wire_models::{EventKind, Severity};

use crate::helpers::*;

const HEARTBEAT: Duration = Duration::from_secs(1);
/// Failover, a new stream leader and the consumers' next pulls fit in this.
const RESUMED: Duration = Duration::from_secs(45);

#[tokio::test]
async fn every_service_fails_over_when_any_node_is_lost() {
    let stack = test_support::Stack::start_cluster(3).await;
    let mut api = start_on(stack, &[]).await;
    let services = Services::start(&api).await;
    let mut agents = enroll_agents(&api, 1).await;
    agents[0].start(HEARTBEAT);
    let agent = agents[0].id().clone();
    wait_online(&api, agent.as_str()).await;

    for node in 0..3 {
        api.stack.node(node).kill().await;
        let lost = chrono::Utc::now();
        let clock = std::time::Instant::now();

        // Ingest (events stream, ingestor's consumer) and analysis (incidents stream,
        // analyzer's consumer): a critical event becomes an analysed incident.
        let event = agents[0].sim().event(
            EventKind::parse("service_down").unwrap(),
            Severity::Critical,
            &format!("unit-{node}"),
            "nginx.service: Main process exited, code=killed, status=9/KILL",
        );
        test_support::eventually(RESUMED, "the event acknowledged by the cluster", || {
            let bus = &agents[0].bus;
            let event = &event;
            async move { bus.publish_event(event).await.ok() }
        })
        .await;
        let pool = api.stack.db.pool.clone();
        test_support::eventually(RESUMED, &format!("node {node} lost: the incident analysed"), || {
            let pool = pool.clone();
            async move {
                let status: Option<String> =
                    sqlx::query_scalar("SELECT analysis_status FROM incidents WHERE event_id = $1")
                        .bind(event.event_id)
                        .fetch_optional(&pool)
                        .await
                        .unwrap();
                (status.as_deref() == Some("ok")).then_some(())
            }
        })
        .await;

        // Presence (the bucket's watch in the tracker): heartbeats after the loss arrive.
        test_support::eventually(RESUMED, &format!("node {node} lost: heartbeats seen"), || {
            let (pool, agent) = (pool.clone(), agent.clone());
            async move {
                let seen: Option<chrono::DateTime<chrono::Utc>> =
                    sqlx::query_scalar("SELECT last_seen_at FROM agents WHERE id = $1")
                        .bind(agent.as_str())
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                seen.is_some_and(|seen| seen > lost).then_some(())
            }
        })
        .await;

        // Request-reply from the gateway to the agent.
        test_support::eventually(RESUMED, &format!("node {node} lost: an execute answered"), || {
            let api = &api;
            let agent = &agent;
            async move {
                let (status, body) = api
                    .post(
                        &format!("/api/v1/agents/{agent}/execute"),
                        &api.operator,
                        json!({"command": "ping"}),
                    )
                    .await;
                (status == reqwest::StatusCode::OK && body["status"] == "ok").then_some(())
            }
        })
        .await;

        eprintln!("node {node} lost: everything resumed within {:?}", clock.elapsed());

        api.stack.node(node).restart().await;
        api.stack.wait_for_jetstream().await;
        api.stack.wait_replicas_current().await;
    }

    // It heartbeat throughout: losing a node must not have made it flicker offline (the
    // tracker waits while the bucket has no leader and nobody can put heartbeats).
    let transitions: Vec<String> =
        sqlx::query_scalar("SELECT state FROM presence_transitions WHERE agent_id = $1 ORDER BY id")
            .bind(agent.as_str())
            .fetch_all(&api.stack.db.pool)
            .await
            .unwrap();
    assert_eq!(transitions, ["online"], "a node's loss flickered the agent offline");

    agents[0].stop().await;
    services.stop().await;
    api.stop().await;
}

async fn wait_online(api: &Api, agent: &str) {
    test_support::eventually(RESUMED, "the agent online", || async move {
        let (_, body) = api.get(&format!("/api/v1/agents/{agent}"), &api.viewer).await;
        (body["presence"]["state"] == "online").then_some(())
    })
    .await;
}
