//! Scenario `lifecycle`: a simulated month. Every day of it, a day's events (dated that
//! day) go through the ingest statement, incidents are resolved, presence changes and
//! actions are recorded; then the maintenance run of that day (the clock advanced for
//! it) makes and drops the ledger's partitions and prunes the histories. The ledger and
//! the histories should level off once their retention is reached instead of growing
//! with the month.

use std::time::Duration;

use chrono::{DateTime, Utc};
use storage::incidents::NewEvent;
use storage::retention::{Pace, Policy, Run};
use test_support::TestDb;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wire_models::{AgentId, Severity};

use crate::report::Row;

const DAY: Duration = Duration::from_secs(86_400);
const AGENTS: usize = 200;

/// Retention shortened so that a month shows every family's steady state.
fn policy() -> Policy {
    Policy {
        resolved_incidents: 7 * DAY,
        inventory_snapshots: 3,
        inventory_age: 5 * DAY,
        presence_transitions: 7 * DAY,
        audit_log: 10 * DAY,
        ledger_window: 8 * DAY,
    }
}

/// (rows, bytes) of the ledger and of the other histories together.
async fn sizes(db: &TestDb) -> anyhow::Result<((i64, i64), (i64, i64))> {
    let ledger: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM ingested_events),
                (SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)), 0)::bigint
                 FROM pg_inherits i WHERE i.inhparent = 'ingested_events'::regclass)",
    )
    .fetch_one(&db.pool)
    .await?;
    let history: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM incidents) + (SELECT count(*) FROM agents_inventory)
                + (SELECT count(*) FROM presence_transitions) + (SELECT count(*) FROM audit_log),
                (pg_total_relation_size('incidents') + pg_total_relation_size('agents_inventory')
                 + pg_total_relation_size('presence_transitions') + pg_total_relation_size('audit_log'))::bigint",
    )
    .fetch_one(&db.pool)
    .await?;
    Ok((ledger, history))
}

/// One simulated day: `events` events dated `day`, then the day's maintenance.
async fn day(db: &TestDb, agents: &[AgentId], day: DateTime<Utc>, events: usize) -> anyhow::Result<()> {
    let kind = wire_models::EventKind::parse("service_failed").map_err(anyhow::Error::msg)?;
    let batch: Vec<NewEvent> = (0..events)
        .map(|i| {
            let agent = &agents[i % agents.len()];
            // A few distinct problems per agent: most events recur into an open incident.
            let key = format!("{agent}-{}-{}", i % 3, day.date_naive());
            NewEvent {
                event_id: Uuid::now_v7(),
                agent_id: agent.clone(),
                kind: kind.clone(),
                severity: Severity::Error,
                source: "nginx.service".into(),
                raw_error: "nginx.service: Main process exited, code=exited, status=1/FAILURE".into(),
                context: serde_json::json!({"unit": "nginx.service"}),
                occurred_at: day + chrono::Duration::seconds(i64::try_from(i % 86_000).unwrap_or(0)),
                fingerprint: key.clone(),
                dedup_key: key,
            }
        })
        .collect();
    for chunk in batch.chunks(5000) {
        storage::incidents::ingest_events(&db.pool, chunk).await?;
    }
    // The day's incidents are resolved by its end; presence flaps twice per agent; one
    // inventory change and one action per agent.
    sqlx::query("UPDATE incidents SET status = 'resolved', resolved_at = $1 WHERE status <> 'resolved'")
        .bind(day + chrono::Duration::hours(23))
        .execute(&db.pool)
        .await?;
    let ids: Vec<&str> = agents.iter().map(AgentId::as_str).collect();
    sqlx::query(
        "INSERT INTO presence_transitions (agent_id, state, changed_at, threshold_secs, reason)
         SELECT a, s, $2, 30, 'bench' FROM unnest($1::text[]) a, unnest(ARRAY['offline', 'online']) s",
    )
    .bind(&ids)
    .bind(day)
    .execute(&db.pool)
    .await?;
    sqlx::query(
        "INSERT INTO agents_inventory (agent_id, hash, data, collected_at, created_at)
         SELECT a, encode(sha256((a || $2::text)::bytea), 'hex'),
                jsonb_build_object('packages', (SELECT jsonb_agg('package-' || p) FROM generate_series(1, 200) p)), $2, $2
         FROM unnest($1::text[]) a",
    )
    .bind(&ids)
    .bind(day)
    .execute(&db.pool)
    .await?;
    sqlx::query(
        "INSERT INTO audit_log (request_id, actor, action, agent_id, command, outcome, started_at)
         SELECT gen_random_uuid(), 'bench', 'execute', a, 'ping', 'ok', $2 FROM unnest($1::text[]) a",
    )
    .bind(&ids)
    .bind(day)
    .execute(&db.pool)
    .await?;
    let pace = Pace { batch: 1000, pause: Duration::ZERO };
    let run =
        storage::retention::run(&db.pool, &policy(), day + DAY, pace, &CancellationToken::new()).await?;
    anyhow::ensure!(
        matches!(run, Run::Done { stopped: false, .. }),
        "the day's maintenance did not run: {run:?}"
    );
    // A simulated day lasts seconds; autovacuum would have had a day to make the pruned
    // rows' space reusable. A plain VACUUM stands in for it (nothing is given back to the
    // system; the space is reused by the next days' rows).
    sqlx::query("VACUUM incidents, agents_inventory, presence_transitions, audit_log")
        .execute(&db.pool)
        .await?;
    Ok(())
}

pub(crate) async fn run(events_per_day: usize, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let db = TestDb::create().await;
    let agents: Vec<AgentId> = (0..AGENTS).map(|_| AgentId::random()).collect();
    let named: Vec<(AgentId, String)> = agents.iter().map(|a| (a.clone(), format!("month-{a}"))).collect();
    storage::agents::register_many(&db.pool, &named).await?;
    let start = Utc::now() - chrono::Duration::days(31);
    // The month's first days need their partitions before any event is dated in them.
    storage::ledger::maintain(&db.pool, start, policy().ledger_window).await?;
    let mut at = Vec::new();
    for d in 0..30 {
        day(&db, &agents, start + chrono::Duration::days(d), events_per_day).await?;
        at.push(sizes(&db).await?);
    }
    let (ledger10, history10) = at[9];
    let (ledger30, history30) = at[29];
    let mib = |b: i64| b as f64 / (1024.0 * 1024.0);
    let name = format!("simulated month ({events_per_day} events a day)");
    // Rows on day 10 and day 30 (steady: not growing) and bytes on day 30, for each of
    // the ledger and the other histories; the histories' bytes have a floor too.
    let mut steady = |what: &str, day10: (i64, i64), day30: (i64, i64), bytes_floor: bool| {
        rows.push(Row::new("lifecycle", &format!("{name}: {what} rows on day 10"), day10.0 as f64, "rows"));
        rows.push(
            Row::new("lifecycle", &format!("{name}: {what} rows on day 30"), day30.0 as f64, "rows")
                .baseline("day 10", day10.0 as f64)
                .floor("<= 1.1x (steady, not growing)", (day30.0 as f64) <= 1.1 * day10.0 as f64),
        );
        let bytes = Row::new("lifecycle", &format!("{name}: {what} on day 30"), mib(day30.1), "MiB")
            .baseline("day 10", mib(day10.1));
        rows.push(if bytes_floor {
            bytes.floor("<= 1.25x", mib(day30.1) <= 1.25 * mib(day10.1))
        } else {
            bytes
        });
    };
    steady("ledger", ledger10, ledger30, false);
    steady("history", history10, history30, true);
    rows.push(Row::new(
        "lifecycle",
        &format!("{name}: ledger rows without retention (30 days)"),
        (30 * events_per_day) as f64,
        "rows",
    ));
    Ok(())
}
