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
    // The turn reports once it has been through every table, a moment after the rows go.
    let url = format!("http://{}/metrics", running.admin_addr);
    let (metrics, removed) = test_support::eventually(Duration::from_secs(10), "the removal counted", || {
        let url = url.clone();
        async move {
            let metrics = reqwest::get(url).await.ok()?.text().await.ok()?;
            let removed = metrics
                .lines()
                .find(|l| {
                    l.starts_with("opspilot_retention_rows_removed_total")
                        && l.contains("table=\"audit_log\"")
                })?
                .to_owned();
            Some((metrics, removed))
        }
    })
    .await;
    assert!(removed.ends_with(" 25"), "{removed}");
    assert!(metrics.contains("opspilot_retention_oldest_row_age_seconds"), "{metrics}");
    stop(running, shutdown).await;
}

/// SIGTERM to an ingestor whose worker is part way through a backlog: the process exits 0
/// promptly, between two statements (whole batches removed, none half done), says it
/// stopped mid-turn, and leaves the rest for the next turn.
#[tokio::test]
async fn sigterm_mid_batch_stops_the_worker_between_statements() {
    const BACKLOG: i64 = 40_000;
    const BATCH: i64 = 100;
    let (stack, _bus) = setup().await;
    sqlx::query(
        "INSERT INTO audit_log (request_id, actor, action, started_at)
         SELECT gen_random_uuid(), 'a@b', 'old', now() - interval '500 days' FROM generate_series(1, $1)
         UNION ALL SELECT gen_random_uuid(), 'a@b', 'recent', now() - interval '10 days'",
    )
    .bind(BACKLOG)
    .execute(&stack.db.pool)
    .await
    .unwrap();

    let mut env = stack.env_for(&natsbus::auth::Identity::EventIngestor);
    env.push(("ADMIN_ADDR", "127.0.0.1:0".to_owned()));
    env.push(("MAINTENANCE_INTERVAL", "100ms".to_owned()));
    env.push(("MAINTENANCE_BATCH", BATCH.to_string()));
    // At this pace the backlog takes several seconds: the signal lands mid-turn.
    env.push(("MAINTENANCE_PAUSE", "20ms".to_owned()));
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_event-ingestor"));
    let mut process = test_support::process::ServiceProcess::spawn(binary, &env, &[]);
    process.wait_for_line("event-ingestor ready", Duration::from_secs(30)).await;
    test_support::eventually(Duration::from_secs(20), "the worker to start on the backlog", || {
        let stack = &stack;
        async move { (scalar(stack, "SELECT count(*) FROM audit_log").await < BACKLOG - 5 * BATCH).then_some(()) }
    })
    .await;

    let signalled = std::time::Instant::now();
    process.signal("TERM");
    let code = process.wait(Duration::from_secs(10)).await;
    let output = process.output().join("\n");
    assert_eq!(code, Some(0), "{output}");
    assert!(signalled.elapsed() < Duration::from_secs(5), "stopped after {:?}", signalled.elapsed());
    assert!(output.contains("stopped mid-turn"), "{output}");

    let old = scalar(&stack, "SELECT count(*) FROM audit_log WHERE action = 'old'").await;
    let recent = scalar(&stack, "SELECT count(*) FROM audit_log WHERE action = 'recent'").await;
    assert_eq!(recent, 1);
    assert!(old > 0, "the whole backlog went before the signal: the test proves nothing");
    assert_eq!((BACKLOG - old) % BATCH, 0, "{} removed: a batch was cut short", BACKLOG - old);

    // The next run (the next turn of any replica) finishes the job.
    let (running, shutdown) = start(
        &stack,
        &["--maintenance-interval", "100ms", "--maintenance-batch", "5000", "--maintenance-pause", "1ms"],
    )
    .await;
    test_support::eventually(Duration::from_secs(30), "the rest of the backlog pruned", || {
        let stack = &stack;
        async move { (scalar(stack, "SELECT count(*) FROM audit_log").await == 1).then_some(()) }
    })
    .await;
    stop(running, shutdown).await;
}
