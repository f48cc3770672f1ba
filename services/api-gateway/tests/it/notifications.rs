//! Notification targets and deliveries through the admin API, and a test notification
//! the analyzer posts to a local receiver.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

const TARGETS: &str = "/api/v1/notifications/targets";

#[tokio::test]
async fn admins_manage_targets_whose_secrets_are_shown_once() {
    let api = start(&[]).await;
    for token in [&api.viewer, &api.operator] {
        let (status, body) = api.get(TARGETS, token).await;
        assert_problem(status, &body, StatusCode::FORBIDDEN, "forbidden");
        let (status, body) = api.get("/api/v1/notifications/deliveries", token).await;
        assert_problem(status, &body, StatusCode::FORBIDDEN, "forbidden");
    }

    let (status, created) = api
        .post(
            TARGETS,
            &api.admin,
            json!({"name": "ops-hook", "kind": "webhook", "url": "https://hooks.example.net/in/SECRET-PATH",
                   "events": ["incident", "offline"], "min_severity": "error", "kinds": ["disk_full"],
                   "rate_per_minute": 30}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_") && secret.len() == 6 + 64);
    let target = &created["target"];
    assert_eq!(target["url"], "https://hooks.example.net/…");
    assert_eq!(target["events"], json!(["incident", "offline"]));
    assert_eq!(target["min_severity"], "error");
    assert_eq!(target["kinds"], json!(["disk_full"]));
    assert_eq!(target["rate_per_minute"], 30);
    assert_eq!(target["has_secret"], true);
    assert_eq!(target["source"], "api");
    let id = target["id"].as_str().unwrap().to_owned();

    let (status, slack) = api
        .post(
            TARGETS,
            &api.admin,
            json!({"name": "slack-ops", "kind": "slack", "url": "https://hooks.slack.com/services/T0/B0/XXXX"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{slack}");
    assert!(slack.get("secret").is_none());
    assert_eq!(slack["target"]["events"], json!(["incident", "offline", "action_failed"]));
    assert_eq!(slack["target"]["min_severity"], "critical");

    let (status, list) = api.get(TARGETS, &api.admin).await;
    assert_eq!(status, StatusCode::OK);
    let text = list.to_string();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(!text.contains(secret) && !text.contains("SECRET-PATH") && !text.contains("XXXX"), "{text}");

    let (status, body) = api
        .post(
            TARGETS,
            &api.admin,
            json!({"name": "ops-hook", "kind": "slack",
        "url": "https://hooks.slack.com/services/x"}),
        )
        .await;
    assert_problem(status, &body, StatusCode::CONFLICT, "conflict");

    let path = format!("{TARGETS}/{id}");
    let (status, updated) = api
        .call(Method::PATCH, &path, Some(&api.admin), Some(json!({"enabled": false, "rotate_secret": true})))
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["target"]["enabled"], false);
    let rotated = updated["secret"].as_str().unwrap();
    assert_ne!(rotated, secret);
    let stored =
        storage::notifications::get_target(&api.stack.db.pool, id.parse().unwrap()).await.unwrap().unwrap();
    use secrecy::ExposeSecret;
    assert_eq!(stored.secret.unwrap().expose_secret(), rotated);
    assert!(!stored.enabled);

    let (status, _) = api.call(Method::DELETE, &path, Some(&api.admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = api.call(Method::DELETE, &path, Some(&api.admin), None).await;
    assert_problem(status, &body, StatusCode::NOT_FOUND, "not-found");
    let (_, list) = api.get(TARGETS, &api.admin).await;
    assert_eq!(list.as_array().unwrap().len(), 1);

    let audit: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_log WHERE action LIKE '%notification%'")
            .fetch_all(&api.stack.db.pool)
            .await
            .unwrap();
    assert_eq!(audit.len(), 4, "{audit:?}");
    let logged: Vec<Value> =
        sqlx::query_scalar("SELECT params FROM audit_log WHERE action LIKE '%notification%'")
            .fetch_all(&api.stack.db.pool)
            .await
            .unwrap();
    let logged = serde_json::to_string(&logged).unwrap();
    assert!(!logged.contains(secret) && !logged.contains(rotated) && !logged.contains("SECRET-PATH"));
    api.stop().await;
}

#[tokio::test]
async fn bad_targets_are_refused_with_a_problem() {
    let api = start(&[]).await;
    let base = json!({"name": "ok", "kind": "webhook", "url": "https://example.net/hook"});
    let with = |key: &str, value: Value| {
        let mut body = base.clone();
        body[key] = value;
        body
    };
    for body in [
        with("name", json!("")),
        with("name", json!("Has Spaces")),
        with("name", json!("env-mine")),
        with("kind", json!("email")),
        with("url", json!("ftp://example.net/x")),
        with("url", json!("https://user:pw@example.net/x")),
        with("url", json!("not a url")),
        with("events", json!([])),
        with("events", json!(["incident", "everything"])),
        with("min_severity", json!("fatal")),
        with("kinds", json!(["Not A Kind!"])),
        with("rate_per_minute", json!(0)),
        with("rate_per_minute", json!(601)),
        with("secret", json!("short")),
        with("unknown_field", json!(1)),
        json!({"name": "s", "kind": "slack", "url": "http://hooks.slack.com/services/x"}),
        json!({"name": "s", "kind": "slack", "url": "https://hooks.slack.com/services/x", "secret": "0123456789abcdefg"}),
    ] {
        let (status, problem) = api.post(TARGETS, &api.admin, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {problem}");
        assert!(problem["type"].as_str().unwrap().starts_with("urn:opspilot:problem:"), "{problem}");
    }
    for query in ["status=lost", "event=everything", "limit=0", "target_id=nope", "before=x"] {
        let (status, problem) =
            api.get(&format!("/api/v1/notifications/deliveries?{query}"), &api.admin).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query} -> {problem}");
    }
    let missing = uuid::Uuid::now_v7();
    let (status, body) = api
        .call(
            Method::PATCH,
            &format!("{TARGETS}/{missing}"),
            Some(&api.admin),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_problem(status, &body, StatusCode::NOT_FOUND, "not-found");
    let (status, body) = api.post(&format!("{TARGETS}/{missing}/test"), &api.admin, json!({})).await;
    assert_problem(status, &body, StatusCode::NOT_FOUND, "not-found");

    // A target from the analyzer's environment is read-only here.
    let env = storage::notifications::upsert_env_target(
        &api.stack.db.pool,
        &storage::notifications::NewTarget {
            name: "env-webhook",
            kind: storage::notifications::TargetKind::Webhook,
            url: "https://example.net/env",
            secret: Some("0123456789abcdef0123"),
            events: &storage::notifications::NotifyEvent::ALL,
            min_severity: wire_models::Severity::Critical,
            kinds: &[],
            rate_per_minute: 10,
            enabled: true,
        },
    )
    .await
    .unwrap();
    let path = format!("{TARGETS}/{}", env.id);
    let (status, body) =
        api.call(Method::PATCH, &path, Some(&api.admin), Some(json!({"enabled": false}))).await;
    assert_problem(status, &body, StatusCode::CONFLICT, "conflict");
    let (status, body) = api.call(Method::DELETE, &path, Some(&api.admin), None).await;
    assert_problem(status, &body, StatusCode::CONFLICT, "conflict");
    api.stop().await;
}

#[tokio::test]
async fn a_test_notification_reaches_the_receiver_and_shows_in_the_deliveries() {
    let api = start(&[]).await;
    let posts: Arc<Mutex<Vec<(axum::http::HeaderMap, axum::body::Bytes)>>> = Arc::default();
    let seen = Arc::clone(&posts);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().unwrap().push((headers, body));
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let (status, created) = api
        .post(
            TARGETS,
            &api.admin,
            json!({"name": "local", "kind": "webhook", "url": format!("http://{addr}/hook")}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["target"]["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();

    let (analyzer, shutdown) =
        start_analyzer(&api.stack, &["--auto-analyze", "false", "--notify-poll", "100ms"]).await;

    let (status, queued) = api.post(&format!("{TARGETS}/{id}/test"), &api.admin, json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while posts.lock().unwrap().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (headers, raw) = posts.lock().unwrap().first().cloned().expect("the test notification arrived");
    let body: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(body["event"], "test");
    let timestamp: i64 = headers["x-opspilot-timestamp"].to_str().unwrap().parse().unwrap();
    assert!(ai_analyzer::notify::format::verify(
        secret.as_bytes(),
        timestamp,
        &raw,
        headers["x-opspilot-signature"].to_str().unwrap()
    ));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let delivered = loop {
        let (status, page) =
            api.get(&format!("/api/v1/notifications/deliveries?target_id={id}"), &api.admin).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let item = page["items"][0].clone();
        if item["status"] == "delivered" || tokio::time::Instant::now() >= deadline {
            break item;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(delivered["status"], "delivered", "{delivered}");
    assert_eq!(delivered["event"], "test");
    assert_eq!(delivered["target_name"], "local");
    assert_eq!(delivered["attempts"], 1);
    assert_eq!(delivered["response_status"], 200);
    let (_, page) = api.get("/api/v1/notifications/deliveries?status=failed", &api.admin).await;
    assert!(page["items"].as_array().unwrap().is_empty());

    shutdown.cancel();
    analyzer.wait().await.unwrap();
    server.abort();
    api.stop().await;
}
