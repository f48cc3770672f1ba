//! Scenario 4b: a fleet-wide action (`POST /api/v1/actions`, target a label selector)
//! to N simulated agents, all online, each answering after 0 to 50 ms. Measured from
//! the submission to each agent's result being recorded (the p99 and the last), with
//! the gateway's CPU and peak RSS during the run. The baseline is the same requests
//! sent straight over NATS with the same concurrency and the same agents.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_sim::{RpcBehaviour, RpcMode};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::gateway;
use crate::ingest::prepare;
use crate::proc::Sampler;
use crate::report::{Row, percentile};

/// Requests in flight, for the action and for the baseline.
const CONCURRENCY: usize = 1000;
/// The bound on the p99 from submission to a result, at 10,000 agents.
const P99_BOUND_MS: f64 = 3000.0;

/// The raw NATS round trips to every agent with `CONCURRENCY` in flight: seconds.
async fn raw_nats(
    client: &async_nats::Client,
    subjects: &wire_models::Subjects,
    ids: &[wire_models::AgentId],
) -> anyhow::Result<f64> {
    use futures::StreamExt;
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(ids.iter().cloned())
        .map(|id| {
            let (client, subject) = (client.clone(), subjects.rpc(&id));
            async move {
                let request = crate::actions::ping(10_000);
                client.request(subject, Bytes::from(wire_models::encode(&request)?)).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    anyhow::ensure!(failed == 0, "{failed} raw requests failed");
    Ok(started.elapsed().as_secs_f64())
}

pub(crate) async fn run(agents: usize, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let setup = prepare(agents, &format!("bench-fleet-{agents}")).await?;
    let pool = &setup.stack.db.pool;
    sqlx::query(
        "UPDATE agents SET status = 'online', status_changed_at = now(), last_seen_at = now(),
                           meta_labels = '{\"bench\": \"fleet\"}'",
    )
    .execute(pool)
    .await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let behaviour = RpcBehaviour { jitter: Duration::from_millis(50), ..RpcBehaviour::default() };
    tokio::spawn(Arc::clone(&setup.fleet).serve_rpc(
        setup.bus.clone(),
        behaviour,
        RpcMode::Shared,
        stop.clone(),
    ));
    let gw = gateway::start(&setup.stack).await?;
    let ids: Vec<wire_models::AgentId> = setup.fleet.agents().iter().map(|a| a.id.clone()).collect();
    let client = setup.stack.client().await;
    let subjects = setup.stack.topology.subjects.clone();
    // Warm the responders, then the baseline.
    raw_nats(&client, &subjects, &ids[..ids.len().min(1000)]).await?;
    let raw = raw_nats(&client, &subjects, &ids).await?;

    let http = reqwest::Client::new();
    let mut sampler = Sampler::start(gw.service.pid());
    let submitted = Instant::now();
    let accepted: Value = http
        .post(format!("{}/api/v1/actions", gw.base))
        .bearer_auth(&gw.token)
        .json(&json!({
            "command": "ping", "target": {"selector": "bench=fleet"},
            "max_concurrency": CONCURRENCY, "timeout_ms": 10_000,
        }))
        .send()
        .await?
        .json()
        .await?;
    let accepted_ms = submitted.elapsed().as_secs_f64() * 1000.0;
    let id =
        accepted["action_id"].as_str().ok_or_else(|| anyhow::anyhow!("not accepted: {accepted}"))?.to_owned();
    let deadline = Instant::now() + Duration::from_secs(300);
    let action = loop {
        sampler.sample();
        let action: Value = http
            .get(format!("{}/api/v1/actions/{id}", gw.base))
            .bearer_auth(&gw.token)
            .send()
            .await?
            .json()
            .await?;
        if action["state"] != "running" {
            break action;
        }
        anyhow::ensure!(Instant::now() < deadline, "the action did not end in 300 s: {action}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ended_s = submitted.elapsed().as_secs_f64();
    anyhow::ensure!(action["state"] == "finished", "the action ended {}", action["state"]);
    let ok = action["counts"]["ok"].as_u64().unwrap_or(0);
    anyhow::ensure!(ok == agents as u64, "{ok} of {agents} results were ok: {action}");
    // Each result's time after the action was stored (both clocks are the database's).
    let mut after: Vec<f64> = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM (t.finished_at - a.created_at))::float8 * 1000
         FROM fleet_action_targets t JOIN fleet_actions a ON a.id = t.action_id WHERE a.id = $1::uuid",
    )
    .bind(&id)
    .fetch_all(pool)
    .await?;
    after.sort_by(f64::total_cmp);
    // Counted from the request: the whole submission is added to each result's time
    // after the action's row, which over-counts the little that follows the insert.
    let p99 = percentile(&after, 0.99) + accepted_ms;
    let last = after.last().copied().unwrap_or(0.0) + accepted_ms;
    let name = format!("fleet action to {agents} agents");
    rows.push(Row::new(
        "actions",
        &format!("{name}: baseline: raw NATS to each, c={CONCURRENCY}"),
        raw * 1000.0,
        "ms",
    ));
    rows.push(Row::new("actions", &format!("{name}: submission answered (202)"), accepted_ms, "ms"));
    let mut p99_row = Row::new("actions", &format!("{name}: submission -> result p99"), p99, "ms")
        .baseline("raw NATS to each", raw * 1000.0);
    if agents == 10_000 {
        p99_row = p99_row.floor("< 3000 ms", p99 < P99_BOUND_MS);
    }
    rows.push(p99_row);
    rows.push(Row::new("actions", &format!("{name}: submission -> last result"), last, "ms"));
    rows.push(Row::new("actions", &format!("{name}: finished seen by a poller"), ended_s * 1000.0, "ms"));
    rows.push(Row::new("actions", &format!("{name}: results stored ok"), ok as f64, "agents"));
    rows.push(Row::new("actions", &format!("{name}: gateway CPU"), sampler.cores(), "cores"));
    rows.push(Row::new("actions", &format!("{name}: gateway peak RSS"), sampler.peak_rss_mib, "MiB"));
    stop.cancel();
    gw.service.stop().await;
    Ok(())
}
