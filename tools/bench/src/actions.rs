//! Scenario 4: `POST /agents/{id}/execute` against simulated agents answering at once,
//! at concurrency 1 and 64 (driven by wrk), beside the raw NATS request-reply to the
//! same agents and a raw Postgres commit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_sim::{RpcBehaviour, RpcMode};
use bytes::Bytes;
use natsbus::auth::Identity;
use wire_models::{Command, PROTOCOL_VERSION, RpcRequest};

use crate::ingest::prepare;
use crate::report::{Row, percentile};
use crate::{gateway, services};

struct Measured {
    p50_ms: f64,
    p99_ms: f64,
    per_sec: f64,
}

/// Runs `op` with `concurrency` workers, `total` times in all (or for `duration`).
async fn measure<F, Fut>(
    concurrency: usize,
    total: usize,
    duration: Duration,
    op: F,
) -> anyhow::Result<Measured>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    let per_worker = total.div_ceil(concurrency);
    for w in 0..concurrency {
        let op = op.clone();
        workers.spawn(async move {
            let mut latencies = Vec::with_capacity(per_worker.min(100_000));
            let t0 = Instant::now();
            let mut i = 0;
            while i < per_worker && t0.elapsed() < duration {
                let t = Instant::now();
                op(w * per_worker + i).await?;
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                i += 1;
            }
            anyhow::Ok(latencies)
        });
    }
    let mut all = Vec::new();
    while let Some(result) = workers.join_next().await {
        all.extend(result??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.total_cmp(b));
    Ok(Measured {
        p50_ms: percentile(&all, 0.5),
        p99_ms: percentile(&all, 0.99),
        per_sec: all.len() as f64 / elapsed,
    })
}

/// A `ping` as the gateway sends it, for the raw NATS baselines.
pub(crate) fn ping(timeout_ms: u32) -> RpcRequest {
    RpcRequest {
        v: PROTOCOL_VERSION,
        request_id: uuid::Uuid::now_v7(),
        command: Command::Ping,
        issued_at: chrono::Utc::now(),
        timeout_ms,
    }
}

pub(crate) async fn run(rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let setup = prepare(64, "bench-actions").await?;
    // Online through the real path: a tracker and one heartbeat each (a long interval
    // keeps them online for the whole scenario).
    let tracker = services::start(
        &setup.stack,
        &Identity::PresenceTracker,
        "presence-tracker",
        &[("ADMIN_ADDR", "127.0.0.1:0".into())],
    )
    .await?;
    setup.fleet.heartbeat_all(&setup.bus, Duration::from_secs(3600), 64).await;
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(Arc::clone(&setup.fleet).serve_rpc(
        setup.bus.clone(),
        RpcBehaviour::default(),
        RpcMode::Shared,
        stop.clone(),
    ));
    let gw = gateway::start(&setup.stack).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let online: i64 = sqlx::query_scalar("SELECT count(*) FROM agents WHERE status = 'online'")
            .fetch_one(&setup.stack.db.pool)
            .await?;
        if online == 64 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "agents did not come online");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let ids: Arc<Vec<wire_models::AgentId>> =
        Arc::new(setup.fleet.agents().iter().map(|a| a.id.clone()).collect());
    let subjects = setup.stack.topology.subjects.clone();
    let client = setup.stack.client().await;
    let nats_op = {
        let (ids, subjects, client) = (Arc::clone(&ids), subjects.clone(), client.clone());
        move |i: usize| {
            let (ids, subjects, client) = (Arc::clone(&ids), subjects.clone(), client.clone());
            async move {
                let payload = Bytes::from(wire_models::encode(&ping(5000))?);
                client.request(subjects.rpc(&ids[i % ids.len()]), payload).await?;
                anyhow::Ok(())
            }
        }
    };
    // The API is driven by wrk (see `crate::wrk`): each request a ping to a random agent.
    let quoted: Vec<String> = ids.iter().map(|id| format!("\"{id}\"")).collect();
    let execute = crate::wrk::script(
        "execute",
        &format!(
            "math.randomseed(7)\nlocal ids = {{{}}}\nwrk.method = 'POST'\n\
             wrk.headers['Content-Type'] = 'application/json'\nwrk.body = '{{\"command\":\"ping\"}}'\n\
             request = function()\n  return wrk.format(nil, '/api/v1/agents/' .. ids[math.random(#ids)] .. '/execute')\nend\n",
            quoted.join(", ")
        ),
    )?;
    let api = |seconds: u32, connections: u32| {
        let (base, token, script) = (gw.base.clone(), gw.token.clone(), execute.clone());
        async move { crate::wrk::run(&base, &token, Some(&script), seconds, connections).await }
    };
    // The raw durable commit: one single-row INSERT, autocommit, from one client.
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_commit (id BIGSERIAL PRIMARY KEY, at TIMESTAMPTZ NOT NULL DEFAULT now())")
        .execute(&setup.stack.db.pool)
        .await?;
    let pg_op = {
        let pool = setup.stack.db.pool.clone();
        move |_: usize| {
            let pool = pool.clone();
            async move {
                sqlx::query("INSERT INTO bench_commit DEFAULT VALUES").execute(&pool).await?;
                anyhow::Ok(())
            }
        }
    };
    measure(1, 200, Duration::from_secs(10), pg_op.clone()).await?;
    let pg1 = measure(1, 2000, Duration::from_secs(20), pg_op).await?;
    // The execute path's own statement alone: the audit row, written as the gateway's
    // writer writes it, on a connection of the same kind, from one client.
    let audit_op = {
        let writer =
            storage::audit::writer_connection(&setup.stack.db.pool, storage::audit::Planning::Cached).await?;
        let writer = Arc::new(tokio::sync::Mutex::new(writer));
        move |_: usize| {
            let writer = Arc::clone(&writer);
            async move {
                let row = storage::audit::PendingAudit {
                    request_id: uuid::Uuid::now_v7(),
                    actor: "bench@opspilot.test".into(),
                    action: "execute".into(),
                    agent_id: Some("bench-agent".into()),
                    incident_id: None,
                    command: Some("ping".into()),
                    params: Some(serde_json::json!({})),
                };
                storage::audit::begin_many(&mut *writer.lock().await, std::slice::from_ref(&row)).await?;
                anyhow::Ok(())
            }
        }
    };
    measure(1, 200, Duration::from_secs(10), audit_op.clone()).await?;
    let audit1 = measure(1, 2000, Duration::from_secs(20), audit_op.clone()).await?;
    // The two legs an execute waits for, chained from one client with nothing between
    // them: what is left of the whole past this is the gateway's own.
    let chain_op = {
        let (a, n) = (audit_op.clone(), nats_op.clone());
        move |i: usize| {
            let (a, n) = (a.clone(), n.clone());
            async move {
                a(i).await?;
                n(i).await?;
                anyhow::Ok(())
            }
        }
    };
    measure(1, 200, Duration::from_secs(10), chain_op.clone()).await?;
    let chain1 = measure(1, 2000, Duration::from_secs(20), chain_op).await?;
    // Warm both paths (connections, caches).
    measure(4, 200, Duration::from_secs(10), nats_op.clone()).await?;
    api(2, 4).await?;

    // The HTTP floor: an authenticated request that touches nothing but the gateway.
    let me1 = crate::wrk::run(&format!("{}/api/v1/auth/me", gw.base), &gw.token, None, 5, 1).await?;
    let nats1 = measure(1, 2000, Duration::from_secs(20), nats_op.clone()).await?;
    let api1 = api(5, 1).await?;
    let nats64 = measure(64, usize::MAX / 2, Duration::from_secs(5), nats_op).await?;
    let api64 = api(5, 64).await?;
    let _ = std::fs::remove_file(&execute);
    let added = api1.p50_ms - nats1.p50_ms;
    rows.push(Row::new("actions", "baseline: NATS request-reply c=1 p50", nats1.p50_ms, "ms"));
    rows.push(
        Row::new("actions", "execute c=1 p50", api1.p50_ms, "ms").baseline("NATS c=1 p50", nats1.p50_ms),
    );
    rows.push(
        Row::new("actions", "execute c=1 p99", api1.p99_ms, "ms").baseline("NATS c=1 p99", nats1.p99_ms),
    );
    rows.push(Row::new("actions", "baseline: Postgres insert-and-commit c=1 p50", pg1.p50_ms, "ms"));
    rows.push(Row::new(
        "actions",
        "baseline: the audit row's insert-and-commit alone c=1 p50",
        audit1.p50_ms,
        "ms",
    ));
    rows.push(Row::new(
        "actions",
        "baseline: the audit row, then a NATS round trip, one client c=1 p50",
        chain1.p50_ms,
        "ms",
    ));
    rows.push(Row::new("actions", "baseline: GET /api/v1/auth/me c=1 p50 (HTTP floor)", me1.p50_ms, "ms"));
    // Where the bound's half millisecond goes: each part of an execute measured alone,
    // against the whole. Chained alone the parts add up (the row above), so what is left
    // is the gateway's own work and the wakes between the processes on shared cores.
    let parts = me1.p50_ms + audit1.p50_ms + nats1.p50_ms;
    rows.push(
        Row::new("actions", "execute c=1 p50 against its parts measured alone", api1.p50_ms, "ms")
            .baseline("HTTP floor + audit row + NATS", parts),
    );
    rows.push(
        Row::new("actions", "added latency of the API path c=1 p50", added, "ms")
            .floor("< 1.5 ms", added < 1.5),
    );
    // The bound: a NATS round trip, a durable commit and half a millisecond.
    let bound = nats1.p50_ms + pg1.p50_ms + 0.5;
    rows.push(
        Row::new("actions", "execute c=1 p50 against NATS + commit + 0.5 ms", api1.p50_ms, "ms")
            .baseline("NATS p50 + commit p50 + 0.5", bound)
            .floor("<= bound", api1.p50_ms <= bound),
    );
    rows.push(Row::new("actions", "execute c=1", api1.per_sec, "req/s").baseline("NATS c=1", nats1.per_sec));
    rows.push(
        Row::new("actions", "execute c=64 p50", api64.p50_ms, "ms").baseline("NATS c=64 p50", nats64.p50_ms),
    );
    rows.push(
        Row::new("actions", "execute c=64 p99", api64.p99_ms, "ms").baseline("NATS c=64 p99", nats64.p99_ms),
    );
    rows.push(
        Row::new("actions", "execute c=64", api64.per_sec, "req/s")
            .baseline("NATS c=64", nats64.per_sec)
            .floor(">= 5000 req/s", api64.per_sec >= 5000.0),
    );
    stop.cancel();
    gw.service.stop().await;
    tracker.stop().await;
    Ok(())
}
