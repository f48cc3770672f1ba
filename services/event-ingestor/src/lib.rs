//! The event-ingestor: turns what agents publish on JetStream into rows a platform team
//! can trust. Events become incidents, inventory snapshots become history.

#![cfg_attr(not(test), warn(unused_crate_dependencies))]

// The binary (main.rs) installs it as the global allocator.
use mimalloc as _;

mod consumer;
mod events;
mod inventory;
mod known;
pub mod maintenance;
mod metrics;
mod recurrences;
mod stats;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use natsbus::NatsConfig;
use service_kit::admin::Readiness;
use service_kit::service::{AdminArgs, Service};
use service_kit::telemetry::TelemetryArgs;
use storage::DbConfig;
use tokio_util::sync::CancellationToken;

/// Configuration of the event-ingestor.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "event-ingestor",
    version,
    args_override_self = true,
    about = "OpsPilot event ingestor: events and inventory from JetStream into Postgres",
    next_help_heading = "Ingestion"
)]
pub struct Config {
    /// Largest batch fetched and written at once, in messages.
    #[arg(long = "batch-size", env = "INGEST_BATCH_SIZE", value_name = "INGEST_BATCH_SIZE", default_value_t = 8000, value_parser = clap::value_parser!(u16).range(1..=10_000))]
    pub batch_size: u16,
    /// Largest batch in payload bytes (never below the server's largest message), so
    /// big messages make smaller batches instead of a memory spike.
    #[arg(long = "batch-max-bytes", env = "INGEST_BATCH_MAX_BYTES", value_name = "INGEST_BATCH_MAX_BYTES", default_value_t = 8 * 1024 * 1024, value_parser = clap::value_parser!(u32).range(1..=256 * 1024 * 1024))]
    pub batch_max_bytes: u32,
    /// How long a batch waits for more messages after its first (latency a trickle
    /// pays, for full batches under load).
    #[arg(long = "batch-linger", env = "INGEST_BATCH_LINGER", value_name = "INGEST_BATCH_LINGER", default_value = "10ms", value_parser = service_kit::config::parse_duration)]
    pub batch_linger: Duration,
    /// Event batches written to Postgres at once by this replica.
    #[arg(long = "writers", env = "INGEST_WRITERS", value_name = "INGEST_WRITERS", default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=16))]
    pub writers: u8,
    /// Fold repeated events (same fingerprint) into the open incident instead of
    /// opening a new one.
    #[arg(long = "incident-dedup", env = "INCIDENT_DEDUP", value_name = "INCIDENT_DEDUP", default_value_t = true, action = clap::ArgAction::Set)]
    pub dedup: bool,
    /// How long a delivered message may stay unacknowledged before JetStream
    /// redelivers it (to any replica).
    #[arg(long = "ack-wait", env = "INGEST_ACK_WAIT", value_name = "INGEST_ACK_WAIT", default_value = "30s", value_parser = service_kit::config::parse_duration)]
    pub ack_wait: Duration,
    /// Deliveries after which a message that keeps failing is dead-lettered.
    #[arg(long = "max-deliver", env = "INGEST_MAX_DELIVER", value_name = "INGEST_MAX_DELIVER", default_value_t = 10, value_parser = clap::value_parser!(i64).range(1..=1000))]
    pub max_deliver: i64,
    /// Durable consumer name on the events stream (shared by every replica).
    #[arg(
        long = "events-consumer",
        env = "EVENTS_CONSUMER",
        value_name = "EVENTS_CONSUMER",
        default_value = "event-ingestor"
    )]
    pub events_consumer: String,
    /// Durable consumer name on the inventory stream (shared by every replica).
    #[arg(
        long = "inventory-consumer",
        env = "INVENTORY_CONSUMER",
        value_name = "INVENTORY_CONSUMER",
        default_value = "inventory-ingestor"
    )]
    pub inventory_consumer: String,
    /// Interval of the "ingest summary" log line.
    #[arg(long = "summary-interval", env = "INGEST_SUMMARY_INTERVAL", value_name = "INGEST_SUMMARY_INTERVAL", default_value = "30s", value_parser = service_kit::config::parse_duration)]
    pub summary_interval: Duration,
    #[command(flatten, next_help_heading = "Telemetry")]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub dev: service_kit::config::DevArgs,
    #[command(flatten)]
    pub nats: NatsConfig,
    #[command(flatten)]
    pub db: DbConfig,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub maintenance: maintenance::MaintenanceArgs,
}

impl service_kit::config::LoadSecrets for Config {
    fn load_secrets(&mut self, env: &service_kit::config::SecretEnv<'_>) -> Result<(), String> {
        self.nats.load_secrets(env)?;
        self.db.load_secrets(env)
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), String> {
        self.telemetry.validate()?;
        self.nats.validate()?;
        self.db.validate()?;
        self.db.check_secrets(self.dev.dev)?;
        self.nats.check_secrets(self.dev.dev)?;
        self.maintenance.validate(self.nats.events_max_age)?;
        for (var, name) in
            [("EVENTS_CONSUMER", &self.events_consumer), ("INVENTORY_CONSUMER", &self.inventory_consumer)]
        {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(format!("{var}: use letters, digits, '-' and '_'"));
            }
        }
        if self.ack_wait < Duration::from_secs(1) {
            return Err("INGEST_ACK_WAIT: must be at least 1s".into());
        }
        Ok(())
    }
}

/// The admin port when ADMIN_ADDR is not set.
pub const ADMIN_PORT: u16 = 9091;

/// A started ingestor.
pub struct Running {
    pub admin_addr: SocketAddr,
    service: service_kit::service::Running,
    event_stats: Arc<stats::Stats>,
}

impl Running {
    /// Event messages this replica has handled so far.
    pub fn events_handled(&self) -> u64 {
        self.event_stats.total()
    }

    /// Event batches this replica has handled so far.
    pub fn event_batches(&self) -> u64 {
        self.event_stats.batches_total()
    }

    /// Waits until the ingestor stops (after `shutdown` is cancelled, or on a fatal error).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.service.wait().await
    }
}

/// Connects to everything, then serves until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    start(config, shutdown).await?.wait().await
}

/// Connects to everything and starts serving; returns once ready.
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    // Before anything is counted (the binary's runtime has installed the recorder; a
    // test has not).
    service_kit::metrics::init(metrics::describe);
    let client = natsbus::connect_until(&config.nats, "event-ingestor", &shutdown).await?;
    let js = async_nats::jetstream::new(client.clone());
    let topology = config.nats.topology();
    natsbus::ensure_topology(&js, &topology).await?;
    let pool = storage::connect(&config.db).await?;
    storage::check_schema(&pool).await?;

    let readiness = Readiness::new()
        .with_check("postgres", storage::ready_check(pool.clone()))
        .with_check("nats", natsbus::ready_check(client.clone()));
    let (admin_addr, admin) =
        service_kit::admin::spawn(config.admin.admin_addr(ADMIN_PORT), readiness, shutdown.clone()).await?;

    let known = Arc::new(known::KnownAgents::default());
    let (event_stats, inventory_stats) =
        (Arc::new(stats::Stats::default()), Arc::new(stats::Stats::default()));
    let batch_size = usize::from(config.batch_size);
    // A pull asking for fewer bytes than one message would never get that message.
    let max_payload = client.server_info().max_payload;
    let batch_bytes = usize::try_from(config.batch_max_bytes).unwrap_or(usize::MAX).max(max_payload);
    // Enough for several replicas each holding a few batches.
    let max_ack_pending = i64::try_from(batch_size * 64).unwrap_or(i64::MAX).max(10_000);
    let events_spec = consumer::ConsumerSpec {
        label: "events",
        bus: natsbus::DurableSpec {
            stream: topology.events_stream.clone(),
            durable: config.events_consumer.clone(),
            description: "OpsPilot events (shared by every ingestor replica)".into(),
            filter: topology.subjects.all_events(),
            ack_wait: config.ack_wait,
            max_deliver: config.max_deliver,
            max_ack_pending,
            from_now: false,
        },
        origin: wire_models::DlqOrigin::Events,
        batch_size,
        batch_bytes,
        concurrency: usize::from(config.writers),
        linger: config.batch_linger,
    };
    let inventory_spec = consumer::ConsumerSpec {
        label: "inventory",
        bus: natsbus::DurableSpec {
            stream: topology.inventory_stream.clone(),
            durable: config.inventory_consumer.clone(),
            description: "OpsPilot inventory (shared by every ingestor replica)".into(),
            filter: topology.subjects.all_inventory(),
            ack_wait: config.ack_wait,
            max_deliver: config.max_deliver,
            max_ack_pending,
            from_now: false,
        },
        origin: wire_models::DlqOrigin::Inventory,
        batch_size,
        batch_bytes,
        // One at a time: snapshots of an agent must be compared in stream order.
        concurrency: 1,
        linger: config.batch_linger,
    };
    // Create both consumers before reporting ready, so a replica that is "ready" is
    // part of the shared consumers.
    natsbus::ensure_durable(&js, &events_spec.bus).await?;
    natsbus::ensure_durable(&js, &inventory_spec.bus).await?;

    let mut service = Service::new("event-ingestor");
    let dlq_budget = Arc::new(config.nats.dead_letter_budget());
    let recurrences = Arc::new(recurrences::Recurrences::default());
    let events_handler = events::EventsHandler {
        dlq_budget: Arc::clone(&dlq_budget),
        js: js.clone(),
        pool: pool.clone(),
        subjects: topology.subjects.clone(),
        known: Arc::clone(&known),
        stats: Arc::clone(&event_stats),
        dedup: config.dedup,
        ack_wait: config.ack_wait,
        recurrences: Arc::clone(&recurrences),
    };
    let inventory_handler = inventory::InventoryHandler {
        dlq_budget,
        js: js.clone(),
        pool: pool.clone(),
        subjects: topology.subjects.clone(),
        known,
        stats: Arc::clone(&inventory_stats),
        ack_wait: config.ack_wait,
    };
    service.worker(consumer::run(js.clone(), events_spec.clone(), events_handler, shutdown.clone()));
    service.worker(consumer::run(js.clone(), inventory_spec.clone(), inventory_handler, shutdown.clone()));
    for spec in [events_spec.clone(), inventory_spec.clone()] {
        service.worker(consumer::watch_max_deliveries(
            client.clone(),
            js.clone(),
            topology.subjects.clone(),
            spec,
            shutdown.clone(),
        ));
    }
    service.background(stats::summarise(
        "events",
        Arc::clone(&event_stats),
        config.summary_interval,
        shutdown.clone(),
    ));
    service.background(stats::summarise(
        "inventory",
        inventory_stats,
        config.summary_interval,
        shutdown.clone(),
    ));
    service.background(recurrences.run(
        natsbus::feed::FeedPublisher::new(client.clone(), topology.subjects.clone()),
        std::time::Duration::from_secs(1),
        shutdown.clone(),
    ));
    service.background(stats::watch_lag(js.clone(), vec![events_spec, inventory_spec], shutdown.clone()));
    // A worker, not background: a stop lets the turn end between two statements.
    let maintenance = maintenance::run(pool.clone(), config.maintenance.clone(), shutdown.clone());
    service.worker(async move {
        maintenance.await;
        Ok(())
    });
    tracing::info!(%admin_addr, dedup = config.dedup, batch_size, "event-ingestor ready");

    service.on_stop_best_effort("flushing nats", async move { Ok(client.flush().await?) });
    service.on_stop("the admin server", async move { Ok(admin.await??) });
    let service = service.start(admin_addr, shutdown, config.admin.shutdown_grace);
    Ok(Running { admin_addr, service, event_stats })
}
