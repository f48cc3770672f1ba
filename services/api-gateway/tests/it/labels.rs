//! Agent labels through the API: operators set them, the agent list selects by them,
//! and hostile selectors and labels get a 400 with a problem body.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

fn ids(page: &Value) -> Vec<String> {
    page["items"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap().to_owned()).collect()
}

async fn patch(api: &Api, agent: &str, token: &str, body: Value) -> (StatusCode, Value) {
    api.call(Method::PATCH, &format!("/api/v1/agents/{agent}"), Some(token), Some(body)).await
}

/// `selector` as a query string value.
fn query(selector: &str) -> String {
    let mut out = String::new();
    for b in selector.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[tokio::test]
async fn operators_label_agents_and_the_list_selects_by_labels() {
    let api = start(&["--cache-ttl", "0s"]).await;
    let fleet = api.online_fleet("labels", 4).await;
    let agents: Vec<String> = fleet.agents().iter().map(|a| a.id.to_string()).collect();
    // The inventory's labels, as the ingestor leaves them.
    for (i, agent) in agents.iter().enumerate() {
        let (env, role) = (if i < 2 { "prod" } else { "dev" }, ["web", "lb", "web", "db"][i]);
        let meta = json!({"env": env, "role": role});
        sqlx::query("UPDATE agents SET meta = $2, meta_labels = $2 WHERE id = $1")
            .bind(agent)
            .bind(&meta)
            .execute(&api.stack.db.pool)
            .await
            .unwrap();
    }

    // A viewer may not; an operator may, and the answer shows both kinds of labels.
    let (status, body) = patch(&api, &agents[2], &api.viewer, json!({"labels": {"env": "prod"}})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = patch(
        &api,
        &agents[2],
        &api.operator,
        json!({"labels": {"env": "prod", "example.com/team": "core"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["labels"], json!({"env": "prod", "role": "web", "example.com/team": "core"}));
    assert_eq!(body["operator_labels"], json!({"env": "prod", "example.com/team": "core"}));
    let audit = api.audit_outcomes(&agents[2]).await;
    assert_eq!(audit, vec![("set_labels".to_owned(), "ok".to_owned())]);

    let select = |selector: &str| format!("/api/v1/agents?limit=500&selector={}", query(selector));
    let mut want = vec![agents[0].clone(), agents[1].clone(), agents[2].clone()];
    want.sort();
    let (status, page) = api.get(&select("env=prod"), &api.viewer).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(ids(&page), want);
    let (_, page) = api.get(&select("env=prod, role in (web, db), example.com/team"), &api.viewer).await;
    assert_eq!(ids(&page), vec![agents[2].clone()]);
    let (_, page) = api.get(&select("role notin (web,lb)"), &api.viewer).await;
    assert_eq!(ids(&page), vec![agents[3].clone()]);
    let (_, page) = api.get(&select("!example.com/team,env!=dev"), &api.viewer).await;
    let mut want = vec![agents[0].clone(), agents[1].clone()];
    want.sort();
    assert_eq!(ids(&page), want);

    // null removes the operator's label: the inventory's shows again.
    let (status, body) = patch(&api, &agents[2], &api.operator, json!({"labels": {"env": null}})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["labels"]["env"], "dev");
    let (status, body) = patch(&api, "0123456789ab", &api.operator, json!({"labels": {"a": "b"}})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    api.stop().await;
}

#[tokio::test]
async fn hostile_selectors_and_labels_are_refused_with_a_reason() {
    let api = start(&[]).await;
    let fleet = api.online_fleet("labels-hostile", 1).await;
    let agent = fleet.agents()[0].id.to_string();
    let long = "a".repeat(5000);
    let selectors = [
        "env=", // valid: an empty value
        "env in ()",
        "env=prod,",
        "env=x'; DROP TABLE agents; --",
        "env=\u{0}",
        "env=ünïcode",
        "!!x",
        "((((",
        "env in (a,b",
        "env ~ x",
        &long,
    ];
    for selector in selectors {
        let (status, body) =
            api.get(&format!("/api/v1/agents?selector={}", query(selector)), &api.viewer).await;
        if selector == "env=" {
            assert_eq!(status, StatusCode::OK, "{body}");
            continue;
        }
        assert_eq!(status, StatusCode::BAD_REQUEST, "{selector:?}: {body}");
        assert_eq!(body["status"], 400, "{selector:?}: a problem body");
        assert!(body["detail"].as_str().unwrap().starts_with("selector: "), "{body}");
    }
    let too_many: serde_json::Map<String, Value> = (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    let bodies = [
        json!({"labels": {"bad key": "v"}}),
        json!({"labels": {"k": "bad value"}}),
        json!({"labels": {"k": 5}}),
        json!({"labels": {"k": "v".repeat(64)}}),
        json!({"labels": {}}),
        json!({}),
        json!({"labels": {"k": "v"}, "hostname": "evil"}),
        json!({"labels": too_many}),
        json!("labels"),
    ];
    for body in bodies {
        let (status, answer) = patch(&api, &agent, &api.operator, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["status"], 400, "{body}: a problem body");
    }
    let (_, agent_now) = api.get(&format!("/api/v1/agents/{agent}"), &api.viewer).await;
    assert_eq!(agent_now["operator_labels"], json!({}), "nothing refused was stored");
    api.stop().await;
}
