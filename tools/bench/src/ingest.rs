//! Scenario 1: events into incidents. The drain rate of a backlog with one and two
//! replicas, and the live rate, against the raw Postgres insert and raw JetStream
//! consume of the same rows and messages.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_sim::{Bus, Fleet};
use async_nats::jetstream::consumer::pull;
use futures::StreamExt;
use natsbus::auth::Identity;
use test_support::Stack;
use wire_models::Event;

use crate::proc::Sampler;
use crate::report::Row;
use crate::services;

pub(crate) struct Setup {
    pub(crate) stack: Stack,
    pub(crate) bus: Bus,
    pub(crate) fleet: Arc<Fleet>,
}

/// A fresh stack with `agents` enrolled agents and the topology in place.
pub(crate) async fn prepare(agents: usize, seed: &str) -> anyhow::Result<Setup> {
    let mut stack = Stack::start().await;
    // The test stacks' small bucket holds about 190,000 heartbeats; a larger fleet needs
    // room for one each (about 350 bytes), as a production bucket has.
    let bucket = (agents as u64 * 512).max(stack.topology.max_bytes.agents_bucket);
    stack.topology.max_bytes.agents_bucket = bucket;
    let js = stack.jetstream().await;
    natsbus::ensure_topology(&js, &stack.topology).await?;
    enrolled(stack, agents, seed).await
}

/// [`prepare`] on a three-node loopback cluster, every stream replicated three times.
async fn prepare_cluster(agents: usize, seed: &str) -> anyhow::Result<Setup> {
    enrolled(Stack::start_cluster(3).await, agents, seed).await
}

async fn enrolled(stack: Stack, agents: usize, seed: &str) -> anyhow::Result<Setup> {
    let fleet = Arc::new(Fleet::numbered(seed, agents));
    let list: Vec<_> = fleet.agents().iter().map(|a| (a.id.clone(), a.hostname.clone())).collect();
    storage::agents::register_many(&stack.db.pool, &list).await?;
    let bus = Bus::new(stack.client().await, stack.topology.subjects.clone(), &stack.topology.agents_bucket)
        .await?;
    Ok(Setup { stack, bus, fleet })
}

/// The ingestor's environment; `BENCH_INGEST_*` variables pass tuning through.
pub(crate) fn ingestor_env() -> Vec<(&'static str, String)> {
    let mut env = vec![("ADMIN_ADDR", "127.0.0.1:0".to_owned())];
    for (var, name) in [
        ("BENCH_INGEST_BATCH_SIZE", "INGEST_BATCH_SIZE"),
        ("BENCH_INGEST_WRITERS", "INGEST_WRITERS"),
        ("BENCH_INGEST_BATCH_LINGER", "INGEST_BATCH_LINGER"),
    ] {
        if let Ok(value) = std::env::var(var) {
            env.push((name, value));
        }
    }
    env
}

fn events(fleet: &Fleet, n: usize) -> Vec<Event> {
    let mut rng = rand::rng();
    let agents = fleet.agents();
    (0..n).map(|i| agents[i % agents.len()].random_event(&mut rng)).collect()
}

/// Publishes and returns events/s (agents -> JetStream, acknowledged).
async fn publish(setup: &Setup, events: Vec<Event>) -> anyhow::Result<f64> {
    let n = events.len();
    let started = Instant::now();
    let acked = setup.fleet.publish_prepared(&setup.bus, events, 1024).await;
    anyhow::ensure!(acked as usize == n, "only {acked} of {n} events were acknowledged");
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Waits until the durable consumer has consumed and acknowledged everything.
pub(crate) async fn wait_drained(
    stack: &Stack,
    stream: &str,
    durable: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let js = stack.jetstream().await;
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = js.get_stream(stream).await
            && let Ok(mut c) = s.get_consumer::<pull::Config>(durable).await
            && let Ok(info) = c.info().await
            && info.num_pending == 0
            && info.num_ack_pending == 0
            && info.delivered.stream_sequence > 0
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{durable} did not drain within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Baseline: raw JetStream consume of the same messages (pull, batches of 500, an ack
/// per message, no decoding, no database).
async fn raw_consume(stack: &Stack, n: usize) -> anyhow::Result<f64> {
    let js = stack.jetstream().await;
    let stream = js.get_stream(&stack.topology.events_stream).await?;
    let consumer = stream
        .create_consumer(pull::Config { durable_name: Some("bench-raw".into()), ..Default::default() })
        .await?;
    let started = Instant::now();
    let mut messages = consumer.stream().max_messages_per_batch(500).messages().await?;
    let mut seen = 0;
    while seen < n {
        let Some(msg) = messages.next().await else { break };
        let msg = msg.map_err(|e| anyhow::anyhow!("{e}"))?;
        msg.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        seen += 1;
    }
    anyhow::ensure!(seen == n, "raw consume saw {seen} of {n}");
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Baseline: the raw Postgres insert of the same rows (UNNEST, 1000 rows a statement,
/// one plain client, no NATS).
async fn raw_insert(stack: &Stack, events: &[Event]) -> anyhow::Result<f64> {
    let pool = &stack.db.pool;
    sqlx::query(
        "CREATE TABLE bench_raw_events (event_id uuid PRIMARY KEY, agent_id text, type text, source text,
         raw_error text, context jsonb, severity text, occurred_at timestamptz)",
    )
    .execute(pool)
    .await?;
    let started = Instant::now();
    for chunk in events.chunks(1000) {
        let ids: Vec<uuid::Uuid> = chunk.iter().map(|e| e.event_id).collect();
        let agents: Vec<&str> = chunk.iter().map(|e| e.agent_id.as_str()).collect();
        let kinds: Vec<&str> = chunk.iter().map(|e| e.kind.as_str()).collect();
        let sources: Vec<&str> = chunk.iter().map(|e| e.source.as_str()).collect();
        let errors: Vec<&str> = chunk.iter().map(|e| e.raw_error.as_str()).collect();
        let contexts: Vec<serde_json::Value> =
            chunk.iter().map(|e| serde_json::Value::Object(e.context.clone())).collect();
        let severities: Vec<&str> = chunk.iter().map(|e| e.severity.as_str()).collect();
        let at: Vec<chrono::DateTime<chrono::Utc>> = chunk.iter().map(|e| e.occurred_at).collect();
        sqlx::query(
            "INSERT INTO bench_raw_events SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[],
             $5::text[], $6::jsonb[], $7::text[], $8::timestamptz[])",
        )
        .bind(&ids)
        .bind(&agents)
        .bind(&kinds)
        .bind(&sources)
        .bind(&errors)
        .bind(&contexts)
        .bind(&severities)
        .bind(&at)
        .execute(pool)
        .await?;
    }
    Ok(events.len() as f64 / started.elapsed().as_secs_f64())
}

/// The ingest statement alone (no NATS): batches of `batch` events through
/// `storage::incidents::ingest_events` on one connection.
pub(crate) async fn statement_alone(n: usize, batch: usize, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let setup = prepare(200, "bench-sql").await?;
    let all = events(&setup.fleet, n);
    // Identity (fingerprints) is computed before the clock starts: only the statement
    // is measured.
    let prepared: Vec<storage::incidents::NewEvent> =
        all.into_iter().map(|e| storage::incidents::new_event(e, true)).collect();
    let started = Instant::now();
    for chunk in prepared.chunks(batch) {
        storage::incidents::ingest_events(&setup.stack.db.pool, chunk).await?;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    rows.push(Row::new("ingest", &format!("ingest statement alone (batches of {batch})"), rate, "ev/s"));
    Ok(())
}

async fn stored(stack: &Stack) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM ingested_events").fetch_one(&stack.db.pool).await?)
}

/// Drains a backlog of `n` events with `replicas` ingestors (with `extra` environment);
/// returns (events/s, cores of the first replica, its peak RSS).
async fn drain(
    setup: &Setup,
    n: usize,
    replicas: usize,
    extra: &[(&'static str, String)],
) -> anyhow::Result<(f64, f64, f64)> {
    let mut env = ingestor_env();
    env.extend(extra.iter().cloned());
    let mut started = Vec::new();
    for _ in 0..replicas {
        started.push(services::start(&setup.stack, &Identity::EventIngestor, "event-ingestor", &env).await?);
    }
    let t0 = Instant::now();
    let mut sampler = Sampler::start(started[0].pid());
    let sampling = async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            sampler.sample();
        }
    };
    tokio::select! {
        result = wait_drained(&setup.stack, &setup.stack.topology.events_stream, "event-ingestor", Duration::from_secs(600)) => result?,
        _ = sampling => {}
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    let (cores, rss) = (sampler.cores(), sampler.peak_rss_mib);
    for service in started {
        service.stop().await;
    }
    let count = stored(&setup.stack).await?;
    anyhow::ensure!(count as usize == n, "stored {count} events of {n}");
    Ok((rate, cores, rss))
}

/// The storage lifecycle's cost on ingest: drains of the same backlog with the lifecycle
/// on (the partitioned ledger, the maintenance worker pruning as many expired audit rows
/// as there are events meanwhile, at its default pace) and off (the ledger as one plain
/// table, no worker). Three rounds alternate which goes first, so the machine's drift
/// touches both alike; the medians are compared.
async fn lifecycle_cost(n: usize, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    const ROUNDS: usize = 3;
    let (mut on, mut off, mut pruned) = (Vec::new(), Vec::new(), 0);
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for lifecycle in order {
            let setup = prepare(200, &format!("bench-lifecycle-{round}-{lifecycle}")).await?;
            publish(&setup, events(&setup.fleet, n)).await?;
            let pool = &setup.stack.db.pool;
            if lifecycle {
                let expired = i64::try_from(n)?;
                sqlx::query(
                    "INSERT INTO audit_log (request_id, actor, action, started_at)
                     SELECT gen_random_uuid(), 'bench', 'expired', now() - interval '500 days'
                     FROM generate_series(1, $1)",
                )
                .bind(expired)
                .execute(pool)
                .await?;
                let (rate, _, _) = drain(&setup, n, 1, &[("MAINTENANCE_INTERVAL", "1s".into())]).await?;
                let left: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'expired'")
                    .fetch_one(pool)
                    .await?;
                on.push(rate);
                pruned += expired - left;
            } else {
                // The ledger as it was before partitioning, with the key the ingest
                // statement's ON CONFLICT names.
                sqlx::raw_sql(
                    "DROP TABLE ingested_events CASCADE;
                     CREATE TABLE ingested_events (
                         event_id UUID NOT NULL, occurred_at TIMESTAMPTZ NOT NULL,
                         ingested_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                         PRIMARY KEY (event_id, occurred_at));",
                )
                .execute(pool)
                .await?;
                let (rate, _, _) = drain(&setup, n, 1, &[("MAINTENANCE_INTERVAL", "0s".into())]).await?;
                off.push(rate);
            }
        }
    }
    let (on, off) = (median(&mut on), median(&mut off));
    rows.push(Row::new("ingest", "drain, lifecycle off (plain ledger, no worker), median of 3", off, "ev/s"));
    rows.push(
        Row::new(
            "ingest",
            "drain, lifecycle on (partitioned ledger, worker pruning), median of 3",
            on,
            "ev/s",
        )
        .baseline("lifecycle off", off)
        .floor(">= 0.9x", on >= 0.9 * off),
    );
    rows.push(Row::new("ingest", "expired rows pruned during those drains", pruned as f64, "rows"));
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub(crate) async fn run(n: usize, live_n: usize, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    // One replica, with both baselines measured on the same stack and messages.
    let setup = prepare(200, "bench-drain").await?;
    let batch = events(&setup.fleet, n);
    let publish_rate = publish(&setup, batch.clone()).await?;
    let js_rate = raw_consume(&setup.stack, n).await?;
    let pg_rate = raw_insert(&setup.stack, &batch).await?;
    drop(batch);
    let (one, cores, rss) = drain(&setup, n, 1, &[("MAINTENANCE_INTERVAL", "0s".into())]).await?;
    let lower = js_rate.min(pg_rate);
    rows.push(Row::new("ingest", "publish to JetStream (agents, acked)", publish_rate, "ev/s"));
    rows.push(Row::new("ingest", "baseline: raw JetStream consume", js_rate, "msg/s"));
    rows.push(Row::new("ingest", "baseline: raw Postgres UNNEST insert", pg_rate, "rows/s"));
    rows.push(
        Row::new("ingest", "drain, 1 replica", one, "ev/s")
            .baseline("lower baseline", lower)
            .floor(">= 20000 ev/s and >= 0.4x", one >= 20_000.0 && one >= 0.4 * lower),
    );
    rows.push(Row::new("ingest", "ingestor CPU while draining (1 replica)", cores, "cores"));
    rows.push(Row::new("ingest", "ingestor peak RSS while draining", rss, "MiB"));
    drop(setup);

    // Two replicas sharing the consumer, on a fresh stack.
    let setup2 = prepare(200, "bench-drain2").await?;
    publish(&setup2, events(&setup2.fleet, n)).await?;
    let (two, _, _) = drain(&setup2, n, 2, &[("MAINTENANCE_INTERVAL", "0s".into())]).await?;
    rows.push(Row::new("ingest", "drain, 2 replicas", two, "ev/s").baseline("1 replica", one));
    drop(setup2);

    lifecycle_cost(n, rows).await?;

    // The same drain on a three-node cluster with R3 streams: every acknowledgement and
    // every consumer update goes through a quorum, on the same 2 cores.
    let cluster = prepare_cluster(200, "bench-drain-r3").await?;
    let r3_publish = publish(&cluster, events(&cluster.fleet, n)).await?;
    let (r3, _, _) = drain(&cluster, n, 1, &[("MAINTENANCE_INTERVAL", "0s".into())]).await?;
    rows.push(
        Row::new("ingest", "publish to JetStream, 3-node cluster, R3", r3_publish, "ev/s")
            .baseline("single server", publish_rate),
    );
    rows.push(
        Row::new("ingest", "drain, 1 replica, 3-node cluster, R3", r3, "ev/s").baseline("single server", one),
    );
    drop(cluster);

    // Live: the ingestor runs while the agents publish.
    let live = prepare(200, "bench-live").await?;
    let ingestor =
        services::start(&live.stack, &Identity::EventIngestor, "event-ingestor", &ingestor_env()).await?;
    let batch = events(&live.fleet, live_n);
    let t0 = Instant::now();
    live.fleet.publish_prepared(&live.bus, batch, 1024).await;
    wait_drained(&live.stack, &live.stack.topology.events_stream, "event-ingestor", Duration::from_secs(600))
        .await?;
    let rate = live_n as f64 / t0.elapsed().as_secs_f64();
    ingestor.stop().await;
    let count = stored(&live.stack).await?;
    anyhow::ensure!(count as usize == live_n, "live: stored {count} of {live_n}");
    rows.push(
        Row::new("ingest", "live: first publish to last commit", rate, "ev/s")
            .baseline("publish alone", publish_rate)
            .floor(">= 10000 ev/s", rate >= 10_000.0),
    );
    Ok(())
}
