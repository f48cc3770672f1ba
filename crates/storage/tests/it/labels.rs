//! Agent labels: the inventory's and the operators', and the agent list's selector
//! against a reference (the selector's own matching over the labels read back).

use std::collections::BTreeMap;

use chrono::Utc;
use serde_json::{Value, json};
use storage::agents::{AgentFilter, LabelsSet};
use storage::inventory::Snapshot;
use test_support::TestDb;
use wire_models::{AgentId, LabelSelector};

async fn agent(db: &TestDb, hostname: &str) -> AgentId {
    let id = AgentId::random();
    storage::agents::register(&db.pool, &id, hostname).await.unwrap();
    id
}

async fn inventory(db: &TestDb, agent: &AgentId, meta: Value) {
    let snapshot = Snapshot {
        agent_id: agent.clone(),
        hash: wire_models::sha256_hex(meta.to_string().as_bytes()),
        hostname: "h".into(),
        meta,
        data: json!({}),
        collected_at: Utc::now(),
    };
    storage::inventory::ingest_snapshots(&db.pool, &[snapshot]).await.unwrap();
}

fn changes(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned))).collect()
}

async fn set(db: &TestDb, agent: &AgentId, pairs: &[(&str, Option<&str>)]) -> LabelsSet {
    storage::agents::set_labels(&db.pool, agent, &changes(pairs), 4).await.unwrap()
}

fn as_map(v: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(v.clone()).unwrap()
}

async fn labels_of(db: &TestDb, agent: &AgentId) -> BTreeMap<String, String> {
    as_map(&storage::agents::get(&db.pool, agent).await.unwrap().unwrap().effective_labels)
}

#[tokio::test]
async fn inventory_labels_yield_to_the_operators() {
    let db = TestDb::create().await;
    let a = agent(&db, "web-1").await;
    inventory(&db, &a, json!({"env": "dev", "role": "web", "cores": 8, "tags": ["x"], "bad key": "v"})).await;
    assert_eq!(labels_of(&db, &a).await, as_map(&json!({"env": "dev", "role": "web", "cores": "8"})));

    let LabelsSet::Done(row) = set(&db, &a, &[("env", Some("prod")), ("team", Some("core"))]).await else {
        panic!("labels not set")
    };
    assert_eq!(as_map(&row.labels), as_map(&json!({"env": "prod", "team": "core"})));
    assert_eq!(
        as_map(&row.effective_labels),
        as_map(&json!({"env": "prod", "role": "web", "cores": "8", "team": "core"}))
    );
    // A new snapshot changes the inventory's labels; the operators' still win.
    inventory(&db, &a, json!({"env": "staging", "role": "lb"})).await;
    assert_eq!(labels_of(&db, &a).await, as_map(&json!({"env": "prod", "role": "lb", "team": "core"})));
    // Removing the operator's label uncovers the inventory's.
    assert!(matches!(set(&db, &a, &[("env", None)]).await, LabelsSet::Done(_)));
    assert_eq!(labels_of(&db, &a).await, as_map(&json!({"env": "staging", "role": "lb", "team": "core"})));
}

#[tokio::test]
async fn operator_labels_are_bounded_and_only_on_live_agents() {
    let db = TestDb::create().await;
    let a = agent(&db, "web-1").await;
    assert!(matches!(
        set(&db, &a, &[("a", Some("1")), ("b", Some("2")), ("c", Some("3"))]).await,
        LabelsSet::Done(_)
    ));
    // Five once merged: refused, and nothing changed.
    assert!(matches!(set(&db, &a, &[("d", Some("4")), ("e", Some("5"))]).await, LabelsSet::TooMany));
    assert_eq!(labels_of(&db, &a).await.len(), 3);
    // Removing one while adding two stays within four.
    assert!(matches!(
        set(&db, &a, &[("a", None), ("d", Some("4")), ("e", Some("5"))]).await,
        LabelsSet::Done(_)
    ));
    assert_eq!(labels_of(&db, &a).await.keys().cloned().collect::<Vec<_>>(), ["b", "c", "d", "e"]);

    assert!(matches!(set(&db, &AgentId::random(), &[("a", Some("1"))]).await, LabelsSet::NotFound));
    storage::agents::revoke(&db.pool, &a).await.unwrap();
    assert!(matches!(set(&db, &a, &[("a", Some("1"))]).await, LabelsSet::NotFound));
}

#[tokio::test]
async fn the_agent_list_selects_by_labels_as_the_selector_matches() {
    let db = TestDb::create().await;
    let envs = ["prod", "dev", "staging"];
    let roles = ["web", "lb", "db", "cache"];
    let mut ids = Vec::new();
    for n in 0..36usize {
        let a = agent(&db, &format!("host-{n:02}")).await;
        let mut meta = serde_json::Map::new();
        if n % 5 != 0 {
            meta.insert("env".into(), json!(envs[n % 3]));
        }
        meta.insert("role".into(), json!(roles[n % 4]));
        if n % 7 == 0 {
            meta.insert("canary".into(), json!(true));
        }
        inventory(&db, &a, Value::Object(meta)).await;
        if n % 6 == 0 {
            set(&db, &a, &[("env", Some("prod")), ("example.com/owner", Some("team-a"))]).await;
        }
        ids.push(a);
    }
    let gone = agent(&db, "gone").await;
    inventory(&db, &gone, json!({"env": "prod", "role": "web"})).await;
    storage::agents::revoke(&db.pool, &gone).await.unwrap();

    let all =
        storage::agents::list(&db.pool, &AgentFilter { limit: 1000, ..Default::default() }).await.unwrap();
    let selectors = [
        "env=prod",
        "env==dev",
        "env!=prod",
        "role in (web,lb)",
        "role notin (web,lb)",
        "env notin (prod)",
        "canary",
        "!canary",
        "!env",
        "example.com/owner=team-a",
        "env=prod,role in (web,db),!canary",
        "env in (prod,dev),role!=cache,canary",
        "env=nowhere",
        "",
    ];
    let mut non_empty = 0;
    for text in selectors {
        let selector = LabelSelector::parse(text).unwrap();
        let want: Vec<String> = all
            .iter()
            .filter(|row| selector.matches(&as_map(&row.effective_labels)))
            .map(|row| row.id.clone())
            .collect();
        non_empty += usize::from(!want.is_empty());
        // Paged in threes, so the selector and the cursor combine.
        let mut got = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let filter = AgentFilter {
                selector: Some(&selector),
                after: after.as_deref(),
                limit: 3,
                ..Default::default()
            };
            let page = storage::agents::list(&db.pool, &filter).await.unwrap();
            got.extend(page.iter().map(|r| r.id.clone()));
            match page.last() {
                Some(last) if page.len() == 3 => after = Some(last.id.clone()),
                _ => break,
            }
        }
        assert_eq!(got, want, "{text}");
        assert!(!got.contains(&gone.to_string()), "{text}: a revoked agent is not listed");
    }
    assert!(non_empty >= selectors.len() - 1, "the reference is not vacuous: {non_empty}");
}
