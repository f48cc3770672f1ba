//! Every endpoint x every role: exactly what each role should get.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Min {
    Public,
    Viewer,
    Operator,
    Admin,
}

#[tokio::test]
async fn each_role_gets_exactly_what_it_should() {
    let api = start(&[]).await;
    let fleet = api.online_fleet("roles", 1).await;
    let agent = fleet.agents()[0].id.to_string();
    let incident = api.incident(&agent, "oom", "Out of memory").await;
    let unknown_token = uuid::Uuid::new_v4();
    let (_, me) = api.get("/api/v1/auth/me", &api.viewer).await;
    let viewer_id = me["id"].as_str().unwrap().to_owned();

    let endpoints: Vec<(Method, String, Option<serde_json::Value>, Min)> = vec![
        (Method::GET, "/api/v1/auth/me".into(), None, Min::Viewer),
        (Method::GET, "/api/v1/agents".into(), None, Min::Viewer),
        (Method::GET, format!("/api/v1/agents/{agent}"), None, Min::Viewer),
        (Method::GET, format!("/api/v1/agents/{agent}/incidents"), None, Min::Viewer),
        (Method::GET, format!("/api/v1/agents/{agent}/inventory"), None, Min::Viewer),
        (Method::GET, format!("/api/v1/agents/{agent}/inventory/diff?from=1&to=2"), None, Min::Viewer),
        (Method::GET, format!("/api/v1/incidents/{incident}"), None, Min::Viewer),
        (
            Method::POST,
            format!("/api/v1/agents/{agent}/execute"),
            Some(json!({"command": "rm_rf", "params": {}})),
            Min::Operator,
        ),
        (
            Method::PATCH,
            format!("/api/v1/incidents/{incident}"),
            Some(json!({"status": "bogus"})),
            Min::Operator,
        ),
        (Method::POST, format!("/api/v1/incidents/{incident}/analyze"), None, Min::Operator),
        (Method::POST, format!("/api/v1/incidents/{incident}/execute"), None, Min::Operator),
        (Method::GET, "/api/v1/audit".into(), None, Min::Admin),
        (Method::GET, "/api/v1/users".into(), None, Min::Admin),
        (
            Method::POST,
            "/api/v1/users".into(),
            Some(json!({"email": "x", "password": "y", "role": "viewer"})),
            Min::Admin,
        ),
        (Method::PATCH, format!("/api/v1/users/{viewer_id}"), Some(json!({"role": "viewer"})), Min::Admin),
        (Method::GET, "/api/v1/enrollment-tokens".into(), None, Min::Admin),
        (Method::POST, "/api/v1/enrollment-tokens".into(), Some(json!({"name": ""})), Min::Admin),
        (Method::DELETE, format!("/api/v1/enrollment-tokens/{unknown_token}"), None, Min::Admin),
        (Method::DELETE, "/api/v1/agents/000000000000".into(), None, Min::Admin),
        (Method::DELETE, "/api/v1/revoked-agents/000000000000".into(), None, Min::Admin),
        (Method::GET, "/api/v1/identity-conflicts".into(), None, Min::Admin),
        (
            Method::POST,
            "/api/v1/identity-conflicts/424242/resolve".into(),
            Some(json!({"resolution": "reject"})),
            Min::Admin,
        ),
        (Method::POST, "/api/v1/agents/enroll/challenge".into(), None, Min::Public),
        (
            Method::POST,
            "/api/v1/agents/enroll".into(),
            Some(json!({"token": "x", "machine_fingerprint": "short", "hostname": "h"})),
            Min::Public,
        ),
        (
            Method::POST,
            "/api/v1/auth/login".into(),
            Some(json!({"email": "a@b.c", "password": "x"})),
            Min::Public,
        ),
        (Method::GET, "/api/v1/openapi.json".into(), None, Min::Public),
        (Method::GET, "/healthz".into(), None, Min::Public),
        (Method::GET, "/readyz".into(), None, Min::Public),
    ];
    let roles = [
        (None, 0),
        (Some(api.viewer.clone()), 1),
        (Some(api.operator.clone()), 2),
        (Some(api.admin.clone()), 3),
    ];
    let mut failures = Vec::new();
    for (method, path, body, min) in &endpoints {
        let needed = match min {
            Min::Public => 0,
            Min::Viewer => 1,
            Min::Operator => 2,
            Min::Admin => 3,
        };
        for (token, rank) in &roles {
            let (status, response) = api.call(method.clone(), path, token.as_deref(), body.clone()).await;
            let expected_denial = if *rank >= needed {
                None
            } else if token.is_none() {
                Some(StatusCode::UNAUTHORIZED)
            } else {
                Some(StatusCode::FORBIDDEN)
            };
            let ok = match (expected_denial, min) {
                (Some(denied), _) => status == denied,
                // Public endpoints answer on their own terms (a wrong password is 401).
                (None, Min::Public) => status != StatusCode::INTERNAL_SERVER_ERROR,
                // Allowed: anything but a denial or an internal error (bodies above are
                // deliberately invalid so nothing is changed or sent; analyze answers
                // 503 because no analyzer runs here).
                (None, _) => {
                    status != StatusCode::UNAUTHORIZED
                        && status != StatusCode::FORBIDDEN
                        && status != StatusCode::INTERNAL_SERVER_ERROR
                }
            };
            if !ok {
                failures.push(format!("{method} {path} as rank {rank}: {status} {response}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    api.stop().await;
}
