//! Scenario 6: on a three-node NATS cluster (every stream and the bucket on all three),
//! the node that leads the events stream is SIGKILLed mid-run and started again after
//! the outage. Nobody restarts the services: their connections move to the other nodes,
//! a new leader takes the stream, ingest resumes, presence stays right (no flood of
//! false offlines while the node is down), and the accounting is exact.

use std::time::Instant;

use super::{
    Ctx, NATS_RECONNECT, Outcome, Scenario, against_target, cluster_fault_begins, conclude, events_leader,
    ingest_resumed,
};
use crate::accounting::Accounting;
use crate::cluster::{Cluster, ClusterOptions, presence_bound};

/// Nodes in the cluster.
const NODES: usize = 3;

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<Accounting> {
    let options =
        ClusterOptions { fleet: ctx.sizes.fleet, probes: 1, nats_nodes: NODES, ..ClusterOptions::default() };
    let mut cluster =
        Cluster::start(Scenario::Leader.dir_name(), &ctx.run_dir, &ctx.bins, &ctx.secrets, &options).await?;
    let outcome = body(&mut cluster, ctx).await;
    Ok(conclude(cluster, Scenario::Leader.label(), outcome).await)
}

async fn body(cluster: &mut Cluster, ctx: &Ctx) -> anyhow::Result<Outcome> {
    let (load, leader, acked_before) = cluster_fault_begins(cluster, ctx).await?;
    let mut outcome = Outcome::default();
    cluster.stack.node(leader).kill().await;
    let killed = Instant::now();
    let resumed = ingest_resumed(cluster, killed).await?;
    let new_leader = events_leader(cluster).await?;
    outcome.note(format!(
        "node n{leader}, the events stream's leader, SIGKILLed with {acked_before} events acknowledged; \
         n{new_leader} leads now; ingest resumed after {}",
        against_target(resumed)
    ));
    outcome.check(new_leader != leader, format!("n{leader} still leads the events stream while down"));

    let outage = ctx.sizes.nats_outage.saturating_sub(killed.elapsed());
    tokio::time::sleep(outage).await;
    cluster.stack.node(leader).restart().await;
    let restarted = Instant::now();
    outcome.note(format!("n{leader} restarted after {:.1}s", killed.elapsed().as_secs_f64()));

    // The cluster kept serving: the probes count from the kill, with one reconnect.
    let probe = cluster.fault_over(0, killed).await?;
    outcome.presence("the leader's loss", probe, presence_bound() + NATS_RECONNECT);
    outcome.ledger = load.finish().await?;

    let ready = outcome.all_ready(cluster, "the leader's loss").await;
    outcome.note(format!(
        "{ready} services ready without a restart; n{leader} back for {:.1}s at the end",
        restarted.elapsed().as_secs_f64()
    ));
    Ok(outcome)
}
