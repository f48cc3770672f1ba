//! The maintenance worker inside a running ingestor: on its schedule it prunes what is
//! past retention, leaves the rest, exports what it removed, and stops with the service.

use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn the_worker_prunes_on_its_schedule_and_reports_it() {
    let (stack, _bus) = setup().await;
    let agent = wire_models::AgentId::random();
    storage::agents::register(&stack.db.pool, &agent, "maintained-host").await.unwrap();
    sqlx::query(
        "INSERT INTO audit_log (request_id, actor, action, started_at)
         SELECT gen_random_uuid(), 'a@b', 'old', now() - interval '500 days' FROM generate_series(1, 25)
         UNION ALL SELECT gen_random_uuid(), 'a@b', 'recent', now() - interval '10 days'",
    )
    .execute(&stack.db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO incidents (agent_id, type, status, event_id, fingerprint, dedup_key, resolved_at)
         VALUES ($1, 'old', 'resolved', gen_random_uuid(), 'f1', 'd1', now() - interval '100 days'),
                ($1, 'open', 'new', gen_random_uuid(), 'f2', 'd2', NULL)",
    )
    .bind(agent.as_str())
    .execute(&stack.db.pool)
    .await
    .unwrap();

    let (running, shutdown) = start(
        &stack,
        &["--maintenance-interval", "200ms", "--maintenance-batch", "10", "--maintenance-pause", "1ms"],
    )
    .await;
    test_support::eventually(Duration::from_secs(20), "the old rows pruned", || {
        let stack = &stack;
        async move {
            let audit = scalar(stack, "SELECT count(*) FROM audit_log").await;
            let incidents = scalar(stack, "SELECT count(*) FROM incidents").await;
            (audit == 1 && incidents == 1).then_some(())
        }
    })
    .await;
    let kept: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_log UNION ALL SELECT type FROM incidents ORDER BY 1")
            .fetch_all(&stack.db.pool)
            .await
            .unwrap();
    assert_eq!(kept, ["open", "recent"]);
    let metrics =
        reqwest::get(format!("http://{}/metrics", running.admin_addr)).await.unwrap().text().await.unwrap();
    let removed = metrics
        .lines()
        .find(|l| l.starts_with("opspilot_retention_rows_removed_total") && l.contains("table=\"audit_log\""))
        .unwrap_or_else(|| panic!("no audit_log removal counted in\n{metrics}"));
    assert!(removed.ends_with(" 25"), "{removed}");
    assert!(metrics.contains("opspilot_retention_oldest_row_age_seconds"), "{metrics}");
    stop(running, shutdown).await;
}
