//! Scenario 3: presence at 10,000 / 50,000 / 100,000 agents with a 10 s heartbeat, and
//! at 1,000,000 with a 30 s one: heartbeats/s sustained, tracker CPU and RSS, nats-server's
//! and Redis's memory, and how late offline is detected when 1% of the agents stop
//! (marked offline minus last heartbeat minus the timeout, three intervals).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use natsbus::auth::Identity;
use rand::seq::SliceRandom;
use wire_models::{AgentId, PresenceChanged, PresenceState};

use crate::ingest::prepare;
use crate::proc::Sampler;
use crate::report::Row;
use crate::services;

const TICK: Duration = Duration::from_millis(100);
/// Agents stopped at most, of which the offline delay is measured.
const SAMPLE: usize = 1000;

/// `size` agents heartbeating every `interval` (the tracker's timeout: three intervals).
pub(crate) async fn run(
    size: usize,
    interval: Duration,
    hold: Duration,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let timeout = interval * 3;
    let setup = prepare(size, &format!("bench-presence-{size}")).await?;
    // Before the tracker writes a key: the difference at the end is the agents' share.
    let redis_before = redis_used_mib();
    let tracker = services::start(
        &setup.stack,
        &Identity::PresenceTracker,
        "presence-tracker",
        &[("ADMIN_ADDR", "127.0.0.1:0".into()), ("PRESENCE_OFFLINE_INCIDENTS", "true".into())],
    )
    .await?;
    let subjects = setup.stack.topology.subjects.clone();
    let offline_seen: Arc<Mutex<HashMap<AgentId, SystemTime>>> = Arc::default();
    let online_count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listener = {
        let client = setup.stack.client().await;
        let mut sub = client.subscribe(subjects.all_presence_changes()).await?;
        client.flush().await?;
        let (seen, online) = (Arc::clone(&offline_seen), Arc::clone(&online_count));
        tokio::spawn(async move {
            let _keep = client;
            while let Some(msg) = sub.next().await {
                if let Ok(change) = wire_models::decode::<PresenceChanged>(&msg.payload) {
                    match change.state {
                        PresenceState::Offline => {
                            seen.lock().unwrap().insert(change.agent_id, SystemTime::now());
                        }
                        PresenceState::Online => {
                            online.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            }
        })
    };

    // Heartbeats: each tick sends the agents whose slot it is, so the load is even.
    let agents: Vec<_> = setup.fleet.agents().to_vec();
    let last_sent: Arc<Mutex<HashMap<AgentId, SystemTime>>> = Arc::default();
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let driver = {
        let (bus, agents, last_sent, sent, failed, stop) = (
            setup.bus.clone(),
            agents.clone(),
            Arc::clone(&last_sent),
            Arc::clone(&sent),
            Arc::clone(&failed),
            stop.clone(),
        );
        tokio::spawn(async move {
            let slots = (interval.as_millis() / TICK.as_millis()) as usize;
            let mut ticker = tokio::time::interval(TICK);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut tick = 0usize;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = ticker.tick() => {}
                }
                let due: Vec<_> = agents
                    .iter()
                    .skip(tick % slots)
                    .step_by(slots)
                    .filter(|a| !a.is_silent())
                    .cloned()
                    .collect();
                tick += 1;
                let bus = &bus;
                let done: Vec<_> = futures::stream::iter(due)
                    .map(|agent| async move {
                        let result = bus.put_heartbeat(&agent.heartbeat(interval)).await;
                        (agent.id.clone(), result.map_err(|e| e.to_string()))
                    })
                    .buffer_unordered(512)
                    .collect()
                    .await;
                let now = SystemTime::now();
                let mut last = last_sent.lock().unwrap();
                for (id, result) in done {
                    match result {
                        Ok(()) => {
                            last.insert(id, now);
                            sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(err) => {
                            // A refused heartbeat is the agent's problem in the field; here
                            // it means the bench is measuring something else: say so.
                            if failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10_000 == 0 {
                                eprintln!("presence: a heartbeat put failed: {err}");
                            }
                        }
                    }
                }
            }
        })
    };

    // Warm-up: one full interval brings every agent online.
    let label = format!("{}k agents", size / 1000);
    let warm = Instant::now();
    // Every agent's first heartbeat is a transition written to Postgres: a million take
    // minutes on two cores.
    let limit = Duration::from_secs(60).max(timeout * 2) + Duration::from_micros(500) * size as u32;
    let mut progress = Instant::now();
    let mut asked = Instant::now();
    // All online is what Postgres says at one moment: the announcements alone also count
    // agents that came online and went offline again (late heartbeats on a saturated box),
    // and may have missed some (a slow consumer loses messages).
    let online_in_postgres = || async {
        let online: i64 = sqlx::query_scalar("SELECT count(*) FROM agents WHERE status = 'online'")
            .fetch_one(&setup.stack.db.pool)
            .await?;
        anyhow::Ok(usize::try_from(online).unwrap_or(0))
    };
    loop {
        if warm.elapsed() >= limit {
            // Reported, not fatal: the other scenarios still run.
            let online = online_in_postgres().await?;
            rows.push(
                Row::new(
                    "presence",
                    &format!("{label}: online {} s after start", limit.as_secs()),
                    online as f64,
                    "agents",
                )
                .baseline("agents", size as f64)
                .floor("all online", false),
            );
            stop.cancel();
            let _ = driver.await;
            listener.abort();
            tracker.stop().await;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let announced = online_count.load(std::sync::atomic::Ordering::Relaxed);
        let report = progress.elapsed() >= Duration::from_secs(10);
        if !report && (announced < size || asked.elapsed() < Duration::from_secs(1)) {
            continue;
        }
        asked = Instant::now();
        let online = online_in_postgres().await?;
        if report {
            progress = Instant::now();
            // Minutes long at a million agents: say how far it got.
            eprintln!(
                "presence {label}: {} s, {} heartbeats sent, {announced} announced online, {online} online in postgres",
                warm.elapsed().as_secs(),
                sent.load(std::sync::atomic::Ordering::Relaxed),
            );
        }
        if online >= size {
            break;
        }
    }
    let warmup = warm.elapsed();

    // Steady state.
    let mut sampler = Sampler::start(tracker.pid());
    let mut nats = setup.stack.nats.pid().map(Sampler::start);
    let sent_before = sent.load(std::sync::atomic::Ordering::Relaxed);
    let steady = Instant::now();
    while steady.elapsed() < hold {
        tokio::time::sleep(Duration::from_millis(500)).await;
        sampler.sample();
        if let Some(nats) = &mut nats {
            nats.sample();
        }
    }
    let redis_mib = match (redis_before, redis_used_mib()) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let rate = (sent.load(std::sync::atomic::Ordering::Relaxed) - sent_before) as f64
        / steady.elapsed().as_secs_f64();
    let (cores, rss) = (sampler.cores(), sampler.peak_rss_mib);

    // 1% of the agents stop.
    let mut chosen = agents.clone();
    chosen.shuffle(&mut rand::rng());
    let silenced: Vec<_> = chosen.into_iter().take((size / 100).clamp(1, SAMPLE)).collect();
    for agent in &silenced {
        agent.set_silent(true);
    }
    // The driver may be mid-tick; let it finish before reading the last heartbeats.
    tokio::time::sleep(TICK * 2).await;
    let deadline = Instant::now() + timeout + interval + Duration::from_secs(15);
    loop {
        let seen = offline_seen.lock().unwrap().len();
        if silenced.iter().all(|a| offline_seen.lock().unwrap().contains_key(&a.id))
            || Instant::now() > deadline
        {
            let _ = seen;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    let _ = driver.await;
    listener.abort();
    tracker.stop().await;

    let last = last_sent.lock().unwrap();
    let seen = offline_seen.lock().unwrap();
    let mut delays: Vec<f64> = silenced
        .iter()
        .filter_map(|a| {
            let marked = seen.get(&a.id)?;
            let last = last.get(&a.id)?;
            let due = *last + timeout;
            Some(
                marked
                    .duration_since(due)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or_else(|e| -e.duration().as_secs_f64()),
            )
        })
        .collect();
    let missed = silenced.len() - delays.len();
    delays.sort_by(|a, b| a.total_cmp(b));
    let pct =
        |p: f64| delays.get(((delays.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN);
    let (p50, p99, max) = (pct(0.5), pct(0.99), delays.last().copied().unwrap_or(f64::NAN));
    rows.push(Row::new("presence", &format!("{label}: heartbeats sustained"), rate, "hb/s").baseline(
        &format!("target (agents / {} s)", interval.as_secs()),
        size as f64 / interval.as_secs_f64(),
    ));
    rows.push(Row::new("presence", &format!("{label}: all online after start"), warmup.as_secs_f64(), "s"));
    rows.push(
        Row::new("presence", &format!("{label}: tracker CPU"), cores, "cores").floor("< 1 core", cores < 1.0),
    );
    rows.push(Row::new("presence", &format!("{label}: tracker peak RSS"), rss, "MiB"));
    if let Some(nats) = &nats {
        rows.push(Row::new("presence", &format!("{label}: nats-server peak RSS"), nats.peak_rss_mib, "MiB"));
    }
    if let Some(redis) = redis_mib {
        rows.push(Row::new("presence", &format!("{label}: Redis memory used by the agents"), redis, "MiB"));
    }
    rows.push(Row::new("presence", &format!("{label}: offline delay p50"), p50, "s"));
    rows.push(
        Row::new("presence", &format!("{label}: offline delay p99"), p99, "s")
            .floor("<= 2 s past the timeout, none missed", p99 <= 2.0 && missed == 0),
    );
    rows.push(Row::new("presence", &format!("{label}: offline delay max ({missed} missed)"), max, "s"));
    Ok(())
}

/// Redis's `used_memory` (the whole server: read before and after the agents arrive).
fn redis_used_mib() -> Option<f64> {
    let out = std::process::Command::new("redis-cli")
        .args(["-u", &test_support::redis_url(), "info", "memory"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let bytes: f64 = text.lines().find_map(|l| l.strip_prefix("used_memory:"))?.trim().parse().ok()?;
    Some(bytes / (1024.0 * 1024.0))
}
