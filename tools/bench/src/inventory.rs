//! Scenario 2: inventory snapshots, 90% of them unchanged: snapshots/s, and rows
//! written must equal the changes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use natsbus::auth::Identity;
use rand::Rng;

use crate::ingest::{prepare, wait_drained};
use crate::report::Row;
use crate::services;

pub(crate) async fn run(agents: usize, per_agent: usize, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let setup = prepare(agents, "bench-inventory").await?;
    // Every agent's first snapshot is new; later ones change with the probability that
    // makes about 90% of all snapshots unchanged.
    let mut reports = Vec::with_capacity(agents * per_agent);
    let mut changes = 0usize;
    let mut last: HashMap<wire_models::AgentId, String> = HashMap::new();
    {
        let mut rng = rand::rng();
        let total = (agents * per_agent) as f64;
        let p_change = ((0.1 * total - agents as f64) / (total - agents as f64).max(1.0)).clamp(0.0, 1.0);
        for round in 0..per_agent {
            for agent in setup.fleet.agents() {
                let change = round > 0 && rng.random_bool(p_change);
                let report = agent.inventory(change);
                let hash = report.snapshot_hash();
                if last.insert(agent.id.clone(), hash.clone()).as_ref() != Some(&hash) {
                    changes += 1;
                }
                reports.push(report);
            }
        }
    }
    let total = reports.len();
    let bus = &setup.bus;
    let published = futures::stream::iter(reports)
        .map(|r| async move { bus.publish_inventory(&r).await })
        .buffered(1024)
        .filter(|r| std::future::ready(r.is_ok()))
        .count()
        .await;
    anyhow::ensure!(published == total, "published {published} of {total} snapshots");

    let ingestor = services::start(
        &setup.stack,
        &Identity::EventIngestor,
        "event-ingestor",
        &[("ADMIN_ADDR", "127.0.0.1:0".into())],
    )
    .await?;
    let t0 = Instant::now();
    wait_drained(
        &setup.stack,
        &setup.stack.topology.inventory_stream,
        "inventory-ingestor",
        Duration::from_secs(600),
    )
    .await?;
    let rate = total as f64 / t0.elapsed().as_secs_f64();
    ingestor.stop().await;
    let written: i64 =
        sqlx::query_scalar("SELECT count(*) FROM agents_inventory").fetch_one(&setup.stack.db.pool).await?;
    let unchanged = 100.0 * (total - changes) as f64 / total as f64;
    rows.push(Row::new("inventory", &format!("drain ({unchanged:.0}% unchanged)"), rate, "snap/s"));
    rows.push(
        Row::new("inventory", "history rows written", written as f64, "rows")
            .baseline("changes published", changes as f64)
            .floor("rows == changes", written as usize == changes),
    );
    Ok(())
}
