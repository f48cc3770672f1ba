//! Scenario 7: a rolling restart of a three-node NATS cluster (every stream and the
//! bucket on all three) under load, as an upgrade would do it: each node in turn is
//! stopped (SIGTERM), started again, and given time to catch up before the next. Nobody
//! restarts the services; the accounting is exact, no agent is taken for offline, and
//! every service is still its first incarnation at the end.

use std::time::Instant;

use super::{Ctx, Outcome, Scenario, conclude};
use crate::accounting::Accounting;
use crate::cluster::{Cluster, ClusterOptions};
use crate::load::{Load, LoadPlan};

const NODES: usize = 3;

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<Accounting> {
    let options =
        ClusterOptions { fleet: ctx.sizes.fleet, probes: 1, nats_nodes: NODES, ..ClusterOptions::default() };
    let mut cluster =
        Cluster::start(Scenario::Rolling.dir_name(), &ctx.run_dir, &ctx.bins, &ctx.secrets, &options).await?;
    let outcome = body(&mut cluster, ctx).await;
    Ok(conclude(cluster, Scenario::Rolling.label(), outcome).await)
}

async fn body(cluster: &mut Cluster, ctx: &Ctx) -> anyhow::Result<Outcome> {
    let plan = LoadPlan::new(ctx.sizes.kill_events, ctx.sizes.kill_rate);
    let load = Load::start(cluster.fleet_bus.clone(), cluster.fleet.clone(), cluster.stranger.clone(), plan)?;
    let mut outcome = Outcome::default();
    load.wait_fraction(0.1).await;
    let started = Instant::now();
    for node in 0..NODES {
        let stopped = Instant::now();
        cluster.stack.node(node).terminate().await;
        tokio::time::sleep(ctx.sizes.nats_outage).await;
        cluster.stack.node(node).start_again().await;
        cluster.stack.wait_replicas_current().await;
        outcome.note(format!(
            "n{node} stopped (SIGTERM), started and caught up in {:.1}s, with {} events acknowledged",
            stopped.elapsed().as_secs_f64(),
            load.acked()
        ));
    }
    outcome.note(format!("rolling restart of {NODES} nodes took {:.1}s", started.elapsed().as_secs_f64()));
    outcome.ledger = load.finish().await?;

    let ready = outcome.all_ready(cluster, "the rolling restart").await;
    outcome.note(format!("{ready} services ready without a restart"));
    Ok(outcome)
}
