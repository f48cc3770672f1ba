use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

async fn enroll(api: &Api, token: &str, fingerprint: &str) -> (StatusCode, Value) {
    api.call(
        Method::POST,
        "/api/v1/agents/enroll",
        None,
        Some(json!({"token": token, "machine_fingerprint": fingerprint, "hostname": "web-01"})),
    )
    .await
}

#[tokio::test]
async fn enrollment_with_tokens_and_re_enrollment() {
    let api = start(&[]).await;
    // The development bootstrap token.
    let (status, first) = enroll(&api, BOOTSTRAP, "machine-aaaaaaaa").await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let id = first["agent_id"].as_str().unwrap().to_owned();
    wire_models::AgentId::parse(&id).unwrap();
    assert_eq!(first["subjects"]["rpc"], format!("{}.{id}.rpc", api.stack.topology.subjects.root()));
    assert_eq!(first["subjects"]["heartbeat_bucket"], api.stack.topology.agents_bucket);
    assert_eq!(first["nats_urls"][0], api.stack.nats.url());
    assert_eq!(first["heartbeat_interval_secs"], 10);
    // Same machine again: same id.
    let (status, again) = enroll(&api, BOOTSTRAP, "machine-aaaaaaaa").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["agent_id"], id);
    assert_eq!(again["status"], "re-enrolled");

    // An admin-created token with one use.
    let (status, created) =
        api.post("/api/v1/enrollment-tokens", &api.admin, json!({"name": "rack 7", "max_uses": 1})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    assert_eq!(created["state"], "active");
    let (status, _) = enroll(&api, &token, "machine-bbbbbbbb").await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = enroll(&api, &token, "machine-cccccccc").await;
    assert_problem(status, &body, StatusCode::UNAUTHORIZED, "enrollment-refused");
    assert!(body["detail"].as_str().unwrap().contains("no uses left"));
    // Only the hash is stored, and the list shows use counts.
    let stored: String = sqlx::query_scalar("SELECT token_hash FROM enrollment_tokens")
        .fetch_one(&api.stack.db.pool)
        .await
        .unwrap();
    assert_ne!(stored, token);
    let (_, tokens) = api.get("/api/v1/enrollment-tokens", &api.admin).await;
    assert_eq!(tokens[0]["use_count"], 1);
    assert_eq!(tokens[0]["state"], "exhausted");
    assert!(tokens[0].get("token").is_none());

    // Expired.
    let (_, expiring) = api.post("/api/v1/enrollment-tokens", &api.admin, json!({"name": "old"})).await;
    sqlx::query("UPDATE enrollment_tokens SET expires_at = now() - interval '1 minute' WHERE id = $1")
        .bind(uuid::Uuid::parse_str(expiring["id"].as_str().unwrap()).unwrap())
        .execute(&api.stack.db.pool)
        .await
        .unwrap();
    let (status, body) = enroll(&api, expiring["token"].as_str().unwrap(), "machine-dddddddd").await;
    assert_problem(status, &body, StatusCode::UNAUTHORIZED, "enrollment-refused");
    assert!(body["detail"].as_str().unwrap().contains("expired"));

    // Revoked.
    let (_, revoking) = api.post("/api/v1/enrollment-tokens", &api.admin, json!({"name": "gone"})).await;
    let (status, revoked) = api
        .call(
            Method::DELETE,
            &format!("/api/v1/enrollment-tokens/{}", revoking["id"].as_str().unwrap()),
            Some(&api.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(revoked["state"], "revoked");
    let (status, body) = enroll(&api, revoking["token"].as_str().unwrap(), "machine-eeeeeeee").await;
    assert_problem(status, &body, StatusCode::UNAUTHORIZED, "enrollment-refused");
    assert!(body["detail"].as_str().unwrap().contains("revoked"));

    // Unknown.
    let (status, body) = enroll(&api, "opt_not-a-real-token", "machine-ffffffff").await;
    assert_problem(status, &body, StatusCode::UNAUTHORIZED, "enrollment-refused");

    // A revoked agent cannot come back by enrolling again.
    let (status, _) = api.call(Method::DELETE, &format!("/api/v1/agents/{id}"), Some(&api.admin), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = enroll(&api, BOOTSTRAP, "machine-aaaaaaaa").await;
    assert_problem(status, &body, StatusCode::FORBIDDEN, "revoked");
    // And the revocation is audit-logged.
    assert_eq!(api.audit_outcomes(&id).await, vec![("revoke_agent".to_owned(), "ok".to_owned())]);
    let revoked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM agent_credentials WHERE agent_id = $1 AND revoked_at IS NOT NULL",
    )
    .bind(&id)
    .fetch_one(&api.stack.db.pool)
    .await
    .unwrap();
    assert_eq!(revoked, 2, "both enrollments' credentials are revoked");
    api.stop().await;
}

#[tokio::test]
async fn enrollment_input_is_validated() {
    let api = start(&[]).await;
    for body in [
        json!({"token": BOOTSTRAP, "machine_fingerprint": "short", "hostname": "h"}),
        json!({"token": BOOTSTRAP, "machine_fingerprint": "machine-ok-1234", "hostname": ""}),
        json!({"token": BOOTSTRAP, "machine_fingerprint": "machine-ok-1234", "hostname": "two words"}),
        json!({"token": BOOTSTRAP, "machine_fingerprint": "machine\u{0}-ok-1234", "hostname": "h"}),
        json!({"token": "", "machine_fingerprint": "machine-ok-1234", "hostname": "h"}),
        json!({"token": "x".repeat(300), "machine_fingerprint": "machine-ok-1234", "hostname": "h"}),
        json!({"machine_fingerprint": "machine-ok-1234", "hostname": "h"}),
    ] {
        let (status, response) =
            api.call(Method::POST, "/api/v1/agents/enroll", None, Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {response}");
    }
    api.stop().await;
}

#[tokio::test]
async fn the_simulated_agents_enroll_through_the_api() {
    let api = start(&[]).await;
    let fleet = agent_sim::Fleet::numbered("enrolling", 3);
    let enrolled = agent_sim::enroll::enroll_fleet(&api.base, BOOTSTRAP, &fleet).await.unwrap();
    assert_eq!(enrolled.agents().len(), 3);
    let again = agent_sim::enroll::enroll_fleet(&api.base, BOOTSTRAP, &fleet).await.unwrap();
    let ids = |f: &agent_sim::Fleet| f.agents().iter().map(|a| a.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&enrolled), ids(&again), "re-enrolling gives the same ids");
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM agents").fetch_one(&api.stack.db.pool).await.unwrap();
    assert_eq!(count, 3);
    api.stop().await;
}
