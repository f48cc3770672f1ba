//! Scenario 5: the ai-analyzer disappears (SIGKILL). Asking for an analysis answers
//! 503 within a second, not after the analyze timeout; ingestion and everything else
//! carry on; once an analyzer is back, analysis works again.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use super::{Ctx, Outcome, Scenario, conclude};
use crate::accounting::Accounting;
use crate::cluster::{Cluster, ClusterOptions, Kind};
use crate::load::{Load, LoadPlan};

/// The promise: "no analyzer" is answered at once.
const QUICK: Duration = Duration::from_secs(1);

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<Accounting> {
    let options = ClusterOptions { fleet: ctx.sizes.fleet, probes: 0, ..ClusterOptions::default() };
    let mut cluster =
        Cluster::start(Scenario::Analyzer.dir_name(), &ctx.run_dir, &ctx.bins, &ctx.secrets, &options)
            .await?;
    let outcome = body(&mut cluster, ctx).await;
    Ok(conclude(cluster, Scenario::Analyzer.label(), outcome).await)
}

async fn analyze(cluster: &Cluster, incident: i64) -> anyhow::Result<(StatusCode, Duration)> {
    let started = Instant::now();
    let (status, _) = cluster
        .api_post(&format!("/api/v1/incidents/{incident}/analyze"), &cluster.admin_token, &json!({}))
        .await?;
    Ok((status, started.elapsed()))
}

async fn body(cluster: &mut Cluster, ctx: &Ctx) -> anyhow::Result<Outcome> {
    let plan = LoadPlan::new(ctx.sizes.events, ctx.sizes.rate);
    let load = Load::start(cluster.fleet_bus.clone(), cluster.fleet.clone(), cluster.stranger.clone(), plan)?;
    let mut outcome = Outcome::default();
    load.wait_fraction(0.2).await;

    let incident: i64 = first_critical_incident(cluster).await?;
    let (status, took) = analyze(cluster, incident).await?;
    outcome.check(status == StatusCode::OK, format!("analyze with the analyzer running answered {status}"));
    outcome
        .note(format!("analyze with the analyzer running: {status} in {:.0} ms", took.as_secs_f64() * 1e3));

    let analyzer = cluster.names(Kind::Analyzer).remove(0);
    cluster.kill(&analyzer).await?;
    let stored_before = cluster.stored().await?;
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let (status, took) = analyze(cluster, incident).await?;
        slowest = slowest.max(took);
        outcome.check(
            status == StatusCode::SERVICE_UNAVAILABLE,
            format!("analyze without an analyzer answered {status}, not 503"),
        );
        outcome.check(took < QUICK, format!("analyze without an analyzer took {took:?}"));
    }
    let load_running = !load.is_finished();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stored_after = cluster.stored().await?;
    outcome.note(format!(
        "analyzer SIGKILLed: 5 x 503, slowest {:.0} ms; {} events ingested in the next 2 s",
        slowest.as_secs_f64() * 1e3,
        stored_after - stored_before
    ));
    if load_running {
        outcome.check(stored_after > stored_before, "ingestion stopped while the analyzer was gone");
    }
    for name in cluster.all_names().into_iter().filter(|n| *n != analyzer) {
        let ready = cluster.is_ready(&name).await;
        outcome.check(ready, format!("{name} is not ready without the analyzer"));
    }

    cluster.restart(&analyzer).await?;
    let (status, _) = analyze(cluster, incident).await?;
    outcome
        .check(status == StatusCode::OK, format!("analyze after the analyzer came back answered {status}"));
    outcome.ledger = load.finish().await?;
    let (with_key, without_key) = (cluster.mock_ai.calls_with_key(), cluster.mock_ai.calls_without_key());
    outcome.note(format!("the AI provider was called {with_key} times with the key, {without_key} without"));
    outcome.check(with_key > 0 && without_key == 0, "the analyzer did not call the AI provider with its key");
    Ok(outcome)
}

/// The first critical incident the load opened.
async fn first_critical_incident(cluster: &Cluster) -> anyhow::Result<i64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let id: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM incidents WHERE type <> $1 AND is_critical ORDER BY id LIMIT 1",
        )
        .bind(storage::incidents::OFFLINE_INCIDENT_TYPE)
        .fetch_optional(&cluster.stack.db.pool)
        .await?;
        if let Some(id) = id {
            return Ok(id);
        }
        anyhow::ensure!(Instant::now() < deadline, "no incident was opened within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
