//! Fleet-wide actions against simulated agents: one outcome per agent whatever each
//! does, dry runs, confirmation, cancellation, a replica that dies mid-run, the audit
//! log and the live stream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use agent_sim::{Fleet, RpcBehaviour};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;
use crate::stream::Sse;

/// Gives every agent of `fleet` the label `batch={batch}` (as its inventory would).
async fn label(api: &Api, fleet: &Fleet, batch: &str) {
    let ids: Vec<String> = fleet.agents().iter().map(|a| a.id.to_string()).collect();
    sqlx::query("UPDATE agents SET meta_labels = jsonb_build_object('batch', $2::text) WHERE id = ANY($1)")
        .bind(&ids)
        .bind(batch)
        .execute(&api.stack.db.pool)
        .await
        .unwrap();
}

fn ids(fleet: &Fleet) -> Vec<String> {
    fleet.agents().iter().map(|a| a.id.to_string()).collect()
}

/// Waits until the action is no longer running; its final view.
async fn settled(api: &Api, id: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..300 {
        let (status, body) = api.get(&format!("/api/v1/actions/{id}"), &api.viewer).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["state"] != "running" {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the action is still running after 30 s: {last}");
}

/// Every per-agent result of an action: agent id -> (outcome, reply).
async fn results(api: &Api, id: &str) -> BTreeMap<String, (String, Value)> {
    let mut out = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/api/v1/actions/{id}/results?limit=37&after={a}"),
            None => format!("/api/v1/actions/{id}/results?limit=37"),
        };
        let (status, page) = api.get(&path, &api.viewer).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for item in page["items"].as_array().unwrap() {
            let agent = item["agent_id"].as_str().unwrap().to_owned();
            let previous =
                out.insert(agent, (item["outcome"].as_str().unwrap().to_owned(), item["reply"].clone()));
            assert!(previous.is_none(), "an agent listed twice");
        }
        match page["next_cursor"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return out,
        }
    }
}

struct Groups {
    ok: Arc<Fleet>,
    failing: Arc<Fleet>,
    silent: Arc<Fleet>,
    late: Arc<Fleet>,
    unserved: Arc<Fleet>,
    offline: Arc<Fleet>,
    stops: Vec<CancellationToken>,
}

/// 200 agents labelled `batch={batch}`: 120 answer, 30 answer errors, 20 never answer,
/// 15 answer after 400 ms, 5 are online but not listening and 10 are offline.
async fn two_hundred(api: &Api, batch: &str) -> Groups {
    let ok = api.online_fleet(&format!("{batch}-ok"), 120).await;
    let failing = api.online_fleet(&format!("{batch}-err"), 30).await;
    let silent = api.online_fleet(&format!("{batch}-silent"), 20).await;
    let late = api.online_fleet(&format!("{batch}-late"), 15).await;
    let unserved = api.online_fleet(&format!("{batch}-unserved"), 5).await;
    let offline = api.online_fleet(&format!("{batch}-offline"), 10).await;
    sqlx::query("UPDATE agents SET status = 'offline' WHERE id = ANY($1)")
        .bind(ids(&offline))
        .execute(&api.stack.db.pool)
        .await
        .unwrap();
    let mut stops = Vec::new();
    for (fleet, behaviour) in [
        (&ok, RpcBehaviour::default()),
        (&failing, RpcBehaviour { failure_rate: 1.0, ..RpcBehaviour::default() }),
        (&silent, RpcBehaviour { silent: true, ..RpcBehaviour::default() }),
        (&late, RpcBehaviour { delay: Duration::from_millis(400), ..RpcBehaviour::default() }),
    ] {
        stops.push(api.serve_rpc(fleet, behaviour).await);
    }
    for fleet in [&ok, &failing, &silent, &late, &unserved, &offline] {
        label(api, fleet, batch).await;
    }
    Groups { ok, failing, silent, late, unserved, offline, stops }
}

#[tokio::test]
async fn a_fleet_action_records_one_outcome_per_agent_as_each_answered() {
    let api = start(&[]).await;
    let groups = two_hundred(&api, "fa").await;
    let mut sse = Sse::open(&api, "types=fleet_action", &api.viewer, None).await;
    // Counted from here: the responders' readiness probes got answers too.
    let answering = [&groups.ok, &groups.failing, &groups.late];
    let answered = || answering.iter().map(|f| f.stats.rpc_answered.load(Ordering::Relaxed)).sum::<u64>();
    let before = answered();
    let request = json!({
        "command": "restart_service", "params": {"service": "nginx"},
        "target": {"selector": "batch=fa"}, "max_concurrency": 50, "timeout_ms": 1500,
    });

    // A dry run resolves and sends nothing.
    let mut dry = request.clone();
    dry["dry_run"] = json!(true);
    let (status, body) = api.post("/api/v1/actions", &api.operator, dry).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["total"].as_u64(), body["online"].as_u64()), (Some(200), Some(190)));
    assert_eq!(body["confirm_required"], true);
    assert_eq!(body["agents"].as_array().unwrap().len(), 200);
    // A restart to 200 agents must repeat their number.
    let (status, body) = api.post("/api/v1/actions", &api.operator, request.clone()).await;
    assert_problem(status, &body, StatusCode::CONFLICT, "confirmation-required");
    let mut wrong = request.clone();
    wrong["confirm"] = json!(199);
    let (status, body) = api.post("/api/v1/actions", &api.operator, wrong).await;
    assert_problem(status, &body, StatusCode::CONFLICT, "confirmation-required");
    assert_eq!(answered(), before, "neither the dry run nor a refused action sent anything");
    let (status, body) = api.post("/api/v1/actions", &api.viewer, request.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let mut confirmed = request.clone();
    confirmed["confirm"] = json!(200);
    let (status, accepted) = api.post("/api/v1/actions", &api.operator, confirmed).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let id = accepted["action_id"].as_str().unwrap().to_owned();
    let action = settled(&api, &id).await;
    assert_eq!(action["state"], "finished", "{action}");
    assert_eq!(
        action["counts"],
        json!({"ok": 135, "error": 30, "timeout": 20, "skipped": 15, "cancelled": 0, "pending": 0}),
    );
    assert_eq!(action["target"], json!({"selector": "batch=fa"}));

    let all = results(&api, &id).await;
    assert_eq!(all.len(), 200);
    let expect = |fleet: &Fleet, outcome: &str| {
        for agent in ids(fleet) {
            assert_eq!(all[&agent].0, outcome, "{agent}: {:?}", all[&agent]);
        }
    };
    expect(&groups.ok, "ok");
    expect(&groups.late, "ok");
    expect(&groups.failing, "error");
    expect(&groups.silent, "timeout");
    expect(&groups.unserved, "skipped");
    expect(&groups.offline, "skipped");
    let reply = &all[&ids(&groups.ok)[0]].1;
    assert_eq!(reply["status"], "ok", "the agent's reply is kept: {reply}");
    // What the agents received: each that answered, once.
    assert_eq!(answered() - before, 165);

    // The audit log: one row per agent, under the action's id, with its outcome.
    let audit: Vec<(String, String)> = sqlx::query_as(
        "SELECT agent_id, outcome FROM audit_log WHERE action_id = $1::uuid ORDER BY agent_id",
    )
    .bind(&id)
    .fetch_all(&api.stack.db.pool)
    .await
    .unwrap();
    assert_eq!(audit.len(), 200);
    for (agent, outcome) in &audit {
        assert_eq!(outcome, &all[agent].0, "{agent}");
    }

    // The stream told the story: progress, then the end with the same counts.
    let mut last = Value::Null;
    while let Some(event) = sse.next(Duration::from_secs(5)).await {
        assert_eq!(event.event, "fleet_action");
        assert_eq!(event.data["action_id"], id.as_str());
        last = event.data.clone();
        if last["state"] != "running" {
            break;
        }
    }
    assert_eq!(last["state"], "finished", "{last}");
    assert_eq!(
        (last["total"].as_u64(), last["done"].as_u64(), last["ok"].as_u64()),
        (Some(200), Some(200), Some(135))
    );

    let (status, list) = api.get("/api/v1/actions", &api.viewer).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["items"][0]["id"], id.as_str());
    for stop in groups.stops {
        stop.cancel();
    }
    api.stop().await;
}

#[tokio::test]
async fn cancel_stops_sending_and_the_rest_is_recorded_cancelled() {
    let api = start(&[]).await;
    let fleet = api.online_fleet("fa-cancel", 60).await;
    let stop =
        api.serve_rpc(&fleet, RpcBehaviour { delay: Duration::from_millis(300), ..Default::default() }).await;
    // Counted from here: the responders' readiness probe got an answer too.
    let before = fleet.stats.rpc_answered.load(Ordering::Relaxed);
    let request = json!({
        "command": "ping", "target": {"agent_ids": ids(&fleet)}, "max_concurrency": 2, "timeout_ms": 2000,
    });
    let (status, accepted) = api.post("/api/v1/actions", &api.operator, request).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let id = accepted["action_id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (status, body) = api.post(&format!("/api/v1/actions/{id}/cancel"), &api.operator, json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["cancelled_by"], "operator@example.com");
    let action = settled(&api, &id).await;
    assert_eq!(action["state"], "cancelled", "{action}");
    let counts = &action["counts"];
    let (ok, cancelled) = (counts["ok"].as_i64().unwrap(), counts["cancelled"].as_i64().unwrap());
    assert_eq!(ok + cancelled, 60, "{counts}");
    assert!(cancelled > 30, "sending stopped soon after the cancel: {counts}");
    // What the agents received is what is recorded ok: nothing was sent after the end.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fleet.stats.rpc_answered.load(Ordering::Relaxed) - before, ok as u64);
    let (status, body) = api.post(&format!("/api/v1/actions/{id}/cancel"), &api.operator, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    stop.cancel();
    api.stop().await;
}

#[tokio::test]
async fn a_replica_killed_mid_run_leaves_the_action_unfinished_with_what_it_recorded() {
    let api = start(&[]).await;
    let fleet = api.online_fleet("fa-kill", 80).await;
    let stop =
        api.serve_rpc(&fleet, RpcBehaviour { delay: Duration::from_millis(250), ..Default::default() }).await;
    // Another gateway, as its own process, that can be killed outright.
    let port = test_support::free_port();
    let mut env = api.stack.env_for(&natsbus::auth::Identity::ApiGateway);
    env.extend([("JWT_SECRET", SECRET.to_owned()), ("HTTP_ADDR", format!("127.0.0.1:{port}"))]);
    let mut doomed =
        test_support::process::ServiceProcess::spawn(&test_support::otlp::binary("api-gateway"), &env, &[]);
    doomed.wait_for_line("api-gateway ready", Duration::from_secs(30)).await;
    let base = format!("http://127.0.0.1:{port}");
    let token = login_at(&base, "operator@example.com").await;
    let answer = api
        .http
        .post(format!("{base}/api/v1/actions"))
        .bearer_auth(&token)
        .json(&json!({"command": "ping", "target": {"hostname_prefix": "fa-kill"}, "max_concurrency": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::ACCEPTED);
    let id = answer.json::<Value>().await.unwrap()["action_id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    doomed.signal("KILL");

    // The surviving replica's sweep notices the silence.
    let action = settled(&api, &id).await;
    assert_eq!(action["state"], "unfinished", "{action}");
    let counts = &action["counts"];
    let (ok, pending) = (counts["ok"].as_i64().unwrap(), counts["pending"].as_i64().unwrap());
    assert_eq!(ok + pending, 80, "{counts}");
    assert!(pending > 0, "it died before the end: {counts}");
    assert!(ok > 0, "what it recorded before dying stays: {counts}");
    let (status, body) =
        api.call(Method::POST, &format!("/api/v1/actions/{id}/cancel"), Some(&api.operator), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    stop.cancel();
    api.stop().await;
}

#[tokio::test]
async fn bad_fleet_actions_are_refused_with_a_reason() {
    let api = start(&[]).await;
    let fleet = api.online_fleet("fa-bad", 2).await;
    let agent = ids(&fleet)[0].clone();
    let bad = [
        json!({"command": "rm_rf", "target": {"agent_ids": [agent]}}),
        json!({"command": "restart_service", "params": {"service": "../etc"}, "target": {"agent_ids": [agent]}}),
        json!({"command": "ping", "target": {}}),
        json!({"command": "ping", "target": {"agent_ids": [agent], "selector": "a=b"}}),
        json!({"command": "ping", "target": {"agent_ids": []}}),
        json!({"command": "ping", "target": {"agent_ids": ["NOT-AN-ID"]}}),
        json!({"command": "ping", "target": {"selector": ""}}),
        json!({"command": "ping", "target": {"selector": "env in ("}}),
        json!({"command": "ping", "target": {"selector": "env=x'; DROP TABLE agents; --"}}),
        json!({"command": "ping", "target": {"hostname_prefix": ""}}),
        json!({"command": "ping", "target": {"hostname_prefix": "a\u{0}b"}}),
        json!({"command": "ping", "target": {"agent_ids": [agent]}, "max_concurrency": 0}),
        json!({"command": "ping", "target": {"agent_ids": [agent]}, "max_concurrency": 100000}),
        json!({"command": "ping", "target": {"agent_ids": [agent]}, "timeout_ms": 5}),
        json!({"command": "ping", "target": {"agent_ids": [agent]}, "surprise": true}),
        json!({"command": "ping", "target": {"agent_ids": [agent], "labels": "x"}}),
        json!({"command": "ping"}),
        json!([1, 2, 3]),
    ];
    for body in bad {
        let (status, answer) = api.post("/api/v1/actions", &api.operator, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["status"], 400, "{body}: a problem body");
    }
    // Well-formed targets the fleet cannot serve now: a state, not a malformed request.
    let unknown = json!({"command": "ping", "target": {"agent_ids": ["0123456789ab"]}});
    let (status, answer) = api.post("/api/v1/actions", &api.operator, unknown).await;
    assert_problem(status, &answer, StatusCode::NOT_FOUND, "not-found");
    let nobody = json!({"command": "ping", "target": {"selector": "nobody=here"}});
    let (status, answer) = api.post("/api/v1/actions", &api.operator, nobody).await;
    assert_problem(status, &answer, StatusCode::CONFLICT, "conflict");
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM fleet_actions").fetch_one(&api.stack.db.pool).await.unwrap();
    assert_eq!(count, 0, "nothing refused was stored");
    for path in
        ["/api/v1/actions/not-a-uuid", "/api/v1/actions/not-a-uuid/results", "/api/v1/actions?limit=0"]
    {
        let (status, body) = api.get(path, &api.viewer).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
    }
    let missing = uuid::Uuid::now_v7();
    let (status, _) = api.get(&format!("/api/v1/actions/{missing}"), &api.viewer).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.post(&format!("/api/v1/actions/{missing}/cancel"), &api.operator, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    api.stop().await;
}
