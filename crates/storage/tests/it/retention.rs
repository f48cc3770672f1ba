//! Retention: each family loses exactly what is past its policy, two runs at once do
//! the work once, and a stop ends a run between batches.

use std::time::Duration;

use chrono::{DateTime, Utc};
use storage::retention::{Family, Pace, Policy, Run};
use test_support::TestDb;
use tokio_util::sync::CancellationToken;
use wire_models::AgentId;

const DAY: Duration = Duration::from_secs(86_400);

fn policy() -> Policy {
    Policy {
        resolved_incidents: 90 * DAY,
        inventory_snapshots: 3,
        inventory_age: 30 * DAY,
        presence_transitions: 90 * DAY,
        audit_log: 400 * DAY,
        ledger_window: 8 * DAY,
    }
}

fn days_ago(now: DateTime<Utc>, days: i64) -> DateTime<Utc> {
    now - chrono::Duration::days(days)
}

async fn agent(db: &TestDb) -> AgentId {
    let id = AgentId::random();
    storage::agents::register(&db.pool, &id, "retention-host").await.unwrap();
    id
}

/// An incident of `agent`, resolved `resolved` days ago (None: still open), created
/// `created` days ago.
async fn incident(
    db: &TestDb,
    agent: &AgentId,
    created: i64,
    resolved: Option<i64>,
    now: DateTime<Utc>,
) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO incidents (agent_id, type, status, event_id, fingerprint, dedup_key, created_at, resolved_at)
         VALUES ($1, 'test', $2, gen_random_uuid(), md5(random()::text), md5(random()::text), $3, $4)
         RETURNING id",
    )
    .bind(agent.as_str())
    .bind(if resolved.is_some() { "resolved" } else { "new" })
    .bind(days_ago(now, created))
    .bind(resolved.map(|d| days_ago(now, d)))
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

async fn snapshot(db: &TestDb, agent: &AgentId, age_days: i64, now: DateTime<Utc>) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO agents_inventory (agent_id, hash, data, collected_at, created_at)
         VALUES ($1, encode(sha256(random()::text::bytea), 'hex'), '{}', $2, $2) RETURNING id",
    )
    .bind(agent.as_str())
    .bind(days_ago(now, age_days))
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

async fn transition(db: &TestDb, agent: &AgentId, age_days: i64, now: DateTime<Utc>) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO presence_transitions (agent_id, state, changed_at, threshold_secs, reason)
         VALUES ($1, 'online', $2, 30, 'test') RETURNING id",
    )
    .bind(agent.as_str())
    .bind(days_ago(now, age_days))
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

async fn audit(db: &TestDb, age_days: i64, now: DateTime<Utc>) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO audit_log (request_id, actor, action, started_at) VALUES (gen_random_uuid(), 'a@b', 'test', $1)
         RETURNING id",
    )
    .bind(days_ago(now, age_days))
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

async fn ids(db: &TestDb, table: &str) -> Vec<i64> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT id FROM {table} ORDER BY id")))
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

const PACE: Pace = Pace { batch: 2, pause: Duration::from_millis(1) };

#[tokio::test]
async fn each_retention_removes_exactly_what_is_past_it() {
    let db = TestDb::create().await;
    let now = Utc::now();
    let (a, b) = (agent(&db).await, agent(&db).await);

    // Incidents: only those resolved more than 90 days ago go; an old open one stays.
    let old_resolved =
        [incident(&db, &a, 200, Some(91), now).await, incident(&db, &b, 120, Some(100), now).await];
    let kept_incidents = vec![
        incident(&db, &a, 300, None, now).await,
        incident(&db, &a, 200, Some(89), now).await,
        incident(&db, &b, 1, Some(0), now).await,
    ];
    // Inventory: agent a has 6 snapshots, 4 of them older than 30 days: the latest 3 stay
    // whatever their age, and so does every one younger than 30 days.
    let a_snaps = [
        snapshot(&db, &a, 60, now).await,
        snapshot(&db, &a, 50, now).await,
        snapshot(&db, &a, 40, now).await,
        snapshot(&db, &a, 35, now).await,
        snapshot(&db, &a, 10, now).await,
        snapshot(&db, &a, 5, now).await,
    ];
    // Agent b has only old snapshots, 2 of them: fewer than 3, so both stay.
    let b_snaps = [snapshot(&db, &b, 100, now).await, snapshot(&db, &b, 90, now).await];
    let transitions = [transition(&db, &a, 91, now).await, transition(&db, &a, 89, now).await];
    let audits = [audit(&db, 401, now).await, audit(&db, 399, now).await];
    let untouched_before =
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM agents").fetch_one(&db.pool).await;

    let stop = CancellationToken::new();
    let Run::Done { pruned, stopped, .. } =
        storage::retention::run(&db.pool, &policy(), now, PACE, &stop).await.unwrap()
    else {
        panic!("the run was skipped with nobody else running");
    };
    assert!(!stopped);

    let mut expected_incidents = kept_incidents.clone();
    expected_incidents.sort_unstable();
    assert_eq!(ids(&db, "incidents").await, expected_incidents);
    assert!(old_resolved.iter().all(|id| !expected_incidents.contains(id)));
    // a's latest 3 are 35, 10 and 5 days old: of the rest, 60, 50 and 40 days old are
    // past 30 days and go.
    let mut expected_inventory = vec![a_snaps[3], a_snaps[4], a_snaps[5], b_snaps[0], b_snaps[1]];
    expected_inventory.sort_unstable();
    assert_eq!(ids(&db, "agents_inventory").await, expected_inventory);
    assert_eq!(ids(&db, "presence_transitions").await, vec![transitions[1]]);
    assert_eq!(ids(&db, "audit_log").await, vec![audits[1]]);
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM agents").fetch_one(&db.pool).await.unwrap(),
        untouched_before.unwrap()
    );

    // The report: rows and bytes per table, and the oldest row each kept.
    let by_family = |family: Family| pruned.iter().find(|p| p.family == family).unwrap().clone();
    assert_eq!(by_family(Family::ResolvedIncidents).removed.rows, 2);
    assert_eq!(by_family(Family::InventoryHistory).removed.rows, 3);
    assert_eq!(by_family(Family::PresenceTransitions).removed.rows, 1);
    assert_eq!(by_family(Family::AuditLog).removed.rows, 1);
    assert!(pruned.iter().all(|p| p.removed.rows == 0 || p.removed.bytes > 0));
    let oldest_audit = by_family(Family::AuditLog).oldest_kept.unwrap();
    assert!((oldest_audit - days_ago(now, 399)).num_seconds().abs() < 2, "{oldest_audit}");

    // Nothing more to do on a second run; a zero retention keeps everything.
    let Run::Done { pruned, .. } =
        storage::retention::run(&db.pool, &policy(), now, PACE, &stop).await.unwrap()
    else {
        panic!("skipped");
    };
    assert!(pruned.iter().all(|p| p.removed.rows == 0), "{pruned:?}");
    let keep_all = Policy {
        resolved_incidents: Duration::ZERO,
        inventory_snapshots: 0,
        inventory_age: Duration::ZERO,
        presence_transitions: Duration::ZERO,
        audit_log: Duration::ZERO,
        ledger_window: Duration::ZERO,
    };
    let far_future = now + chrono::Duration::days(10_000);
    storage::retention::run(&db.pool, &keep_all, far_future, PACE, &stop).await.unwrap();
    assert_eq!(ids(&db, "audit_log").await, vec![audits[1]]);
    assert_eq!(ids(&db, "incidents").await, expected_incidents);
}

#[tokio::test]
async fn two_runs_at_once_do_the_work_once_and_a_stop_ends_a_run_between_batches() {
    let db = TestDb::create().await;
    let now = Utc::now();
    sqlx::query(
        "INSERT INTO audit_log (request_id, actor, action, started_at)
         SELECT gen_random_uuid(), 'a@b', 'test', $1 FROM generate_series(1, 400)",
    )
    .bind(days_ago(now, 500))
    .execute(&db.pool)
    .await
    .unwrap();
    let slow = Pace { batch: 10, pause: Duration::from_millis(20) };
    let stop = CancellationToken::new();
    let policy = policy();
    let (first, second) = tokio::join!(storage::retention::run(&db.pool, &policy, now, slow, &stop), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        storage::retention::run(&db.pool, &policy, now, slow, &stop).await
    });
    let (first, second) = (first.unwrap(), second.unwrap());
    assert!(matches!(first, Run::Done { stopped: false, .. }), "{first:?}");
    assert!(matches!(second, Run::Skipped), "{second:?}");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log").fetch_one(&db.pool).await.unwrap();
    assert_eq!(left, 0);
    // The lock went with the run: the next one runs.
    assert!(matches!(
        storage::retention::run(&db.pool, &policy, now, slow, &stop).await.unwrap(),
        Run::Done { .. }
    ));

    // Stopped mid-run: it ends after the statement under way, every batch whole.
    sqlx::query(
        "INSERT INTO audit_log (request_id, actor, action, started_at)
         SELECT gen_random_uuid(), 'a@b', 'test', $1 FROM generate_series(1, 400)",
    )
    .bind(days_ago(now, 500))
    .execute(&db.pool)
    .await
    .unwrap();
    let stopping = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stopping.cancel();
    });
    let started = std::time::Instant::now();
    let run = storage::retention::run(&db.pool, &policy, now, slow, &stop).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    let Run::Done { pruned, stopped, .. } = run else { panic!("skipped") };
    assert!(stopped);
    let removed: u64 = pruned.iter().map(|p| p.removed.rows).sum();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log").fetch_one(&db.pool).await.unwrap();
    assert!(removed > 0 && removed < 400, "{removed}");
    assert_eq!(removed % 10, 0, "batches are whole");
    assert_eq!(u64::try_from(left).unwrap(), 400 - removed);
}
