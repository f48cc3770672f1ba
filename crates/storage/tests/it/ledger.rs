//! The partitioned idempotency ledger: a copy of an event meets its original across day
//! boundaries until the original's day is dropped; later it is a new event; and a
//! database from before the partitioning keeps recognising what it had ingested.

use std::time::Duration;

use chrono::{DateTime, Duration as Span, NaiveTime, Utc};
use storage::incidents::NewEvent;
use test_support::TestDb;
use uuid::Uuid;
use wire_models::{AgentId, Severity};

const WINDOW: Duration = Duration::from_secs(8 * 86_400);

fn event(agent: &AgentId, event_id: Uuid, occurred_at: DateTime<Utc>) -> NewEvent {
    NewEvent {
        event_id,
        agent_id: agent.clone(),
        kind: wire_models::EventKind::parse("disk").unwrap(),
        severity: Severity::Error,
        source: "df".into(),
        raw_error: "disk full".into(),
        context: serde_json::json!({}),
        occurred_at,
        fingerprint: "ledger-test".into(),
        dedup_key: "ledger-test".into(),
    }
}

/// How many of `events` the ledger took as new.
async fn ingest(db: &TestDb, events: &[NewEvent]) -> u64 {
    storage::incidents::ingest_events(&db.pool, events).await.unwrap().new_events
}

async fn count(db: &TestDb, table: &'static str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

fn midnight(t: DateTime<Utc>) -> DateTime<Utc> {
    t.date_naive().and_time(NaiveTime::MIN).and_utc()
}

#[tokio::test]
async fn a_copy_meets_its_original_across_day_boundaries_until_its_day_is_dropped() {
    let db = TestDb::create().await;
    let agent = AgentId::random();
    storage::agents::register(&db.pool, &agent, "ledger-host").await.unwrap();
    let now = Utc::now();
    let today = midnight(now);
    // Either side of a partition boundary, and one dated past the partitions made ahead.
    let before = event(&agent, Uuid::now_v7(), today - Span::milliseconds(1));
    let after = event(&agent, Uuid::now_v7(), today);
    let ahead = event(&agent, Uuid::now_v7(), today + Span::days(6) + Span::hours(1));
    assert_eq!(ingest(&db, &[before.clone(), after.clone(), ahead.clone()]).await, 3);
    assert_eq!(count(&db, "ingested_events_default").await, 1, "the event dated ahead waits in the default");

    // Five days on: partitions made up to eight days ahead (the one dated ahead moves
    // into its own day), nothing old enough to drop.
    let later = storage::ledger::maintain(&db.pool, now + Span::days(5), WINDOW).await.unwrap();
    assert!(later.dropped.is_empty(), "{later:?}");
    assert!(later.created.contains(&(today + Span::days(6)).date_naive()), "{later:?}");
    assert_eq!(count(&db, "ingested_events_default").await, 0);
    // Every copy is still recognised, whichever side of midnight its original was.
    assert_eq!(ingest(&db, &[before.clone(), after.clone(), ahead.clone()]).await, 0);
    assert_eq!(count(&db, "ingested_events").await, 3);

    // Past the window, the days of `before` and `after` are dropped whole...
    let days_before = storage::ledger::partitions(&db.pool).await.unwrap();
    let expired =
        storage::ledger::maintain(&db.pool, now + Span::days(9) + Span::hours(1), WINDOW).await.unwrap();
    let dropped: Vec<_> = expired.dropped.iter().map(|d| d.day).collect();
    assert!(dropped.contains(&before.occurred_at.date_naive()), "{expired:?}");
    assert!(dropped.contains(&after.occurred_at.date_naive()), "{expired:?}");
    assert!(expired.dropped.iter().all(|d| d.bytes > 0));
    let days_after = storage::ledger::partitions(&db.pool).await.unwrap();
    assert!(days_after.iter().all(|d| !dropped.contains(d)));
    assert!(days_after.len() >= days_before.len() - dropped.len());
    // ...so a copy that old is taken as a new event (documented), once: its own copies
    // meet it in the default partition.
    assert_eq!(ingest(&db, &[before.clone(), after.clone()]).await, 2);
    assert_eq!(ingest(&db, &[before, after]).await, 0);
    // The one dated ahead is untouched.
    assert_eq!(ingest(&db, &[ahead]).await, 0);
}

#[tokio::test]
async fn a_database_from_before_the_partitioning_keeps_what_it_ingested() {
    let db = TestDb::create_empty().await;
    // Every migration up to the ledger's, as a database deployed before it has them.
    let dir = tempfile::tempdir().unwrap();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations");
    let mut names: Vec<_> = std::fs::read_dir(&source).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    let ledger = names.iter().position(|n| n.to_string_lossy().ends_with("_ledger_partitions.sql")).unwrap();
    for name in &names[..ledger] {
        std::fs::copy(source.join(name), dir.path().join(name)).unwrap();
    }
    sqlx::migrate::Migrator::new(dir.path()).await.unwrap().run(&db.pool).await.unwrap();

    let agent = AgentId::random();
    storage::agents::register(&db.pool, &agent, "legacy-host").await.unwrap();
    let old: Vec<Uuid> = (0..50).map(|_| Uuid::now_v7()).collect();
    sqlx::query("INSERT INTO ingested_events (event_id, ingested_at) SELECT unnest($1::uuid[]), now() - interval '9 days'")
        .bind(&old)
        .execute(&db.pool)
        .await
        .unwrap();
    let recent = Uuid::now_v7();
    sqlx::query("INSERT INTO ingested_events (event_id) VALUES ($1)")
        .bind(recent)
        .execute(&db.pool)
        .await
        .unwrap();

    // The conversion keeps every row, and running the migrations again changes nothing.
    storage::migrate(&db.pool).await.unwrap();
    storage::migrate(&db.pool).await.unwrap();
    assert_eq!(count(&db, "ingested_events_legacy").await, 51);
    assert_eq!(count(&db, "ingested_events").await, 0);

    // What was ingested before is still recognised; a new event is new.
    let now = Utc::now();
    let copies: Vec<NewEvent> = old.iter().chain([&recent]).map(|id| event(&agent, *id, now)).collect();
    assert_eq!(ingest(&db, &copies).await, 0);
    assert_eq!(ingest(&db, &[event(&agent, Uuid::now_v7(), now)]).await, 1);

    // The legacy ids go once the window has passed since they were ingested.
    let policy = storage::retention::Policy {
        resolved_incidents: Duration::ZERO,
        inventory_snapshots: 0,
        inventory_age: Duration::ZERO,
        presence_transitions: Duration::ZERO,
        audit_log: Duration::ZERO,
        ledger_window: WINDOW,
    };
    let pace = storage::retention::Pace { batch: 20, pause: Duration::from_millis(1) };
    let stop = tokio_util::sync::CancellationToken::new();
    storage::retention::run(&db.pool, &policy, now, pace, &stop).await.unwrap();
    let left: Vec<Uuid> =
        sqlx::query_scalar("SELECT event_id FROM ingested_events_legacy").fetch_all(&db.pool).await.unwrap();
    assert_eq!(left, vec![recent]);
}
