//! Accounts under attack: lockout that hurts only the attacker, tokens that end when
//! an account changes, password hashing that cannot exhaust memory, a client address
//! that a header cannot move, metrics off the public port.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

async fn login_from(api: &Api, forwarded: &str, email: &str, password: &str) -> (StatusCode, Value) {
    let response = api
        .http
        .post(format!("{}/api/v1/auth/login", api.base))
        .header("x-forwarded-for", forwarded)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn wrong_passwords_from_elsewhere_do_not_lock_the_owner_out() {
    // Behind a trusted proxy (this test is the proxy, on loopback): each "client"
    // address comes from X-Forwarded-For.
    let api = start(&["--trusted-proxies", "127.0.0.1/32", "--rate-limit-login-account", "5"]).await;
    let attacker = "198.51.100.66";
    let mut locked = false;
    for attempt in 0..8 {
        let (status, body) =
            login_from(&api, attacker, "admin@example.com", &format!("wrong guess {attempt}")).await;
        match status {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::TOO_MANY_REQUESTS => {
                locked = true;
                break;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(locked, "the guessing address must be locked out of the account");
    // The attacker is locked out even with the right password...
    let (status, _) = login_from(&api, attacker, "admin@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // ...but the owner, from their own address, logs in.
    let (status, body) = login_from(&api, "203.0.113.10", "admin@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Successful logins never count: many in a row stay fine.
    for _ in 0..6 {
        let (status, _) = login_from(&api, "203.0.113.11", "viewer@example.com", PASSWORD).await;
        assert_eq!(status, StatusCode::OK);
    }
    api.stop().await;
}

/// Lists agents as the viewer, with this `X-Forwarded-For`.
async fn list_from(api: &Api, forwarded: &str) -> StatusCode {
    api.http
        .get(format!("{}/api/v1/agents", api.base))
        .bearer_auth(&api.viewer)
        .header("x-forwarded-for", forwarded)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn a_spoofed_forwarded_for_does_not_move_the_limiter_key() {
    // No trusted proxy: the header means nothing, every request is 127.0.0.1.
    let api = start(&["--rate-limit-ip", "10"]).await;
    let mut statuses = Vec::new();
    for n in 0..15 {
        statuses.push(list_from(&api, &format!("10.9.8.{n}")).await);
    }
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    api.stop().await;

    // Behind a trusted proxy: what the client writes at the left of the header does
    // not matter, the address the proxy appended does.
    let api = start(&["--rate-limit-ip", "10", "--trusted-proxies", "127.0.0.1"]).await;
    let mut statuses = Vec::new();
    for n in 0..15 {
        statuses.push(list_from(&api, &format!("10.9.8.{n}, 198.51.100.20")).await);
    }
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    // Another real client behind the same proxy is not affected.
    assert_eq!(list_from(&api, "198.51.100.21").await, StatusCode::OK);
    api.stop().await;
}

#[tokio::test]
async fn tokens_end_when_the_password_or_role_changes() {
    let api = start(&[]).await;
    let (_, me) = api.get("/api/v1/auth/me", &api.operator).await;
    let id = me["id"].as_str().unwrap().to_owned();
    let before = api.operator.clone();
    // A password change ends every token issued before it.
    let patch = async |body: Value| {
        let (status, body) =
            api.call(Method::PATCH, &format!("/api/v1/users/{id}"), Some(&api.admin), Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    };
    patch(json!({"password": "a brand new long password"})).await;
    let (status, body) = api.get("/api/v1/auth/me", &before).await;
    assert_problem(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
    let fresh = api.login("operator@example.com", "a brand new long password").await;
    assert_eq!(api.get("/api/v1/auth/me", &fresh).await.0, StatusCode::OK);
    // So does a role change.
    patch(json!({"role": "viewer"})).await;
    assert_eq!(api.get("/api/v1/auth/me", &fresh).await.0, StatusCode::UNAUTHORIZED);
    // A patch that changes nothing ends nothing.
    let after_role = api.login("operator@example.com", "a brand new long password").await;
    patch(json!({"role": "viewer"})).await;
    assert_eq!(api.get("/api/v1/auth/me", &after_role).await.0, StatusCode::OK);
    // Every change is in the audit log, without the password.
    let (_, audit) = api.get("/api/v1/audit", &api.admin).await;
    let updates: Vec<&Value> =
        audit["items"].as_array().unwrap().iter().filter(|e| e["action"] == "update_user").collect();
    assert_eq!(updates.len(), 3, "{audit}");
    assert!(!audit.to_string().contains("a brand new long password"));
    assert_eq!(updates.last().unwrap()["params"]["password_changed"], true);
    api.stop().await;
}

#[tokio::test]
async fn a_login_burst_beyond_the_hashing_bound_gets_503s() {
    let api = start(&[
        "--max-concurrent-password-hashes",
        "1",
        // Shorter than the burst takes to hash one at a time on any machine, so some
        // of it is shed however fast this one hashes.
        "--password-hash-wait",
        "200ms",
        "--rate-limit-login",
        "0",
        "--rate-limit-login-account",
        "0",
    ])
    .await;
    let mut burst = tokio::task::JoinSet::new();
    for n in 0..200 {
        let (http, base) = (api.http.clone(), api.base.clone());
        burst.spawn(async move {
            let response = http
                .post(format!("{base}/api/v1/auth/login"))
                .json(&json!({"email": "admin@example.com", "password": format!("burst guess {n}")}))
                .send()
                .await
                .unwrap();
            let retry_after = response.headers().get("retry-after").is_some();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (status, retry_after, body)
        });
    }
    let (mut busy, mut refused) = (0, 0);
    while let Some(result) = burst.join_next().await {
        let (status, retry_after, body) = result.unwrap();
        match status {
            StatusCode::UNAUTHORIZED => refused += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(retry_after, "a 503 must say when to retry");
                assert_eq!(body["type"], "urn:opspilot:problem:busy", "{body}");
                busy += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(busy > 0, "with one hash at a time, a burst of 200 must be shed");
    assert!(refused > 0, "the hashes that ran answered");
    // And the gateway still serves a correct login afterwards.
    api.login("admin@example.com", PASSWORD).await;
    api.stop().await;
}

#[tokio::test]
async fn metrics_are_served_on_the_admin_port_only() {
    let api = start(&[]).await;
    let (status, _) = api.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let admin = api.admin_base();
    let response = reqwest::get(format!("{admin}/metrics")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let ready: Value = reqwest::get(format!("{admin}/readyz")).await.unwrap().json().await.unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    api.stop().await;
}
