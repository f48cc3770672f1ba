//! The presence-tracker: watches heartbeats in the `AGENTS` KV bucket and keeps every
//! agent's online/offline state in Redis, with Postgres as the durable record and the
//! arbiter of transitions.
//!
//! The pieces, each a task:
//! - [`watch`]: a supervised KV watch (current values first, so every (re)start
//!   re-syncs), re-created on errors, stalls and NATS reconnects.
//! - [`ingest`]: decodes heartbeats (dead-lettering bad ones), drops agents that are not
//!   enrolled, records batches in Redis and hands new arrivals to the transitions.
//! - [`reconcile`]: the deadline scan every `--reconcile-interval`, the Redis data-loss
//!   check and the sweep for agents Postgres thinks online but nobody hears from.
//! - [`keyspace`]: the fast path, Redis `expired` events of agents' TTL keys.
//! - [`transitions`]: re-checks each candidate against Redis, lets Postgres decide,
//!   mirrors the decision in Redis, then announces and logs it.
//! - [`flush`]: `last_seen_at` in Postgres, in batches.
//!
//! Offline is only declared while the tracker can actually hear agents: while NATS is
//! down, the watch is catching up, or Redis cannot take heartbeats, detection pauses,
//! and after a NATS outage (and at start) each agent gets its full threshold again
//! ([`health`]).

#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod flush;
mod health;
mod ingest;
mod keyspace;
mod known;
mod metrics;
mod reconcile;
mod transitions;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use natsbus::NatsConfig;
use service_kit::admin::Readiness;
use service_kit::backoff::Backoff;
use service_kit::service::{AdminArgs, Service};
use service_kit::telemetry::TelemetryArgs;
use storage::DbConfig;
use storage::redis::RedisConfig;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// Configuration of the presence-tracker.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "presence-tracker",
    version,
    args_override_self = true,
    about = "OpsPilot presence tracker: heartbeats in, online/offline transitions out",
    next_help_heading = "Presence"
)]
pub struct Config {
    /// Heartbeats an agent may miss before it counts as offline: its threshold is this
    /// many of its own heartbeat intervals.
    #[arg(long = "missed-heartbeats", env = "PRESENCE_MISSED_HEARTBEATS", value_name = "PRESENCE_MISSED_HEARTBEATS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub missed_heartbeats: u32,
    /// One fixed offline threshold for every agent (e.g. `30s`), instead of the
    /// missed-heartbeats rule.
    #[arg(long = "offline-timeout", env = "PRESENCE_OFFLINE_TIMEOUT", value_name = "PRESENCE_OFFLINE_TIMEOUT", value_parser = service_kit::config::parse_duration)]
    pub offline_timeout: Option<Duration>,
    /// How often the deadline scan runs. It runs always and bounds the detection delay
    /// by itself (keyspace events only make detection faster).
    #[arg(long = "reconcile-interval", env = "PRESENCE_RECONCILE_INTERVAL", value_name = "PRESENCE_RECONCILE_INTERVAL", default_value = "1s", value_parser = service_kit::config::parse_duration)]
    pub reconcile_interval: Duration,
    /// How often `last_seen_at` of agents that stay online is written to Postgres (one
    /// statement per flush).
    #[arg(long = "flush-interval", env = "PRESENCE_FLUSH_INTERVAL", value_name = "PRESENCE_FLUSH_INTERVAL", default_value = "5s", value_parser = service_kit::config::parse_duration)]
    pub flush_interval: Duration,
    /// How far an agent's heartbeats must move past the `last_seen_at` last written for
    /// it before it is written again (Redis always has the exact time; `0s` writes
    /// every flush).
    #[arg(long = "last-seen-resolution", env = "PRESENCE_LAST_SEEN_RESOLUTION", value_name = "PRESENCE_LAST_SEEN_RESOLUTION", default_value = "5m", value_parser = service_kit::config::parse_duration)]
    pub last_seen_resolution: Duration,
    /// Most heartbeats recorded in Redis at once.
    #[arg(long = "batch-size", env = "PRESENCE_BATCH_SIZE", value_name = "PRESENCE_BATCH_SIZE", default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..=10_000))]
    pub batch_size: u16,
    /// Longest a heartbeat waits for its batch to fill before it is recorded.
    #[arg(long = "batch-interval", env = "PRESENCE_BATCH_INTERVAL", value_name = "PRESENCE_BATCH_INTERVAL", default_value = "100ms", value_parser = service_kit::config::parse_duration)]
    pub batch_interval: Duration,
    /// Listen for Redis keyspace `expired` events (the fast offline path). With
    /// `false`, or when Redis has them off, offline detection runs on the scan alone.
    #[arg(long = "keyspace-events", env = "PRESENCE_KEYSPACE_EVENTS", value_name = "PRESENCE_KEYSPACE_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub keyspace_events: bool,
    /// Open a critical `agent_offline` incident when an agent goes offline (resolved
    /// automatically when it comes back).
    #[arg(long = "offline-incidents", env = "PRESENCE_OFFLINE_INCIDENTS", value_name = "PRESENCE_OFFLINE_INCIDENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub offline_incidents: bool,
    /// A KV watch that receives nothing this long while the bucket has newer entries is
    /// re-created (async-nats watchers can hang after a server restart).
    #[arg(long = "watch-stall-timeout", env = "PRESENCE_WATCH_STALL_TIMEOUT", value_name = "PRESENCE_WATCH_STALL_TIMEOUT", default_value = "5s", value_parser = service_kit::config::parse_duration)]
    pub watch_stall_timeout: Duration,
    #[command(flatten, next_help_heading = "Telemetry")]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub dev: service_kit::config::DevArgs,
    #[command(flatten)]
    pub nats: NatsConfig,
    #[command(flatten)]
    pub db: DbConfig,
    #[command(flatten)]
    pub redis: RedisConfig,
    #[command(flatten)]
    pub admin: AdminArgs,
}

impl service_kit::config::LoadSecrets for Config {
    fn load_secrets(&mut self, env: &service_kit::config::SecretEnv<'_>) -> Result<(), String> {
        self.nats.load_secrets(env)?;
        self.db.load_secrets(env)?;
        self.redis.load_secrets(env)
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), String> {
        self.telemetry.validate()?;
        self.nats.validate()?;
        self.db.validate()?;
        self.db.check_secrets(self.dev.dev)?;
        self.nats.check_secrets(self.dev.dev)?;
        self.redis.check_secrets(self.dev.dev)?;
        self.redis.validate()?;
        if let Some(timeout) = self.offline_timeout
            && !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&timeout)
        {
            return Err("PRESENCE_OFFLINE_TIMEOUT: must be between 1s and 24h".into());
        }
        let between = |var: &str, value: Duration, min: Duration, max: Duration| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(format!("{var}: must be between {} and {}", humanize(min), humanize(max)))
            }
        };
        between(
            "PRESENCE_RECONCILE_INTERVAL",
            self.reconcile_interval,
            Duration::from_millis(100),
            Duration::from_secs(300),
        )?;
        between(
            "PRESENCE_FLUSH_INTERVAL",
            self.flush_interval,
            Duration::from_millis(100),
            Duration::from_secs(300),
        )?;
        between(
            "PRESENCE_LAST_SEEN_RESOLUTION",
            self.last_seen_resolution,
            Duration::ZERO,
            Duration::from_secs(86_400),
        )?;
        between(
            "PRESENCE_BATCH_INTERVAL",
            self.batch_interval,
            Duration::from_millis(1),
            Duration::from_secs(5),
        )?;
        between(
            "PRESENCE_WATCH_STALL_TIMEOUT",
            self.watch_stall_timeout,
            Duration::from_secs(1),
            Duration::from_secs(600),
        )?;
        Ok(())
    }

    fn thresholds(&self) -> Thresholds {
        Thresholds { missed: self.missed_heartbeats, fixed: self.offline_timeout }
    }
}

fn humanize(d: Duration) -> String {
    if d < Duration::from_secs(1) { format!("{}ms", d.as_millis()) } else { format!("{}s", d.as_secs()) }
}

/// How long an agent may stay silent before it counts as offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Thresholds {
    missed: u32,
    fixed: Option<Duration>,
}

impl Thresholds {
    /// The heartbeat interval assumed for agents nothing is known about (the
    /// protocol's default).
    const DEFAULT_INTERVAL_SECS: u32 = 10;

    /// The threshold (ms) of an agent with this heartbeat interval.
    pub(crate) fn for_interval(&self, interval_secs: u32) -> i64 {
        match self.fixed {
            Some(fixed) => i64::try_from(fixed.as_millis()).unwrap_or(i64::MAX),
            None => i64::from(interval_secs.max(1)) * i64::from(self.missed) * 1000,
        }
    }

    /// The threshold (ms) of an agent whose interval is unknown.
    pub(crate) fn fallback(&self) -> i64 {
        self.for_interval(Self::DEFAULT_INTERVAL_SECS)
    }
}

/// Milliseconds since the Unix epoch, on this host's clock.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// 50 ms doubling to 1 s: retrying held work (heartbeats, transitions). Short, because
/// every second of waiting after an outage ends is a second an agent's state is wrong.
pub(crate) const RETRY: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));

/// The admin port when ADMIN_ADDR is not set.
pub const ADMIN_PORT: u16 = 9092;

/// A started tracker.
pub type Running = service_kit::service::Running;

/// Connects to everything, then serves until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    start(config, shutdown).await?.wait().await
}

/// Connects to everything and starts serving; returns once ready.
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    service_kit::metrics::init(metrics::describe);
    let client = natsbus::connect_until(&config.nats, "presence-tracker", &shutdown).await?;
    let js = async_nats::jetstream::new(client.clone());
    let topology = config.nats.topology();
    natsbus::ensure_topology(&js, &topology).await?;
    let pool = storage::connect(&config.db).await?;
    storage::check_schema(&pool).await?;
    let redis = storage::redis::connect(&config.redis).await?;
    let store = presence::PresenceStore::new(redis.clone(), presence::Keys::for_config(&config.redis))
        .with_timeout(config.redis.timeout);
    keyspace::report_configuration(&redis, config.keyspace_events, config.reconcile_interval).await;

    let readiness = Readiness::new()
        .with_check("postgres", storage::ready_check(pool.clone()))
        .with_check("nats", natsbus::ready_check(client.clone()))
        .with_check("redis", storage::redis::ready_check(redis.clone()));
    let (admin_addr, admin) =
        service_kit::admin::spawn(config.admin.admin_addr(ADMIN_PORT), readiness, shutdown.clone()).await?;

    let thresholds = config.thresholds();
    let health = Arc::new(health::InputHealth::new(now_ms()));
    let (heartbeats_tx, heartbeats_rx) = mpsc::channel(16_384);
    let (intents_tx, intents_rx) = mpsc::channel(65_536);
    let signals = Arc::new(Signals::default());
    let last_seen = Arc::new(flush::LastSeen::new(config.last_seen_resolution));

    // On shutdown every task stops taking new work; the ingest records the heartbeats
    // it holds and the flusher writes the last `last_seen_at` batch, within the grace.
    let mut service = Service::new("presence-tracker");
    service.worker(watch::run(
        watch::WatchSpec {
            client: client.clone(),
            js: js.clone(),
            bucket: topology.agents_bucket.clone(),
            stall_timeout: config.watch_stall_timeout,
        },
        heartbeats_tx,
        Arc::clone(&health),
        Arc::clone(&signals),
        shutdown.clone(),
    ));
    service.worker(
        ingest::Ingest {
            store: store.clone(),
            pool: pool.clone(),
            known: known::KnownAgents::default(),
            js: js.clone(),
            subjects: topology.subjects.clone(),
            bucket: topology.agents_bucket.clone(),
            dlq_budget: Arc::new(config.nats.dead_letter_budget()),
            thresholds,
            health: Arc::clone(&health),
            intents: intents_tx.clone(),
            last_seen: Arc::clone(&last_seen),
            batch_size: usize::from(config.batch_size),
            batch_interval: config.batch_interval,
        }
        .run(heartbeats_rx, shutdown.clone()),
    );
    service.worker(
        transitions::Transitions {
            store: store.clone(),
            pool: pool.clone(),
            client: client.clone(),
            subjects: topology.subjects.clone(),
            thresholds,
            health: Arc::clone(&health),
            options: storage::presence::TransitionOptions { offline_incidents: config.offline_incidents },
        }
        .run(intents_rx, shutdown.clone()),
    );
    service.worker(
        reconcile::Reconciler {
            store: store.clone(),
            pool: pool.clone(),
            thresholds,
            health: Arc::clone(&health),
            intents: intents_tx.clone(),
            signals: Arc::clone(&signals),
            interval: config.reconcile_interval,
        }
        .run(shutdown.clone()),
    );
    if config.keyspace_events {
        service.worker(keyspace::run(
            config.redis.clone(),
            intents_tx,
            Arc::clone(&signals),
            shutdown.clone(),
        ));
    }
    service.worker(flush::run(pool.clone(), Arc::clone(&last_seen), config.flush_interval, shutdown.clone()));
    tracing::info!(
        %admin_addr,
        bucket = %topology.agents_bucket,
        missed_heartbeats = config.missed_heartbeats,
        offline_timeout = ?config.offline_timeout,
        reconcile_interval = ?config.reconcile_interval,
        keyspace_events = config.keyspace_events,
        offline_incidents = config.offline_incidents,
        "presence-tracker ready"
    );

    service.on_stop_best_effort("flushing nats", async move { Ok(client.flush().await?) });
    service.on_stop("the admin server", async move { Ok(admin.await??) });
    Ok(service.start(admin_addr, shutdown, config.admin.shutdown_grace))
}

/// Nudges between the tasks.
#[derive(Default)]
pub(crate) struct Signals {
    /// Re-create the KV watch and re-sync from the bucket (Redis lost its data).
    pub(crate) resync: Notify,
    /// A (re)created watch delivered the whole bucket: look for agents Postgres has
    /// online that no heartbeat accounts for.
    pub(crate) caught_up: Notify,
    /// Scan deadlines now (keyspace events may have been lost).
    pub(crate) scan_now: Notify,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_follow_the_interval_unless_fixed() {
        let t = Thresholds { missed: 3, fixed: None };
        assert_eq!(t.for_interval(10), 30_000);
        assert_eq!(t.for_interval(1), 3_000);
        assert_eq!(t.fallback(), 30_000);
        let fixed = Thresholds { missed: 3, fixed: Some(Duration::from_secs(45)) };
        assert_eq!(fixed.for_interval(1), 45_000);
        assert_eq!(fixed.fallback(), 45_000);
    }
}
