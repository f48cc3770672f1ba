//! The audit writers' connection: its update finds rows by index however small the
//! table was when it started.

use storage::audit::{FinishedAudit, PendingAudit, Planning};
use test_support::TestDb;
use uuid::Uuid;

fn pending(n: usize) -> Vec<PendingAudit> {
    (0..n)
        .map(|_| PendingAudit {
            request_id: Uuid::now_v7(),
            actor: "operator@example.com".into(),
            action: "execute".into(),
            agent_id: Some("agent-1".into()),
            incident_id: None,
            command: Some("ping".into()),
            params: Some(serde_json::json!({})),
        })
        .collect()
}

fn finished(rows: &[PendingAudit]) -> Vec<FinishedAudit> {
    rows.iter()
        .map(|p| FinishedAudit {
            request_id: p.request_id,
            outcome: "ok".into(),
            result: None,
            duration_ms: 1,
        })
        .collect()
}

/// Sequential scans of audit_log so far, as counted by Postgres (the writer's pending
/// statistics flushed first).
async fn seq_scans(db: &TestDb, writer: &mut sqlx::PgConnection) -> i64 {
    sqlx::query("SELECT pg_stat_force_next_flush()").execute(&mut *writer).await.unwrap();
    // The flush happens when the writer's backend next goes idle.
    sqlx::query("SELECT 1").execute(&mut *writer).await.unwrap();
    let mut reader = db.pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_stat_clear_snapshot()").execute(&mut *reader).await.unwrap();
    sqlx::query_scalar("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'audit_log'")
        .fetch_one(&mut *reader)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_writer_started_on_a_small_table_still_updates_by_index_once_it_grew() {
    let db = TestDb::create().await;
    // As the gateway has them: inserts on a connection that keeps its plans, updates
    // on one that plans each statement.
    let mut inserter = storage::audit::writer_connection(&db.pool, Planning::Cached).await.unwrap();
    let mut writer = storage::audit::writer_connection(&db.pool, Planning::PerExecution).await.unwrap();
    // Enough statements on a tiny table for Postgres to settle on one cached plan.
    for _ in 0..10 {
        let rows = pending(3);
        storage::audit::begin_many(&mut inserter, &rows).await.unwrap();
        storage::audit::finish_many(&mut writer, &finished(&rows)).await.unwrap();
    }
    // The table grows (as under load, before autovacuum analyzes it again).
    let grown = pending(20_000);
    for chunk in grown.chunks(1000) {
        storage::audit::begin_many(&mut inserter, chunk).await.unwrap();
    }
    let before = seq_scans(&db, &mut writer).await;
    for chunk in grown.chunks(10).take(30) {
        storage::audit::finish_many(&mut writer, &finished(chunk)).await.unwrap();
    }
    let after = seq_scans(&db, &mut writer).await;
    assert_eq!(after - before, 0, "the updates scanned the whole audit log");
    let done: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE outcome = 'ok'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(done, 30 + 300);
}
