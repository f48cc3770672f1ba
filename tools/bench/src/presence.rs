//! Scenario 3: presence at 10,000 / 50,000 / 100,000 agents with a 10 s heartbeat, and
//! at 1,000,000 with a 30 s one: heartbeats/s sustained, tracker CPU and RSS, nats-server's
//! and Redis's memory, and how late offline is detected when 1% of the agents stop
//! (marked offline minus last heartbeat minus the timeout, three intervals). Before the
//! agents stop, the tracker is restarted under the running heartbeats: how long the new
//! one takes to re-read the bucket, what that costs, and whether any agent flaps.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use natsbus::auth::Identity;
use rand::seq::SliceRandom;
use test_support::Stack;
use wire_models::{AgentId, PresenceChanged, PresenceState};

use crate::ingest::prepare;
use crate::proc::{self, Sampler};
use crate::report::Row;
use crate::services::{self, Service};

const TICK: Duration = Duration::from_millis(100);
/// Agents stopped at most, of which the offline delay is measured.
const SAMPLE: usize = 1000;
/// How often the restarted tracker's metrics are read while it catches up.
const POLL: Duration = Duration::from_millis(50);
/// Past a restarted tracker's first full threshold: a scan, a Postgres decision and its
/// announcement.
const SETTLE: Duration = Duration::from_secs(5);

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
    let mut tracker = start_tracker(&setup.stack, test_support::free_port()).await?;
    let subjects = setup.stack.topology.subjects.clone();
    let offline_seen: Arc<Mutex<HashMap<AgentId, SystemTime>>> = Arc::default();
    let online_count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let offline_count = Arc::new(AtomicUsize::new(0));
    let listener = {
        let client = setup.stack.client().await;
        let mut sub = client.subscribe(subjects.all_presence_changes()).await?;
        client.flush().await?;
        let (seen, online, offline) =
            (Arc::clone(&offline_seen), Arc::clone(&online_count), Arc::clone(&offline_count));
        tokio::spawn(async move {
            let _keep = client;
            while let Some(msg) = sub.next().await {
                if let Ok(change) = wire_models::decode::<PresenceChanged>(&msg.payload) {
                    match change.state {
                        PresenceState::Offline => {
                            offline.fetch_add(1, Ordering::Relaxed);
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

    let counters = Counters { online: &online_count, offline: &offline_count, sent: &sent };
    let restarted = restart(&setup.stack, tracker, size, timeout, &counters, &label).await?;
    tracker = restarted.tracker;
    // A false offline of the restart is counted there; the agents about to stop start
    // with no offline on record.
    offline_seen.lock().unwrap_or_else(PoisonError::into_inner).clear();

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
    let r = &restarted.measured;
    rows.push(
        Row::new(
            "presence",
            &format!("{label}: restart: kv watch caught up, from process start"),
            r.caught_up.map_or(f64::NAN, |d| d.as_secs_f64()),
            "s",
        )
        .floor("caught up", r.caught_up.is_some()),
    );
    rows.push(Row::new(
        "presence",
        &format!("{label}: restart: tracker CPU until caught up"),
        r.cores,
        "cores",
    ));
    rows.push(Row::new("presence", &format!("{label}: restart: tracker peak RSS"), r.peak_rss, "MiB"));
    rows.push(
        Row::new("presence", &format!("{label}: restart: heartbeats sustained"), r.heartbeats, "hb/s")
            .baseline(
                &format!("target (agents / {} s)", interval.as_secs()),
                size as f64 / interval.as_secs_f64(),
            ),
    );
    let flaps = r.false_offline + r.false_online;
    rows.push(
        Row::new(
            "presence",
            &format!(
                "{label}: restart: false transitions ({} offline, {} online)",
                r.false_offline, r.false_online
            ),
            flaps as f64,
            "agents",
        )
        .floor("none", flaps == 0),
    );
    Ok(())
}

/// A tracker whose admin port is known, so its metrics can be read.
async fn start_tracker(stack: &Stack, admin_port: u16) -> anyhow::Result<Service> {
    services::start(
        stack,
        &Identity::PresenceTracker,
        "presence-tracker",
        &[("ADMIN_ADDR", format!("127.0.0.1:{admin_port}")), ("PRESENCE_OFFLINE_INCIDENTS", "true".into())],
    )
    .await
}

/// What the scenario counts, shared with the restart.
struct Counters<'a> {
    /// Online announcements on the presence subject.
    online: &'a AtomicUsize,
    /// Offline announcements on the presence subject.
    offline: &'a AtomicUsize,
    /// Heartbeats the bucket acknowledged.
    sent: &'a AtomicU64,
}

struct Restarted {
    tracker: Service,
    measured: RestartFigures,
}

struct RestartFigures {
    /// From spawning the new process to its watch having delivered the bucket.
    caught_up: Option<Duration>,
    /// Cores the new process used from its start to `caught_up`.
    cores: f64,
    /// Over the whole restart, the steady threshold after the catch-up included.
    peak_rss: f64,
    /// Heartbeats/s acknowledged from the stop to the end of the restart.
    heartbeats: f64,
    false_offline: usize,
    false_online: usize,
}

/// Stops `old` and starts a new tracker while the heartbeats go on, then watches the
/// presence subject until the new one has had a full `timeout` to get an agent wrong.
/// Every agent is online throughout, so any announcement is a false one.
async fn restart(
    stack: &Stack,
    old: Service,
    size: usize,
    timeout: Duration,
    counters: &Counters<'_>,
    label: &str,
) -> anyhow::Result<Restarted> {
    let offline_before = counters.offline.load(Ordering::Relaxed);
    let online_before = counters.online.load(Ordering::Relaxed);
    let sent_before = counters.sent.load(Ordering::Relaxed);
    let window = Instant::now();
    old.stop().await;
    let admin_port = test_support::free_port();
    let spawned = Instant::now();
    let tracker = start_tracker(stack, admin_port).await?;
    let pid = tracker.pid();
    // As long as the warm-up may take: re-reading a bucket should not take longer.
    let limit = Duration::from_secs(60) + Duration::from_micros(500) * size as u32;
    let caught_up = watch_caught_up(admin_port, spawned, limit).await?;
    let cores = proc::cpu_seconds(pid).unwrap_or(f64::NAN) / spawned.elapsed().as_secs_f64();
    if let Some(line) =
        tracker.process.output().iter().find(|l| l.contains("kv watch caught up with the bucket"))
    {
        eprintln!("presence {label}: restarted tracker: {line}");
    }
    // Detection resumes a full threshold after the new watch starts; a false offline,
    // if any, is announced by then.
    let watched = caught_up.unwrap_or(limit) + timeout + SETTLE;
    tokio::time::sleep(watched.saturating_sub(spawned.elapsed())).await;
    let peak_rss = proc::peak_rss_mib(pid).unwrap_or(f64::NAN);
    let heartbeats =
        (counters.sent.load(Ordering::Relaxed) - sent_before) as f64 / window.elapsed().as_secs_f64();
    let false_offline = counters.offline.load(Ordering::Relaxed) - offline_before;
    let false_online = counters.online.load(Ordering::Relaxed) - online_before;
    if false_offline + false_online > 0 {
        // The tracker's own account of them, for the report.
        for line in tracker.process.output().iter().filter(|l| l.contains("offline")).take(20) {
            eprintln!("presence {label}: restarted tracker: {line}");
        }
    }
    Ok(Restarted {
        tracker,
        measured: RestartFigures { caught_up, cores, peak_rss, heartbeats, false_offline, false_online },
    })
}

/// Time from `spawned` until the tracker's `opspilot_presence_detection_paused` gauge
/// first reads 0 (None: not within `limit`). A new tracker starts paused on its watch,
/// and only the watch having delivered the whole bucket lifts that.
async fn watch_caught_up(
    admin_port: u16,
    spawned: Instant,
    limit: Duration,
) -> anyhow::Result<Option<Duration>> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let url = format!("http://127.0.0.1:{admin_port}/metrics");
    while spawned.elapsed() < limit {
        // A scrape of a tracker busy catching up may fail: the next one counts.
        if let Ok(response) = client.get(&url).send().await
            && let Ok(text) = response.text().await
            && gauge(&text, "opspilot_presence_detection_paused") == Some(0.0)
        {
            return Ok(Some(spawned.elapsed()));
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(None)
}

/// An unlabelled sample's value in a scrape (None while it was never set, or when the
/// scrape does not read as the exposition format).
fn gauge(text: &str, name: &str) -> Option<f64> {
    let scrape = test_support::metrics::check_exposition(text).ok()?;
    scrape.family(name)?.samples.iter().find(|s| s.name == name && s.labels.is_empty()).map(|s| s.value)
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

#[cfg(test)]
mod tests {
    use super::gauge;

    #[test]
    fn a_gauge_is_read_by_its_exact_name() {
        let text = "# HELP opspilot_presence_detection_paused 1 while paused\n\
                    # TYPE opspilot_presence_detection_paused gauge\n\
                    opspilot_presence_detection_paused 0\n\
                    # HELP opspilot_presence_detection_paused_total Pauses.\n\
                    # TYPE opspilot_presence_detection_paused_total counter\n\
                    opspilot_presence_detection_paused_total 7\n";
        assert_eq!(gauge(text, "opspilot_presence_detection_paused"), Some(0.0));
        assert_eq!(gauge(text, "opspilot_presence_agents_online"), None);
    }
}
