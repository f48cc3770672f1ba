use agent_sim::RpcBehaviour;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn acknowledge_and_resolve() {
    let api = start(&[]).await;
    let fleet = api.online_fleet("patch", 1).await;
    let id = api.incident(fleet.agents()[0].id.as_str(), "oom", "Out of memory").await;
    let path = format!("/api/v1/incidents/{id}");

    let (status, incident) = api.get(&path, &api.viewer).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(incident["status"], "new");
    assert_eq!(incident["analysis"]["status"], "none");

    let (status, acked) =
        api.call(Method::PATCH, &path, Some(&api.operator), Some(json!({"status": "acknowledged"}))).await;
    assert_eq!(status, StatusCode::OK, "{acked}");
    assert_eq!(acked["status"], "acknowledged");
    assert_eq!(acked["acknowledged_by"], "operator@example.com");
    let (status, resolved) =
        api.call(Method::PATCH, &path, Some(&api.operator), Some(json!({"status": "resolved"}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resolved["status"], "resolved");
    let (status, body) =
        api.call(Method::PATCH, &path, Some(&api.operator), Some(json!({"status": "acknowledged"}))).await;
    assert_problem(status, &body, StatusCode::CONFLICT, "conflict");
    let (status, _) =
        api.call(Method::PATCH, &path, Some(&api.operator), Some(json!({"status": "new"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(api.get("/api/v1/incidents/999999", &api.viewer).await.0, StatusCode::NOT_FOUND);
    assert_eq!(api.get("/api/v1/incidents/0", &api.viewer).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(api.get("/api/v1/incidents/abc", &api.viewer).await.0, StatusCode::BAD_REQUEST);
    api.stop().await;
}

#[tokio::test]
async fn analyze_without_an_analyzer_is_503_and_unknown_is_404() {
    let api = start(&[]).await;
    let fleet = api.online_fleet("noanalyzer", 1).await;
    let id = api.incident(fleet.agents()[0].id.as_str(), "oom", "Out of memory").await;
    let started = std::time::Instant::now();
    let (status, body) = api.post(&format!("/api/v1/incidents/{id}/analyze"), &api.operator, json!({})).await;
    assert_problem(status, &body, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(body["detail"].as_str().unwrap().contains("analyzer"));
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "no responders is known at once");
    let (status, _) = api.post("/api/v1/incidents/424242/analyze", &api.operator, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    api.stop().await;
}

#[tokio::test]
async fn executing_a_suggested_action() {
    let api = start(&[]).await;
    let fleet = api.online_fleet("suggested", 1).await;
    let agent = fleet.agents()[0].id.to_string();
    let stop = api.serve_rpc(&fleet, RpcBehaviour::default()).await;
    let id = api.incident(&agent, "service_down", "nginx exited").await;
    let path = format!("/api/v1/incidents/{id}/execute");

    let nginx = json!({"command": "restart_service", "params": {"service": "nginx"}});
    // Nothing suggested yet: 409.
    let (status, body) = api.post(&path, &api.operator, nginx.clone()).await;
    assert_problem(status, &body, StatusCode::CONFLICT, "conflict");
    // The body must name an allow-listed command: what it repeats is checked too.
    let (status, body) = api.post(&path, &api.operator, json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // A suggestion that is not (or no longer) allowed: 409, nothing sent.
    sqlx::query("UPDATE incidents SET suggested_action = $2 WHERE id = $1")
        .bind(id)
        .bind(json!({"command": "reboot_host", "params": {}}))
        .execute(&api.stack.db.pool)
        .await
        .unwrap();
    let (status, body) = api.post(&path, &api.operator, nginx.clone()).await;
    assert_problem(status, &body, StatusCode::CONFLICT, "conflict");
    assert!(api.audit_outcomes(&agent).await.is_empty());

    // Re-analyzed between showing and confirming: what was shown does not run.
    sqlx::query("UPDATE incidents SET suggested_action = $2 WHERE id = $1")
        .bind(id)
        .bind(json!({"command": "stop_service", "params": {"service": "nginx"}}))
        .execute(&api.stack.db.pool)
        .await
        .unwrap();
    let (status, body) = api.post(&path, &api.operator, nginx.clone()).await;
    assert_problem(status, &body, StatusCode::CONFLICT, "suggestion-changed");
    assert!(body["detail"].as_str().unwrap().contains("stop_service"), "{body}");
    assert!(api.audit_outcomes(&agent).await.is_empty(), "nothing may be sent on a mismatch");

    sqlx::query("UPDATE incidents SET suggested_action = $2 WHERE id = $1")
        .bind(id)
        .bind(nginx.clone())
        .execute(&api.stack.db.pool)
        .await
        .unwrap();
    let (status, body) = api.post(&path, &api.operator, nginx.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"]["output"], "restarted nginx");
    assert_eq!(body["incident"]["action_result"]["output"], "restarted nginx");
    assert!(body["incident"]["action_executed_at"].is_string());
    let audit: (String, Option<i64>, String) =
        sqlx::query_as("SELECT action, incident_id, outcome FROM audit_log WHERE agent_id = $1")
            .bind(&agent)
            .fetch_one(&api.stack.db.pool)
            .await
            .unwrap();
    assert_eq!(audit, ("execute_suggested".to_owned(), Some(id), "ok".to_owned()));
    stop.cancel();
    api.stop().await;
}
