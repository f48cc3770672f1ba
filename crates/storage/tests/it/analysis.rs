use chrono::{Duration, Utc};
use serde_json::json;
use storage::StorageError;
use storage::analysis::{self, AnalysisStatus, NewAnalysis};
use storage::incidents::NewEvent;
use test_support::TestDb;
use wire_models::{AgentId, Severity};

async fn agent(db: &TestDb, hostname: &str) -> AgentId {
    let id = AgentId::random();
    storage::agents::register(&db.pool, &id, hostname).await.unwrap();
    id
}

async fn inventory(db: &TestDb, agent: &AgentId, os_version: &str, services: &[(&str, &str)], age_secs: i64) {
    let services: Vec<_> = services.iter().map(|(n, s)| json!({"name": n, "state": s})).collect();
    let data = json!({
        "hostname": "ignored",
        "os": {"name": "Debian GNU/Linux", "version": os_version},
        "services": services,
        "packages": [],
        "meta": {},
    });
    sqlx::query("INSERT INTO agents_inventory (agent_id, hash, data, collected_at) VALUES ($1, repeat('b', 64), $2, $3)")
        .bind(agent.as_str())
        .bind(&data)
        .bind(Utc::now() - Duration::seconds(age_secs))
        .execute(&db.pool)
        .await
        .unwrap();
}

/// Opens an incident through the ingestion path and returns its id.
async fn incident(db: &TestDb, agent: &AgentId, kind: &str, severity: Severity, raw_error: &str) -> i64 {
    let event_id = uuid::Uuid::now_v7();
    let event = NewEvent {
        event_id,
        agent_id: agent.clone(),
        kind: wire_models::EventKind::parse(kind).unwrap(),
        severity,
        source: "nginx".into(),
        raw_error: raw_error.into(),
        context: json!({"unit": "nginx.service"}),
        occurred_at: Utc::now(),
        fingerprint: format!("fp-{kind}-{raw_error}"),
        dedup_key: event_id.to_string(),
    };
    let outcome = storage::incidents::ingest_events(&db.pool, &[event]).await.unwrap();
    outcome.created[0].id
}

async fn status(db: &TestDb, id: i64) -> (String, String, bool, Option<String>) {
    sqlx::query_as("SELECT status, analysis_status, is_critical, analysis_error FROM incidents WHERE id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

fn analysis<'a>(critical: bool, action: Option<&'a serde_json::Value>) -> NewAnalysis<'a> {
    NewAnalysis {
        text: "nginx crashed",
        is_critical: critical,
        suggested_action: action,
        dropped_action: None,
        analyzer: "openrouter",
        model: Some("test/model"),
    }
}

#[tokio::test]
async fn the_input_has_the_incident_its_agent_the_latest_inventory_and_recent_incidents() {
    let db = TestDb::create().await;
    let web = agent(&db, "web-01").await;
    let other = agent(&db, "db-01").await;
    // The newest snapshot by collection time wins, whatever the insertion order.
    inventory(&db, &web, "12", &[("nginx", "failed"), ("sshd", "running")], 10).await;
    inventory(&db, &web, "11", &[("apache2", "running")], 3600).await;
    let older = incident(&db, &web, "oom", Severity::Critical, "Out of memory").await;
    let newer = incident(&db, &web, "disk_full", Severity::Error, &"x".repeat(1000)).await;
    incident(&db, &other, "oom", Severity::Critical, "elsewhere").await;
    let id = incident(&db, &web, "service_down", Severity::Warning, "nginx exited").await;

    let input = analysis::load_input(&db.pool, id, 5).await.unwrap();
    let loaded = &input.incident;
    assert_eq!((loaded.id, loaded.kind.as_str(), loaded.severity.as_str()), (id, "service_down", "warning"));
    assert_eq!((loaded.source.as_str(), loaded.raw_error.as_str()), ("nginx", "nginx exited"));
    assert_eq!(loaded.context, json!({"unit": "nginx.service"}));
    assert_eq!((loaded.occurrences, loaded.is_critical), (1, false));
    assert_eq!(loaded.analysis_status, AnalysisStatus::None);
    assert_eq!(input.agent.hostname, "web-01");
    assert_eq!(input.agent.os.as_ref().map(|os| os.version.as_str()), Some("12"));
    let services: Vec<_> = input.agent.services.iter().map(|s| (s.name.as_str(), s.state.as_str())).collect();
    assert_eq!(services, [("nginx", "failed"), ("sshd", "running")]);
    let recent: Vec<i64> = input.recent.iter().map(|r| r.id).collect();
    assert_eq!(recent, [newer, older], "the agent's other incidents, newest first");
    assert_eq!(input.recent[0].raw_error.len(), analysis::RECENT_RAW_ERROR_CHARS as usize);

    assert_eq!(analysis::load_input(&db.pool, id, 1).await.unwrap().recent.len(), 1);
    assert!(analysis::load_input(&db.pool, id, 0).await.unwrap().recent.is_empty());

    // An agent that never reported an inventory.
    let bare = agent(&db, "bare-01").await;
    let id = incident(&db, &bare, "oom", Severity::Critical, "Out of memory").await;
    let input = analysis::load_input(&db.pool, id, 5).await.unwrap();
    assert_eq!((input.agent.os, input.agent.services.len(), input.recent.len()), (None, 0, 0));

    assert!(matches!(analysis::load_input(&db.pool, 987_654, 5).await, Err(StorageError::NotFound)));
}

#[tokio::test]
async fn a_success_moves_new_to_analyzed_and_never_reopens_acknowledged_or_resolved() {
    let db = TestDb::create().await;
    let web = agent(&db, "web-01").await;
    let action = json!({"command": "restart_service", "params": {"service": "nginx"}});
    let dropped = json!({"command": "run_shell", "params": {}, "reason": "not on the allow-list"});

    let id = incident(&db, &web, "service_down", Severity::Error, "exited").await;
    let mut new = analysis(true, Some(&action));
    new.dropped_action = Some(&dropped);
    assert_eq!(analysis::record_success(&db.pool, id, &new).await.unwrap().as_str(), "analyzed");
    let row: (String, serde_json::Value, serde_json::Value, String, String, bool) = sqlx::query_as(
        "SELECT ai_analysis, suggested_action, dropped_action, analyzer, analyzer_model, analyzed_at IS NOT NULL
         FROM incidents WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "nginx crashed".into(),
            action.clone(),
            dropped.clone(),
            "openrouter".into(),
            "test/model".into(),
            true
        )
    );
    assert_eq!(status(&db, id).await, ("analyzed".into(), "ok".into(), true, None));

    for target in ["acknowledged", "resolved"] {
        let id = incident(&db, &web, "service_down", Severity::Critical, target).await;
        sqlx::query("UPDATE incidents SET status = $2 WHERE id = $1")
            .bind(id)
            .bind(target)
            .execute(&db.pool)
            .await
            .unwrap();
        assert_eq!(
            analysis::record_success(&db.pool, id, &analysis(false, None)).await.unwrap().as_str(),
            target
        );
        // The analysis may not lower what the host reported.
        assert_eq!(status(&db, id).await, (target.to_owned(), "ok".into(), true, None));
    }

    assert!(matches!(
        analysis::record_success(&db.pool, 987_654, &analysis(true, None)).await,
        Err(StorageError::NotFound)
    ));
}

#[tokio::test]
async fn a_failure_records_its_reason_and_no_stale_outputs() {
    let db = TestDb::create().await;
    let web = agent(&db, "web-01").await;
    let action = json!({"command": "restart_service", "params": {"service": "nginx"}});
    let id = incident(&db, &web, "service_down", Severity::Error, "exited").await;

    analysis::record_failure(&db.pool, id, "rate limited", "openrouter", Some("test/model")).await.unwrap();
    assert_eq!(status(&db, id).await, ("new".into(), "failed".into(), false, Some("rate limited".into())));

    // A success clears the error; a later failure clears the success's outputs.
    analysis::record_success(&db.pool, id, &analysis(true, Some(&action))).await.unwrap();
    assert_eq!(status(&db, id).await, ("analyzed".into(), "ok".into(), true, None));
    analysis::record_failure(&db.pool, id, "timed out", "openrouter", Some("test/model")).await.unwrap();
    assert_eq!(status(&db, id).await, ("analyzed".into(), "failed".into(), true, Some("timed out".into())));
    let outputs: (Option<String>, Option<serde_json::Value>, Option<serde_json::Value>) =
        sqlx::query_as("SELECT ai_analysis, suggested_action, dropped_action FROM incidents WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(outputs, (None, None, None));

    assert!(matches!(
        analysis::record_failure(&db.pool, 987_654, "x", "rules", None).await,
        Err(StorageError::NotFound)
    ));
}
