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
    api.settle_audit().await;
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

/// Registers an agent directly (the fleet list needs no presence).
async fn registered(api: &Api, hostname: &str) -> String {
    let id = wire_models::AgentId::random();
    storage::agents::register(&api.stack.db.pool, &id, hostname).await.unwrap();
    id.to_string()
}

#[tokio::test]
async fn the_fleet_list_filters_pages_and_counts_across_agents() {
    let api = start(&["--cache-ttl", "0s"]).await;
    let web = registered(&api, "web-01").await;
    let db = registered(&api, "db-01").await;
    let oom_web = api.incident(&web, "oom", "Out of memory: Killed process 42 (java)").await;
    let disk_db = api.incident(&db, "disk_full", "No space left on device /var/lib/postgresql").await;
    let oom_db = api.incident(&db, "oom", "Out of memory: Killed process 7 (postgres)").await;
    sqlx::query("UPDATE incidents SET severity = 'warning', is_critical = false, status = 'acknowledged' WHERE id = $1")
        .bind(disk_db)
        .execute(&api.stack.db.pool)
        .await
        .unwrap();

    let ids = |page: &serde_json::Value| -> Vec<i64> {
        page["items"].as_array().unwrap().iter().map(|i| i["id"].as_i64().unwrap()).collect()
    };
    let (status, all) = api.get("/api/v1/incidents", &api.viewer).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(ids(&all), [oom_db, disk_db, oom_web], "newest first across agents");
    assert_eq!(all["items"][0]["hostname"], "db-01");
    assert_eq!(all["items"][0]["type"], "oom");
    assert!(all["next_cursor"].is_null());

    for (query, want) in [
        ("kind=oom", vec![oom_db, oom_web]),
        ("status=acknowledged", vec![disk_db]),
        ("status=new,acknowledged", vec![oom_db, disk_db, oom_web]),
        ("severity=warning", vec![disk_db]),
        ("critical=true", vec![oom_db, oom_web]),
        (&format!("agent_id={web}"), vec![oom_web]),
        ("hostname_prefix=db-", vec![oom_db, disk_db]),
        ("q=KILLED%20process", vec![oom_db, oom_web]),
        ("q=postgres", vec![oom_db, disk_db]),
        ("kind=oom&hostname_prefix=web", vec![oom_web]),
        ("since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z", vec![oom_db, disk_db, oom_web]),
        ("until=2000-01-01T00:00:00Z", vec![]),
    ] {
        let (status, page) = api.get(&format!("/api/v1/incidents?{query}"), &api.viewer).await;
        assert_eq!(status, StatusCode::OK, "{query}: {page}");
        assert_eq!(ids(&page), want, "{query}");
        let (status, summary) = api.get(&format!("/api/v1/incidents/summary?{query}"), &api.viewer).await;
        assert_eq!(status, StatusCode::OK, "{query}: {summary}");
        assert_eq!(summary["total"], want.len(), "{query}: {summary}");
    }
    let (_, summary) = api.get("/api/v1/incidents/summary", &api.viewer).await;
    assert_eq!(
        summary,
        json!({"total": 3, "critical": 2, "new": 2, "analyzed": 0, "acknowledged": 1, "resolved": 0})
    );

    // Pages of one, by last occurrence, follow the cursor to the end.
    let mut seen = Vec::new();
    let mut path = "/api/v1/incidents?sort=last_seen&limit=1".to_owned();
    loop {
        let (status, page) = api.get(&path, &api.viewer).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/incidents?sort=last_seen&limit=1&cursor={cursor}"),
            None => break,
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, [oom_web, disk_db, oom_db]);

    // Unauthenticated: no list.
    let (status, _) = api.call(Method::GET, "/api/v1/incidents", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    api.stop().await;
}

#[tokio::test]
async fn bad_fleet_queries_are_refused_with_a_problem() {
    let api = start(&[]).await;
    for query in [
        "status=open",
        "status=new,,resolved",
        "severity=fatal",
        "kind=Not%20A%20Kind",
        "hostname_prefix=",
        "q=ab",
        "q=a%00bc",
        "since=yesterday",
        "critical=maybe",
        "sort=oldest",
        "cursor=c12&sort=last_seen",
        "cursor=zz",
        "limit=0",
        "limit=501",
    ] {
        for path in ["/api/v1/incidents", "/api/v1/incidents/summary"] {
            if path.ends_with("summary")
                && (query.starts_with("sort") || query.starts_with("cursor") || query.starts_with("limit"))
            {
                continue;
            }
            let (status, body) = api.get(&format!("{path}?{query}"), &api.viewer).await;
            assert_problem(status, &body, StatusCode::BAD_REQUEST, "invalid-query");
        }
    }
    let (status, body) = api.get("/api/v1/incidents?agent_id=nothex", &api.viewer).await;
    assert_problem(status, &body, StatusCode::BAD_REQUEST, "invalid-agent-id");
    // An empty interval holds nothing: an answer, not an error.
    let empty = "since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z";
    let (status, body) = api.get(&format!("/api/v1/incidents?{empty}"), &api.viewer).await;
    assert_eq!((status, body["items"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)), "{body}");
    let (status, body) = api.get(&format!("/api/v1/incidents/summary?{empty}"), &api.viewer).await;
    assert_eq!((status, body["total"].as_i64()), (StatusCode::OK, Some(0)), "{body}");
    api.stop().await;
}
