use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn login_and_me() {
    let api = start(&[]).await;
    let (status, me) = api.get("/api/v1/auth/me", &api.operator).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["email"], "operator@example.com");
    assert_eq!(me["role"], "operator");
    assert!(me.get("password_hash").is_none());

    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "operator@example.com", "password": "wrong password!"})),
        )
        .await;
    assert_problem(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "nobody@example.com", "password": PASSWORD})),
        )
        .await;
    assert_problem(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
    // The same message for both: no account enumeration.
    let (_, wrong) = api
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "operator@example.com", "password": "nope nope nope"})),
        )
        .await;
    assert_eq!(wrong["detail"], body["detail"]);
    // Email is case-insensitive.
    api.login("OPERATOR@Example.com", PASSWORD).await;
    api.stop().await;
}

fn token(alg: Algorithm, secret: &[u8], claims: serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), &claims, &EncodingKey::from_secret(secret)).unwrap()
}

#[tokio::test]
async fn forged_expired_wrong_key_and_alg_none_tokens_are_refused() {
    let api = start(&[]).await;
    let (_, me) = api.get("/api/v1/auth/me", &api.admin).await;
    let now = chrono::Utc::now().timestamp();
    let claims = |exp: i64, iss: &str| {
        json!({"sub": me["id"], "email": "admin@example.com", "role": "admin", "iss": iss, "iat": now, "exp": exp,
               "jti": uuid::Uuid::new_v4(), "ver": 1})
    };
    // Sanity: a token built this way with the right key works.
    let good = token(Algorithm::HS256, SECRET.as_bytes(), claims(now + 600, "opspilot"));
    assert_eq!(api.get("/api/v1/auth/me", &good).await.0, StatusCode::OK);

    let expired = token(Algorithm::HS256, SECRET.as_bytes(), claims(now - 3600, "opspilot"));
    let wrong_key =
        token(Algorithm::HS256, b"another-secret-0123456789abcdef0123456789", claims(now + 600, "opspilot"));
    let wrong_issuer = token(Algorithm::HS256, SECRET.as_bytes(), claims(now + 600, "someone-else"));
    let other_alg = token(Algorithm::HS512, SECRET.as_bytes(), claims(now + 600, "opspilot"));
    // alg: none, built by hand: header.payload. with an empty signature.
    use base64::Engine as _;
    let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none =
        format!("{}.{}.", b64(json!({"alg": "none", "typ": "JWT"})), b64(claims(now + 600, "opspilot")));
    // A valid token with its payload swapped for an admin's: the signature no longer matches.
    let (_, viewer) = api.get("/api/v1/auth/me", &api.viewer).await;
    assert_eq!(viewer["role"], "viewer");
    let parts: Vec<&str> = api.viewer.split('.').collect();
    let forged = format!("{}.{}.{}", parts[0], b64(claims(now + 600, "opspilot")), parts[2]);

    for (name, bad) in [
        ("expired", expired),
        ("wrong key", wrong_key),
        ("wrong issuer", wrong_issuer),
        ("HS512", other_alg),
        ("alg none", none),
        ("forged payload", forged),
        ("garbage", "not.a.token".to_owned()),
    ] {
        let (status, body) = api.get("/api/v1/auth/me", &bad).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
        assert_eq!(body["type"], "urn:opspilot:problem:unauthenticated", "{name}");
    }
    let (status, _) = api.call(Method::GET, "/api/v1/auth/me", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    api.stop().await;
}

#[tokio::test]
async fn a_disabled_user_is_locked_out_at_once() {
    let api = start(&[]).await;
    let (_, me) = api.get("/api/v1/auth/me", &api.viewer).await;
    let (status, _) = api
        .call(
            Method::PATCH,
            &format!("/api/v1/users/{}", me["id"].as_str().unwrap()),
            Some(&api.admin),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // The token is still within its lifetime, but the user is gone.
    assert_eq!(api.get("/api/v1/auth/me", &api.viewer).await.0, StatusCode::UNAUTHORIZED);
    api.stop().await;
}

#[tokio::test]
async fn login_brute_force_is_limited_with_retry_after() {
    let api = start(&["--rate-limit-login", "5"]).await;
    let mut limited = None;
    for attempt in 0..10 {
        let response = api
            .http
            .post(format!("{}/api/v1/auth/login", api.base))
            .json(&json!({"email": "admin@example.com", "password": format!("guess number {attempt}")}))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some((
                attempt,
                response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned()),
            ));
            break;
        }
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    // The users' logins in start() counted too (3), so the limit of 5 per minute is hit
    // within the first few guesses.
    let (attempt, retry_after) = limited.expect("brute force must be limited");
    assert!(attempt <= 5);
    let retry_after: u64 = retry_after.expect("Retry-After header").parse().unwrap();
    assert!((1..=60).contains(&retry_after));
    // Even the right password is refused while limited.
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "admin@example.com", "password": PASSWORD})),
        )
        .await;
    assert_problem(status, &body, StatusCode::TOO_MANY_REQUESTS, "rate-limited");
    api.stop().await;
}

#[tokio::test]
async fn general_rate_limit_per_address() {
    let api = start(&["--rate-limit-ip", "20"]).await;
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(api.get("/api/v1/agents", &api.viewer).await.0);
    }
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS));
    assert!(statuses.iter().take(10).all(|s| *s == StatusCode::OK));
    api.stop().await;
}
