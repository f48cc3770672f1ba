//! The eight fault scenarios. Each starts a cluster of its own, runs simulated agents
//! under load, injects its fault, and ends in the exact accounting of
//! [`crate::accounting`] plus its own checks (presence bounds, exit codes, latency).

mod analyzer;
mod deps;
mod kill;
mod leader;
mod nats;
mod partition;
mod rolling;
mod sigterm;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::accounting::{self, Accounting, Observed};
use crate::binaries::Binaries;
use crate::cluster::{Cluster, ProbeResult};
use crate::load::{Ledger, Load, LoadPlan};
use crate::secrets::Secrets;

/// The scenarios, in the order a full run goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// SIGKILL one of two ingestors every few seconds, restarting it each time.
    Kill,
    /// Restart the NATS server mid-run.
    Nats,
    /// Cut Postgres, then Redis, mid-run.
    Deps,
    /// SIGTERM every service mid-run, then restart them.
    Sigterm,
    /// The ai-analyzer gone: analyze answers 503 at once, the rest carries on.
    Analyzer,
    /// On a three-node cluster, SIGKILL the node leading the events stream mid-run.
    Leader,
    /// A rolling restart of a three-node cluster under load.
    Rolling,
    /// On a three-node cluster, cut the node leading the events stream off from its
    /// peers and its clients mid-run, then let it back in.
    Partition,
}

impl Scenario {
    pub const ALL: [Scenario; 8] = [
        Scenario::Kill,
        Scenario::Nats,
        Scenario::Deps,
        Scenario::Sigterm,
        Scenario::Analyzer,
        Scenario::Leader,
        Scenario::Rolling,
        Scenario::Partition,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Scenario::Kill => "1 sigkill-ingestors",
            Scenario::Nats => "2 nats-restart",
            Scenario::Deps => "3 postgres-redis-outage",
            Scenario::Sigterm => "4 sigterm-everything",
            Scenario::Analyzer => "5 analyzer-gone",
            Scenario::Leader => "6 cluster-leader-loss",
            Scenario::Rolling => "7 cluster-rolling-restart",
            Scenario::Partition => "8 cluster-partition",
        }
    }

    fn dir_name(self) -> &'static str {
        match self {
            Scenario::Kill => "1-kill",
            Scenario::Nats => "2-nats",
            Scenario::Deps => "3-deps",
            Scenario::Sigterm => "4-sigterm",
            Scenario::Analyzer => "5-analyzer",
            Scenario::Leader => "6-leader",
            Scenario::Rolling => "7-rolling",
            Scenario::Partition => "8-partition",
        }
    }
}

/// How big and how fast.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Events of the kill scenario.
    pub kill_events: u64,
    /// Events per second in the kill scenario.
    pub kill_rate: f64,
    /// Events of each other scenario.
    pub events: u64,
    /// Events per second in the other scenarios.
    pub rate: f64,
    /// Agents in the bulk fleet.
    pub fleet: usize,
    /// Time between two SIGKILLs (jittered by up to a third).
    pub kill_every: Duration,
    /// How long Postgres and Redis stay cut.
    pub outage: Duration,
    /// How long the NATS server stays down.
    pub nats_outage: Duration,
}

/// What every scenario gets.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub run_dir: PathBuf,
    pub bins: Binaries,
    pub secrets: Secrets,
    pub sizes: Sizes,
}

/// Runs one scenario to its accounting; an error or a panic becomes a failed row.
pub async fn run(scenario: Scenario, ctx: &Ctx) -> Accounting {
    let started = Instant::now();
    let ctx2 = ctx.clone();
    let task = tokio::spawn(async move {
        match scenario {
            Scenario::Kill => kill::run(&ctx2).await,
            Scenario::Nats => nats::run(&ctx2).await,
            Scenario::Deps => deps::run(&ctx2).await,
            Scenario::Sigterm => sigterm::run(&ctx2).await,
            Scenario::Analyzer => analyzer::run(&ctx2).await,
            Scenario::Leader => leader::run(&ctx2).await,
            Scenario::Rolling => rolling::run(&ctx2).await,
            Scenario::Partition => partition::run(&ctx2).await,
        }
    });
    let mut accounting = match task.await {
        Ok(Ok(accounting)) => accounting,
        Ok(Err(err)) => Accounting::aborted(scenario.label(), &err, started.elapsed()),
        Err(err) => {
            let message = match err.try_into_panic() {
                Ok(panic) => panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "a panic".to_owned()),
                Err(err) => err.to_string(),
            };
            Accounting::aborted(scenario.label(), &anyhow::anyhow!("panicked: {message}"), started.elapsed())
        }
    };
    accounting.elapsed = started.elapsed();
    accounting
}

/// What a scenario body hands back before the accounting.
#[derive(Default)]
struct Outcome {
    ledger: Ledger,
    notes: Vec<String>,
    failures: Vec<String>,
}

impl Outcome {
    fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    fn check(&mut self, ok: bool, failure: impl Into<String>) {
        if !ok {
            self.failures.push(failure.into());
        }
    }

    /// Records how long the probe agents took to be right again, against `bound`.
    fn presence(&mut self, what: &str, result: ProbeResult, bound: Duration) {
        self.note(format!(
            "after {what}: silenced agent offline in {:.1}s, new agent online in {:.1}s (bound {:.0}s)",
            result.leaving_offline_after.as_secs_f64(),
            result.newcomer_online_after.as_secs_f64(),
            bound.as_secs_f64()
        ));
        self.check(
            result.leaving_offline_after <= bound,
            format!(
                "after {what} the silenced agent went offline only after {:?}",
                result.leaving_offline_after
            ),
        );
        self.check(
            result.newcomer_online_after <= bound,
            format!("after {what} the new agent came online only after {:?}", result.newcomer_online_after),
        );
    }

    /// Checks that every service answers `/readyz` now, `after` the fault, although
    /// nobody restarted it; returns how many do.
    async fn all_ready(&mut self, cluster: &Cluster, after: &str) -> usize {
        let mut ready = 0;
        for name in cluster.all_names() {
            let is_ready = cluster.is_ready(&name).await;
            self.check(is_ready, format!("{name} is not ready after {after}"));
            ready += usize::from(is_ready);
        }
        ready
    }
}

/// The target for ingest to resume after a cluster node is lost (reported against it).
const RESUME_TARGET: Duration = Duration::from_secs(5);
/// Past this, ingest is taken as stuck: the scenario fails.
const RESUME_LIMIT: Duration = Duration::from_secs(60);
/// A client's reconnect to another node, as in the single-server restart.
const NATS_RECONNECT: Duration = Duration::from_secs(2);

/// How long after `lost` (a node of the cluster gone) ingest went on: rows arrive in
/// Postgres beyond what was already on its way.
async fn ingest_resumed(cluster: &Cluster, lost: Instant) -> anyhow::Result<Duration> {
    // Whatever the ingestor had fetched before the loss may still commit; ingest has
    // resumed once rows arrive beyond that.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = cluster.stored().await?;
    loop {
        if cluster.stored().await? > settled + 100 {
            return Ok(lost.elapsed());
        }
        anyhow::ensure!(lost.elapsed() < RESUME_LIMIT, "ingest did not resume within {RESUME_LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `resumed` met [`RESUME_TARGET`], as the notes say it.
fn against_target(resumed: Duration) -> String {
    format!(
        "{:.1}s (target {:.0}s: {})",
        resumed.as_secs_f64(),
        RESUME_TARGET.as_secs_f64(),
        if resumed <= RESUME_TARGET { "met" } else { "missed" }
    )
}

/// The start the cluster faults share: the SIGKILL scenario's load (100,000 events by
/// default) running and 40% through, so faults on a cluster compare with each other and
/// with a single server's. Returns the load, the node leading the events stream (the
/// one to fault) and the events acknowledged so far; the probes' fault has begun.
async fn cluster_fault_begins(cluster: &mut Cluster, ctx: &Ctx) -> anyhow::Result<(Load, usize, u64)> {
    let plan = LoadPlan::new(ctx.sizes.kill_events, ctx.sizes.kill_rate);
    let load = Load::start(cluster.fleet_bus.clone(), cluster.fleet.clone(), cluster.stranger.clone(), plan)?;
    load.wait_fraction(0.4).await;
    let leader = events_leader(cluster).await?;
    let acked = load.acked();
    cluster.fault_begins(0);
    Ok((load, leader, acked))
}

/// The index of the node leading the events stream, as the nodes the harness reaches
/// see it (nodes are named `n0`, `n1`, ...).
async fn events_leader(cluster: &Cluster) -> anyhow::Result<usize> {
    let js = cluster.jetstream().await;
    let deadline = Instant::now() + RESUME_LIMIT;
    loop {
        let leader = async {
            let mut stream = js.get_stream(&cluster.stack.topology.events_stream).await.ok()?;
            let info = stream.info().await.ok()?;
            info.cluster.as_ref()?.leader.as_deref()?.strip_prefix('n')?.parse::<usize>().ok()
        };
        // A stream without a leader leaves the request unanswered until the client's
        // timeout (5 s): asking again sooner tells when the new leader came.
        if let Some(leader) = tokio::time::timeout(Duration::from_secs(1), leader).await.ok().flatten() {
            return Ok(leader);
        }
        anyhow::ensure!(Instant::now() < deadline, "the events stream has no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Drains, reads what was stored and dead-lettered, and reconciles it with the ledger;
/// then stops the cluster (whose own failures count too).
async fn conclude(cluster: Cluster, label: &str, outcome: anyhow::Result<Outcome>) -> Accounting {
    let mut accounting = match account(&cluster, label, outcome).await {
        Ok(accounting) => accounting,
        Err(err) => Accounting::aborted(label, &err, Duration::ZERO),
    };
    for failure in cluster.finish().await {
        accounting.fail(failure);
    }
    accounting
}

async fn account(
    cluster: &Cluster,
    label: &str,
    outcome: anyhow::Result<Outcome>,
) -> anyhow::Result<Accounting> {
    let mut outcome = outcome?;
    cluster.drain(Duration::from_secs(180)).await?;
    let js = cluster.jetstream().await;
    let topology = &cluster.stack.topology;
    let observed =
        Observed::read(&cluster.stack.db.pool, &js, &topology.dlq_stream, &topology.incidents_stream).await?;
    let mut accounting = accounting::reconcile(label, &outcome.ledger, &observed);
    outcome.failures.extend(cluster.speakers_never_offline().await?);
    accounting.notes.append(&mut outcome.notes);
    accounting.failures.append(&mut outcome.failures);
    Ok(accounting)
}

/// Sleeps `base` give or take a third, so kills do not fall into a rhythm.
fn jittered(base: Duration) -> Duration {
    use rand::Rng;
    let third = base.as_millis() as u64 / 3;
    let jitter = rand::rng().random_range(0..=third.saturating_mul(2));
    (base + Duration::from_millis(jitter)).saturating_sub(Duration::from_millis(third))
}
