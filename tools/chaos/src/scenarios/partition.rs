//! Scenario 8: on a three-node NATS cluster (every stream and the bucket on all three),
//! the node that leads the events stream is cut off mid-run from the other two and from
//! its clients (proxies on loopback, `Stack::partition`) and let back in after the
//! outage. Unlike a SIGKILL, the node keeps running with its state: on its side of the
//! cut it may still take itself for the leader, and once back it must give way to the
//! leader the other two elected and take from it what it missed. Nobody restarts the
//! services: their connections to the cut-off node drop and move to the other two,
//! ingest resumes, presence stays right, and the accounting is exact.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull;

use super::{
    Ctx, NATS_RECONNECT, Outcome, Scenario, against_target, cluster_fault_begins, conclude, events_leader,
    ingest_resumed,
};
use crate::accounting::Accounting;
use crate::cluster::{Cluster, ClusterOptions, presence_bound};

/// Nodes in the cluster.
const NODES: usize = 3;
/// Past this, the healed node is taken as behind for good: the scenario fails.
const CURRENT_LIMIT: Duration = Duration::from_secs(30);
/// Past this, the bucket is taken as lost: the scenario fails.
const WATCHABLE_LIMIT: Duration = Duration::from_secs(60);

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<Accounting> {
    let options = ClusterOptions {
        fleet: ctx.sizes.fleet,
        probes: 1,
        nats_nodes: NODES,
        partitionable: true,
        ..ClusterOptions::default()
    };
    let mut cluster =
        Cluster::start(Scenario::Partition.dir_name(), &ctx.run_dir, &ctx.bins, &ctx.secrets, &options)
            .await?;
    let outcome = body(&mut cluster, ctx).await;
    Ok(conclude(cluster, Scenario::Partition.label(), outcome).await)
}

async fn body(cluster: &mut Cluster, ctx: &Ctx) -> anyhow::Result<Outcome> {
    let (load, leader, acked_before) = cluster_fault_begins(cluster, ctx).await?;
    let mut outcome = Outcome::default();
    cluster.stack.partition(leader);
    let cut = Instant::now();
    // The probes start as soon as the bucket can be watched again, while the node is
    // still away; the heal comes once ingest has resumed without it.
    let probing = async {
        let watchable = bucket_watchable(cluster).await?;
        anyhow::Ok((watchable, cluster.fault_over(0, watchable).await?))
    };
    let healing = async {
        let resumed = ingest_resumed(cluster, cut).await?;
        let new_leader = events_leader(cluster).await?;
        let routes = cluster.stack.route_peers(leader).await;
        tokio::time::sleep(ctx.sizes.nats_outage.saturating_sub(cut.elapsed())).await;
        let stale = cluster.stack.stream_leader_seen_by(leader, &cluster.stack.topology.events_stream).await;
        cluster.stack.heal(leader);
        let healed = Instant::now();
        cluster.stack.wait_replicas_current().await;
        anyhow::Ok(Healing {
            resumed,
            new_leader,
            routes,
            stale,
            cut_for: healed.duration_since(cut),
            caught_up: healed.elapsed(),
        })
    };
    let (probed, healing) = tokio::join!(probing, healing);
    let ((watchable, probe), healing) = (probed?, healing?);
    let Healing { resumed, new_leader, routes, stale, cut_for, caught_up } = healing;

    outcome.note(format!(
        "node n{leader}, the events stream's leader, cut off with {acked_before} events acknowledged; \
         n{new_leader} leads for the other two; ingest resumed after {}; the agents bucket could be \
         watched again after {:.1}s",
        against_target(resumed),
        watchable.duration_since(cut).as_secs_f64()
    ));
    outcome.check(new_leader != leader, format!("n{leader} still leads the events stream while cut off"));
    // A route that went round the proxies would have kept the node in the cluster.
    outcome.check(routes.is_empty(), format!("n{leader} kept routes to {routes:?} while cut off"));
    outcome.note(format!(
        "n{leader} let back in after {:.1}s (on its side of the cut it took {} for the leader); \
         every replica current {:.1}s after the heal, with {} events acknowledged; {} Raft \
         step-downs on meeting a higher term (stale leaders giving way, and leaders deposed by \
         the returning node's campaigns)",
        cut_for.as_secs_f64(),
        stale.as_deref().unwrap_or("no node"),
        caught_up.as_secs_f64(),
        load.acked(),
        stepdowns(&cluster.stack)
    ));
    // A tracker whose connection was cut cannot watch the bucket again before JetStream
    // can serve a new watch, and it then gives every agent a full threshold (as after a
    // single server's restart, scenario 2): the bound counts from then, with one
    // reconnect on top.
    outcome.presence("the bucket could be watched again", probe, presence_bound() + NATS_RECONNECT);
    outcome.ledger = load.finish().await?;

    let ready = outcome.all_ready(cluster, "the partition").await;
    // The node's return can start elections of its own (its term moved on while it was
    // away), during which a stream answers no one for a moment.
    let since = Instant::now();
    let behind = loop {
        let behind = cluster.stack.streams_behind_on(leader).await;
        if behind.is_empty() || since.elapsed() >= CURRENT_LIMIT {
            break behind;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    outcome.check(behind.is_empty(), format!("n{leader} is not current on {behind:?} at the end"));
    outcome.note(format!(
        "{ready} services ready without a restart; n{leader} current on every stream at the end \
         (checked in {:.1}s)",
        since.elapsed().as_secs_f64()
    ));
    Ok(outcome)
}

/// When the agents bucket can be watched again: a consumer on its stream can be
/// created, which takes a leader of the stream and of the cluster's metadata among the
/// nodes the harness reaches (the tracker's watch needs both, and either may have been
/// on the node cut off).
async fn bucket_watchable(cluster: &Cluster) -> anyhow::Result<Instant> {
    let js = cluster.jetstream().await;
    let bucket = format!("KV_{}", cluster.stack.topology.agents_bucket);
    let started = Instant::now();
    loop {
        let created = async {
            let stream = js.get_stream(&bucket).await.ok()?;
            // Gone on its own once this check is done with it.
            let config =
                pull::Config { inactive_threshold: Duration::from_secs(5), ..pull::Config::default() };
            stream.create_consumer(config).await.ok()
        };
        // Without a leader a request goes unanswered until the client's timeout (5 s):
        // asking again sooner tells when the leaders came.
        if tokio::time::timeout(Duration::from_secs(1), created).await.ok().flatten().is_some() {
            return Ok(Instant::now());
        }
        anyhow::ensure!(
            started.elapsed() < WATCHABLE_LIMIT,
            "{bucket} could not be watched within {WATCHABLE_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the heal side of the scenario saw.
struct Healing {
    /// Ingest resumed this long after the cut.
    resumed: Duration,
    /// The events stream's leader for the other two.
    new_leader: usize,
    /// The nodes the cut-off node still had a route to.
    routes: Vec<String>,
    /// Whom the cut-off node took for the events stream's leader just before the heal.
    stale: Option<String>,
    /// How long the node was cut off.
    cut_for: Duration,
    /// Every replica current this long after the heal.
    caught_up: Duration,
}

/// Raft step-downs on meeting a higher term, in every node's log so far: a node back
/// from a partition gives way where it was a stale leader, but having campaigned alone
/// it can also depose leaders the other two elected meanwhile, which costs another
/// election.
fn stepdowns(stack: &test_support::Stack) -> usize {
    std::iter::once(&stack.nats)
        .chain(&stack.peers)
        .map(|node| node.log().matches("Detected another leader with higher term").count())
        .sum()
}
