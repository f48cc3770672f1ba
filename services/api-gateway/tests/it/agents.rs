use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn agent_list_paginates_and_filters() {
    let api = start(&[]).await;
    let fleet = api.online_fleet("list", 25).await;
    // A few offline, and a hostname with LIKE metacharacters.
    let offline: Vec<String> = fleet.agents().iter().take(5).map(|a| a.id.to_string()).collect();
    sqlx::query("UPDATE agents SET status = 'offline' WHERE id = ANY($1)")
        .bind(&offline)
        .execute(&api.stack.db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE agents SET hostname = 'web_%-01' WHERE id = $1")
        .bind(fleet.agents()[10].id.as_str())
        .execute(&api.stack.db.pool)
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/agents?limit=10&after={c}"),
            None => "/api/v1/agents?limit=10".to_owned(),
        };
        let (status, page) = api.get(&path, &api.viewer).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(page["items"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "ordered by id");
    assert_eq!(seen.len(), 25);

    let (_, online) = api.get("/api/v1/agents?status=online&limit=500", &api.viewer).await;
    assert_eq!(online["items"].as_array().unwrap().len(), 20);
    let item = &online["items"][0];
    assert_eq!(item["presence"]["state"], "online");
    assert!(item["presence"]["last_heartbeat_at"].is_string());
    assert!(item["presence"]["since"].is_string());

    let (_, by_prefix) = api.get("/api/v1/agents?hostname_prefix=web_%25", &api.viewer).await;
    let hosts: Vec<&str> =
        by_prefix["items"].as_array().unwrap().iter().map(|a| a["hostname"].as_str().unwrap()).collect();
    assert_eq!(hosts, vec!["web_%-01"], "a prefix is a prefix, not a LIKE pattern");
    // 000010..000019, less the one renamed above.
    let (_, by_prefix) = api.get("/api/v1/agents?hostname_prefix=list-host-00001", &api.viewer).await;
    assert_eq!(by_prefix["items"].as_array().unwrap().len(), 9);

    for bad in ["status=sleeping", "limit=0", "limit=501", "limit=-1", "after=ZZZ", "limit=abc"] {
        let (status, body) = api.get(&format!("/api/v1/agents?{bad}"), &api.viewer).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    api.stop().await;
}

#[tokio::test]
async fn agent_detail_incidents_and_inventory() {
    let api = start(&[]).await;
    let fleet = api.online_fleet("detail", 1).await;
    let agent = &fleet.agents()[0];
    let id = agent.id.to_string();

    // Inventory history: two snapshots, via the ingestor's storage path.
    let snapshot = |report: &wire_models::InventoryReport| {
        storage::inventory::Snapshot::from_report(report.clone()).unwrap()
    };
    let first = agent.inventory(false);
    let second = agent.inventory(true);
    storage::inventory::ingest_snapshots(&api.stack.db.pool, &[snapshot(&first), snapshot(&second)])
        .await
        .unwrap();

    let (status, detail) = api.get(&format!("/api/v1/agents/{id}"), &api.viewer).await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    assert_eq!(detail["id"], id);
    assert_eq!(detail["latest_inventory"]["hash"], second.snapshot_hash());

    let (_, history) = api.get(&format!("/api/v1/agents/{id}/inventory"), &api.viewer).await;
    let items = history["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let (newer, older) = (items[0]["id"].as_i64().unwrap(), items[1]["id"].as_i64().unwrap());
    let (status, diff) =
        api.get(&format!("/api/v1/agents/{id}/inventory/diff?from={older}&to={newer}"), &api.viewer).await;
    assert_eq!(status, StatusCode::OK, "{diff}");
    assert_eq!(diff["changes"][0]["path"], "packages.openssl.version");
    assert_eq!(diff["changes"][0]["op"], "changed");
    let (status, _) =
        api.get(&format!("/api/v1/agents/{id}/inventory/diff?from={older}&to=999999"), &api.viewer).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Incidents: newest first, paginated, filtered by status.
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(api.incident(&id, "oom", &format!("error {n}")).await);
    }
    sqlx::query("UPDATE incidents SET status = 'resolved' WHERE id = $1")
        .bind(ids[0])
        .execute(&api.stack.db.pool)
        .await
        .unwrap();
    let (_, page) = api.get(&format!("/api/v1/agents/{id}/incidents?limit=2"), &api.viewer).await;
    let got: Vec<i64> = page["items"].as_array().unwrap().iter().map(|i| i["id"].as_i64().unwrap()).collect();
    assert_eq!(got, vec![ids[4], ids[3]]);
    let cursor = page["next_cursor"].as_i64().unwrap();
    let (_, page) =
        api.get(&format!("/api/v1/agents/{id}/incidents?limit=2&before={cursor}"), &api.viewer).await;
    let got: Vec<i64> = page["items"].as_array().unwrap().iter().map(|i| i["id"].as_i64().unwrap()).collect();
    assert_eq!(got, vec![ids[2], ids[1]]);
    let (_, resolved) = api.get(&format!("/api/v1/agents/{id}/incidents?status=resolved"), &api.viewer).await;
    assert_eq!(resolved["items"].as_array().unwrap().len(), 1);
    assert_eq!(resolved["items"][0]["type"], "oom");

    // A known agent with nothing to show is an empty page, not a 404.
    let (status, empty) =
        api.get(&format!("/api/v1/agents/{id}/incidents?status=acknowledged"), &api.viewer).await;
    assert_eq!(status, StatusCode::OK, "{empty}");
    assert_eq!(empty["items"].as_array().unwrap().len(), 0);

    // Unknown agents are 404, malformed ids 400.
    assert_eq!(api.get("/api/v1/agents/000000000000", &api.viewer).await.0, StatusCode::NOT_FOUND);
    assert_eq!(api.get("/api/v1/agents/000000000000/incidents", &api.viewer).await.0, StatusCode::NOT_FOUND);
    assert_eq!(api.get("/api/v1/agents/NOT-AN-ID/incidents", &api.viewer).await.0, StatusCode::BAD_REQUEST);

    // A revoked agent's incidents are gone from the API with it, though the rows remain.
    sqlx::query("UPDATE agents SET revoked_at = now() WHERE id = $1")
        .bind(&id)
        .execute(&api.stack.db.pool)
        .await
        .unwrap();
    assert_eq!(
        api.get(&format!("/api/v1/agents/{id}/incidents"), &api.viewer).await.0,
        StatusCode::NOT_FOUND
    );
    api.stop().await;
}

#[tokio::test]
async fn agent_lists_are_cached_for_the_ttl_and_shared_between_replicas() {
    let api = start(&["--cache-ttl", "4s"]).await;
    api.online_fleet("cache-a", 3).await;
    let count = |page: &Value| page["items"].as_array().map_or(usize::MAX, Vec::len);
    let replica = api.replica(&["--cache-ttl", "4s"]).await;
    let from_replica = || async {
        let response = api
            .http
            .get(format!("{}/api/v1/agents?limit=100", replica.base))
            .bearer_auth(&api.viewer)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json::<Value>().await.unwrap()
    };

    let (_, first) = api.get("/api/v1/agents?limit=100", &api.viewer).await;
    assert_eq!(count(&first), 3);
    api.online_fleet("cache-b", 2).await;
    let (_, again) = api.get("/api/v1/agents?limit=100", &api.viewer).await;
    assert_eq!(count(&again), 3, "within the TTL the page comes from this replica's memory");
    assert_eq!(count(&from_replica().await), 3, "a replica that never built the page takes it from Redis");

    test_support::eventually(
        Duration::from_secs(8),
        "both replicas show the new agents after the TTL",
        || async {
            let (_, page) = api.get("/api/v1/agents?limit=100", &api.viewer).await;
            (count(&page) == 5 && count(&from_replica().await) == 5).then_some(())
        },
    )
    .await;
    replica.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn agent_lists_are_fresh_with_the_cache_off() {
    let api = start(&["--cache-ttl", "0s"]).await;
    api.online_fleet("nocache-a", 2).await;
    let (_, first) = api.get("/api/v1/agents?limit=100", &api.viewer).await;
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    api.online_fleet("nocache-b", 1).await;
    let (_, second) = api.get("/api/v1/agents?limit=100", &api.viewer).await;
    assert_eq!(second["items"].as_array().unwrap().len(), 3);
    api.stop().await;
}
