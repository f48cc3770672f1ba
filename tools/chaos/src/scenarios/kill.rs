//! Scenario 1: two ingestors share the durable consumer; every few seconds one of them
//! is SIGKILLed (no chance to finish or hand anything back) and started again. Every
//! acknowledged event must still be stored exactly once.

use super::{Ctx, Outcome, Scenario, conclude, jittered};
use crate::accounting::Accounting;
use crate::cluster::{Cluster, ClusterOptions, Kind};
use crate::load::{Load, LoadPlan};

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<Accounting> {
    let options =
        ClusterOptions { ingestors: 2, fleet: ctx.sizes.fleet, probes: 0, ..ClusterOptions::default() };
    let mut cluster =
        Cluster::start(Scenario::Kill.dir_name(), &ctx.run_dir, &ctx.bins, &ctx.secrets, &options).await?;
    let outcome = body(&mut cluster, ctx).await;
    Ok(conclude(cluster, Scenario::Kill.label(), outcome).await)
}

async fn body(cluster: &mut Cluster, ctx: &Ctx) -> anyhow::Result<Outcome> {
    let plan = LoadPlan::new(ctx.sizes.kill_events, ctx.sizes.kill_rate);
    let load = Load::start(cluster.fleet_bus.clone(), cluster.fleet.clone(), cluster.stranger.clone(), plan)?;
    let ingestors = cluster.names(Kind::Ingestor);
    let mut outcome = Outcome::default();
    let mut kills = 0usize;
    let mut stored_at_kills = Vec::new();
    // Kill while events are still being published, and at least twice.
    while !load.is_finished() || kills < 2 {
        tokio::time::sleep(jittered(ctx.sizes.kill_every)).await;
        let victim = &ingestors[kills % ingestors.len()];
        stored_at_kills.push(cluster.stored().await?);
        cluster.kill(victim).await?;
        kills += 1;
        cluster.restart(victim).await?;
    }
    outcome.ledger = load.finish().await?;
    let last = stored_at_kills.last().copied().unwrap_or(0);
    outcome.note(format!(
        "{kills} SIGKILLs alternating between {} ingestors (each restarted), about every {:?}; \
         the last one with {last} events stored",
        ingestors.len(),
        ctx.sizes.kill_every
    ));
    outcome.check(kills >= 2, format!("only {kills} kills happened"));
    let mid_run = stored_at_kills.iter().filter(|&&n| n > 0 && (n as u64) < ctx.sizes.kill_events).count();
    outcome.check(mid_run >= 1, "no kill landed while events were being ingested");
    Ok(outcome)
}
