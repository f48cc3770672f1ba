use std::time::{Duration, Instant};

use agent_sim::RpcBehaviour;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn execute_on_an_online_agent_returns_its_reply_and_is_audited() {
    let api = start(&[]).await;
    let fleet = api.online_fleet("exec", 2).await;
    let stop = api.serve_rpc(&fleet, RpcBehaviour::default()).await;
    let id = fleet.agents()[0].id.to_string();

    // The original backend's body, agent id included.
    let (status, reply) = api
        .post(
            &format!("/api/v1/agents/{id}/execute"),
            &api.operator,
            json!({"agent_id": id, "command": "restart_service", "params": {"service": "nginx"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["status"], "ok");
    assert_eq!(reply["output"], "restarted nginx");
    assert_eq!(reply["agent_id"], id);
    // Without the body agent id, too.
    let (status, reply) =
        api.post(&format!("/api/v1/agents/{id}/execute"), &api.operator, json!({"command": "ping"})).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["output"], "pong");

    // Refused before anything is sent: a command outside the allow-list, bad params,
    // a body agent id that differs from the path.
    for (body, slug) in [
        (json!({"command": "shell", "params": {"cmd": "reboot"}}), "invalid-command"),
        (json!({"command": "restart_service", "params": {"service": "nginx; rm -rf /"}}), "invalid-command"),
        (json!({"command": "restart_service", "params": {}}), "invalid-command"),
        (json!({"command": "tail_log", "params": {"path": "/etc/shadow"}}), "invalid-command"),
        (json!({"agent_id": fleet.agents()[1].id, "command": "ping"}), "agent-mismatch"),
    ] {
        let (status, problem) =
            api.post(&format!("/api/v1/agents/{id}/execute"), &api.operator, body.clone()).await;
        assert_problem(status, &problem, StatusCode::BAD_REQUEST, slug);
    }
    let (status, _) =
        api.post(&format!("/api/v1/agents/{id}/execute"), &api.viewer, json!({"command": "ping"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Only the two that went out are in the audit log, with who did it.
    assert_eq!(
        api.audit_outcomes(&id).await,
        vec![("execute".to_owned(), "ok".to_owned()), ("execute".to_owned(), "ok".to_owned())]
    );
    let (status, audit) = api.get(&format!("/api/v1/audit?agent_id={id}"), &api.admin).await;
    assert_eq!(status, StatusCode::OK);
    let entry = &audit["items"][1];
    assert_eq!(entry["actor"], "operator@example.com");
    assert_eq!(entry["command"], "restart_service");
    assert_eq!(entry["params"], json!({"service": "nginx"}));
    assert_eq!(entry["result"]["output"], "restarted nginx");
    assert!(entry["duration_ms"].is_i64());
    stop.cancel();
    api.stop().await;
}

#[tokio::test]
async fn offline_unknown_silent_and_broken_agents() {
    let api = start(&[]).await;
    let fleet = api.online_fleet("faults", 3).await;
    let [offline, unresponsive, unsubscribed] = [0, 1, 2].map(|i| fleet.agents()[i].id.to_string());
    sqlx::query("UPDATE agents SET status = 'offline' WHERE id = $1")
        .bind(&offline)
        .execute(&api.stack.db.pool)
        .await
        .unwrap();
    let ping = json!({"command": "ping"});

    // Offline in presence: 404 without sending, and the refusal is in the audit log.
    let (status, body) =
        api.post(&format!("/api/v1/agents/{offline}/execute"), &api.operator, ping.clone()).await;
    assert_problem(status, &body, StatusCode::NOT_FOUND, "agent-offline");
    assert_eq!(api.audit_outcomes(&offline).await, vec![("execute".to_owned(), "offline".to_owned())]);
    // Unknown: 404.
    let (status, body) = api.post("/api/v1/agents/0123456789ab/execute", &api.operator, ping.clone()).await;
    assert_problem(status, &body, StatusCode::NOT_FOUND, "not-found");
    // Online by presence but nobody listening: the bus says so at once, 404.
    let (status, body) =
        api.post(&format!("/api/v1/agents/{unsubscribed}/execute"), &api.operator, ping.clone()).await;
    assert_problem(status, &body, StatusCode::NOT_FOUND, "agent-offline");
    assert_eq!(api.audit_outcomes(&unsubscribed).await, vec![("execute".to_owned(), "offline".to_owned())]);

    // Listening but never answering: 504 within the timeout (1 s in these tests).
    let silent = std::sync::Arc::new(agent_sim::Fleet::from_agents(vec![agent_sim::SimAgent::new(
        wire_models::AgentId::parse(&unresponsive).unwrap(),
        "silent".into(),
    )]));
    let stop =
        api.serve_rpc(&silent, RpcBehaviour { delay: Duration::from_secs(30), ..Default::default() }).await;
    let started = Instant::now();
    let (status, body) =
        api.post(&format!("/api/v1/agents/{unresponsive}/execute"), &api.operator, ping.clone()).await;
    assert_problem(status, &body, StatusCode::GATEWAY_TIMEOUT, "timeout");
    assert!(started.elapsed() < Duration::from_secs(3), "504 must come within the timeout");
    assert_eq!(api.audit_outcomes(&unresponsive).await, vec![("execute".to_owned(), "timeout".to_owned())]);
    stop.cancel();

    // An agent answering garbage: 502.
    let client = api.stack.client().await;
    let mut sub = client
        .subscribe(api.stack.topology.subjects.rpc(&wire_models::AgentId::parse(&unsubscribed).unwrap()))
        .await
        .unwrap();
    test_support::nats_round_trip(&client).await;
    tokio::spawn(async move {
        use futures::StreamExt;
        if let Some(msg) = sub.next().await {
            let _ = client.publish(msg.reply.unwrap(), "{\"not\": \"a reply\"}".into()).await;
            let _ = client.flush().await;
        }
    });
    let (status, body) =
        api.post(&format!("/api/v1/agents/{unsubscribed}/execute"), &api.operator, ping).await;
    assert_problem(status, &body, StatusCode::BAD_GATEWAY, "bad-gateway");
    assert_eq!(
        api.audit_outcomes(&unsubscribed).await,
        vec![
            ("execute".to_owned(), "offline".to_owned()),
            ("execute".to_owned(), "invalid_reply".to_owned())
        ]
    );
    api.stop().await;
}

#[tokio::test]
async fn concurrent_executes_share_audit_commits_and_each_is_recorded() {
    let api = start(&[]).await;
    let fleet = api.online_fleet("exec-many", 8).await;
    let stop = api.serve_rpc(&fleet, RpcBehaviour::default()).await;
    let calls = (0..48).map(|i| {
        let id = fleet.agents()[i % 8].id.to_string();
        let api = &api;
        async move {
            api.post(&format!("/api/v1/agents/{id}/execute"), &api.operator, json!({"command": "ping"})).await
        }
    });
    let answers = futures::future::join_all(calls).await;
    let mut requests = Vec::new();
    for (status, reply) in answers {
        assert_eq!(status, StatusCode::OK, "{reply}");
        requests.push(reply["request_id"].as_str().unwrap().to_owned());
    }
    // One audit row per request, written before it was sent and completed after.
    api.settle_audit().await;
    let rows: Vec<(String, String, String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT request_id::text, actor, outcome, started_at FROM audit_log WHERE request_id::text = ANY($1)",
    )
    .bind(&requests)
    .fetch_all(&api.stack.db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 48);
    assert!(rows.iter().all(|(_, actor, outcome, _)| actor == "operator@example.com" && outcome == "ok"));
    // Rows written by one statement share its transaction's time: requests that came
    // together were committed together, not each on its own.
    let commits: std::collections::HashSet<_> = rows.iter().map(|(_, _, _, at)| *at).collect();
    assert!(commits.len() < 48, "every row had a commit of its own");
    stop.cancel();
    api.stop().await;
}

/// The execute path keeps an agent's live presence after reading it, and forgets it the
/// moment the change feed says the presence changed: well before the cache's time to
/// live (2 s), an agent the tracker took offline is refused.
#[tokio::test]
async fn a_presence_change_on_the_feed_reaches_the_next_execute_at_once() {
    let api = start(&[]).await;
    let fleet = api.online_fleet("presence-cache", 1).await;
    let stop = api.serve_rpc(&fleet, RpcBehaviour::default()).await;
    let agent = fleet.agents()[0].id.clone();
    let path = format!("/api/v1/agents/{agent}/execute");
    let ping = json!({"command": "ping"});

    // Redis, where the tracker keeps presence, says online: the execute goes out.
    let redis = api.stack.redis_config();
    let pool = storage::redis::connect(&redis).await.unwrap();
    let store = presence::PresenceStore::new(pool, presence::Keys::for_config(&redis));
    let mark = |state: wire_models::PresenceState| {
        let (store, agent) = (store.clone(), agent.clone());
        async move {
            let now = chrono::Utc::now().timestamp_millis();
            let change = presence::StateChange {
                agent_id: agent,
                since_ms: now,
                last_seen_ms: now,
                threshold_ms: 90_000,
            };
            store.mark(state, &[change], now).await.unwrap();
        }
    };
    mark(wire_models::PresenceState::Online).await;
    // The replica follows the feed once its hub reads it; until then nothing is kept.
    test_support::eventually(Duration::from_secs(10), "the presence read kept", || {
        let api = &api;
        let (path, ping, mark) = (path.clone(), ping.clone(), mark);
        async move {
            let (status, body) = api.post(&path, &api.operator, ping.clone()).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            // Offline in Redis without a word on the feed: a kept read still answers.
            mark(wire_models::PresenceState::Offline).await;
            let (status, _) = api.post(&path, &api.operator, ping).await;
            mark(wire_models::PresenceState::Online).await;
            (status == StatusCode::OK).then_some(())
        }
    })
    .await;

    // The tracker's announcement of the same change: the next execute reads Redis again.
    mark(wire_models::PresenceState::Offline).await;
    let now = chrono::Utc::now();
    let changed = wire_models::PresenceChanged {
        v: wire_models::PROTOCOL_VERSION,
        agent_id: agent.clone(),
        state: wire_models::PresenceState::Offline,
        changed_at: now,
        last_seen_at: Some(now),
        threshold_secs: 90,
        reason: "timeout".into(),
    };
    let client = api.stack.client().await;
    let announced = Instant::now();
    natsbus::publish(&client, api.stack.topology.subjects.presence_changed(&agent), &changed).await.unwrap();
    client.flush().await.unwrap();
    loop {
        let (status, body) = api.post(&path, &api.operator, ping.clone()).await;
        if status == StatusCode::NOT_FOUND {
            assert_problem(status, &body, StatusCode::NOT_FOUND, "agent-offline");
            break;
        }
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            announced.elapsed() < Duration::from_millis(1500),
            "the feed's change did not reach the cache; only its time to live would have"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    api.stop().await;
}
