//! The maintenance worker: on a schedule, prunes every history past its retention
//! (`storage::retention`). Every replica runs it; an advisory lock lets one do the work
//! per turn. It logs and exports what it removed.

use std::time::Duration;

use storage::retention::{Pace, Policy, Run};
use tokio_util::sync::CancellationToken;

/// Retention and the worker's schedule.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Maintenance")]
pub struct MaintenanceArgs {
    /// How often the maintenance worker runs; `0s` turns it off.
    #[arg(long = "maintenance-interval", env = "MAINTENANCE_INTERVAL", value_name = "MAINTENANCE_INTERVAL", default_value = "1h", value_parser = service_kit::config::parse_duration)]
    pub interval: Duration,
    /// Rows removed per statement.
    #[arg(long = "maintenance-batch", env = "MAINTENANCE_BATCH", value_name = "MAINTENANCE_BATCH", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch: u32,
    /// Rest between two statements: the bound on the worker's load on Postgres.
    #[arg(long = "maintenance-pause", env = "MAINTENANCE_PAUSE", value_name = "MAINTENANCE_PAUSE", default_value = "100ms", value_parser = service_kit::config::parse_duration)]
    pub pause: Duration,
    /// Resolved incidents are kept this long after their resolution (`0s`: forever).
    #[arg(long = "retain-resolved-incidents", env = "RETAIN_RESOLVED_INCIDENTS", value_name = "RETAIN_RESOLVED_INCIDENTS", default_value = "90d", value_parser = service_kit::config::parse_duration)]
    pub resolved_incidents: Duration,
    /// Each agent's latest inventory snapshots kept whatever their age (`0`: keep all).
    #[arg(
        long = "retain-inventory-snapshots",
        env = "RETAIN_INVENTORY_SNAPSHOTS",
        value_name = "RETAIN_INVENTORY_SNAPSHOTS",
        default_value_t = 10
    )]
    pub inventory_snapshots: u32,
    /// Inventory snapshots younger than this are kept (`0s`: forever).
    #[arg(long = "retain-inventory-age", env = "RETAIN_INVENTORY_AGE", value_name = "RETAIN_INVENTORY_AGE", default_value = "30d", value_parser = service_kit::config::parse_duration)]
    pub inventory_age: Duration,
    /// Presence transitions are kept this long (`0s`: forever).
    #[arg(long = "retain-presence-transitions", env = "RETAIN_PRESENCE_TRANSITIONS", value_name = "RETAIN_PRESENCE_TRANSITIONS", default_value = "90d", value_parser = service_kit::config::parse_duration)]
    pub presence_transitions: Duration,
    /// How long an event id is remembered against duplicates, by the event's
    /// `occurred_at` (at least EVENTS_MAX_AGE; `0s`: forever).
    #[arg(long = "ledger-window", env = "LEDGER_WINDOW", value_name = "LEDGER_WINDOW", default_value = "8d", value_parser = service_kit::config::parse_duration)]
    pub ledger_window: Duration,
    /// Audit log entries are kept this long (`0s`: forever).
    #[arg(long = "retain-audit-log", env = "RETAIN_AUDIT_LOG", value_name = "RETAIN_AUDIT_LOG", default_value = "400d", value_parser = service_kit::config::parse_duration)]
    pub audit_log: Duration,
}

impl MaintenanceArgs {
    pub fn policy(&self) -> Policy {
        Policy {
            resolved_incidents: self.resolved_incidents,
            inventory_snapshots: self.inventory_snapshots,
            inventory_age: self.inventory_age,
            presence_transitions: self.presence_transitions,
            audit_log: self.audit_log,
            ledger_window: self.ledger_window,
        }
    }

    /// `events_max_age`: how long a copy of an event can still be in the events stream.
    pub fn validate(&self, events_max_age: Duration) -> Result<(), String> {
        if !self.ledger_window.is_zero() && self.ledger_window < events_max_age {
            return Err(format!(
                "LEDGER_WINDOW: {} is shorter than EVENTS_MAX_AGE ({}): a redelivered event could be counted twice",
                humantime::format_duration(self.ledger_window),
                humantime::format_duration(events_max_age)
            ));
        }
        for (var, value) in [
            ("RETAIN_RESOLVED_INCIDENTS", self.resolved_incidents),
            ("RETAIN_PRESENCE_TRANSITIONS", self.presence_transitions),
            ("RETAIN_AUDIT_LOG", self.audit_log),
        ] {
            if !value.is_zero() && value < Duration::from_secs(3600) {
                return Err(format!("{var}: keep at least 1h (or 0s to keep everything)"));
            }
        }
        Ok(())
    }
}

/// Runs the worker until `shutdown`: a first turn shortly after start, then one per
/// interval. A stop ends a turn between two statements. Returns only on `shutdown`
/// (also when turned off), as the service's workers do.
pub async fn run(pool: storage::PgPool, args: MaintenanceArgs, shutdown: CancellationToken) {
    if args.interval.is_zero() {
        tracing::info!("maintenance worker off (MAINTENANCE_INTERVAL=0s)");
        shutdown.cancelled().await;
        return;
    }
    let policy = args.policy();
    let pace = Pace { batch: args.batch, pause: args.pause };
    // Replicas started together spread their first turns (a short interval, as in
    // tests, starts at once).
    let first = args.interval.min(Duration::from_secs(5 + rand_secs(30)));
    let mut next = tokio::time::Instant::now() + first;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep_until(next) => {}
        }
        next = tokio::time::Instant::now() + args.interval;
        turn(&pool, &policy, pace, &shutdown).await;
    }
}

/// One turn: prunes as of now and reports. Failures are logged and counted; the next
/// turn tries again.
pub async fn turn(pool: &storage::PgPool, policy: &Policy, pace: Pace, stop: &CancellationToken) {
    let started = std::time::Instant::now();
    match storage::retention::run(pool, policy, chrono::Utc::now(), pace, stop).await {
        Ok(Run::Skipped) => tracing::debug!("maintenance: another replica holds the lock"),
        Ok(Run::Done { ledger, pruned, stopped }) => {
            for dropped in &ledger.dropped {
                let table = "ingested_events";
                metrics::counter!("opspilot_retention_rows_removed_total", "table" => table)
                    .increment(dropped.rows_estimate);
                metrics::counter!("opspilot_retention_bytes_removed_total", "table" => table)
                    .increment(dropped.bytes);
                tracing::info!(
                    day = %dropped.day,
                    rows_estimate = dropped.rows_estimate,
                    bytes = dropped.bytes,
                    "maintenance: dropped a day of the event ledger"
                );
            }
            if !ledger.created.is_empty() {
                tracing::info!(days = ?ledger.created, "maintenance: made the event ledger's partitions ahead");
            }
            if let Ok(days) = storage::ledger::partitions(pool).await
                && let Some(oldest) = days.first().and_then(|d| d.and_hms_opt(0, 0, 0))
            {
                let age = (chrono::Utc::now() - oldest.and_utc()).num_seconds().max(0);
                metrics::gauge!("opspilot_retention_oldest_row_age_seconds", "table" => "ingested_events")
                    .set(age as f64);
            }
            for p in &pruned {
                let table = p.family.table();
                metrics::counter!("opspilot_retention_rows_removed_total", "table" => table)
                    .increment(p.removed.rows);
                metrics::counter!("opspilot_retention_bytes_removed_total", "table" => table)
                    .increment(p.removed.bytes);
                if let Some(oldest) = p.oldest_kept {
                    let age = (chrono::Utc::now() - oldest).num_seconds().max(0);
                    metrics::gauge!("opspilot_retention_oldest_row_age_seconds", "table" => table)
                        .set(age as f64);
                }
                tracing::info!(
                    table,
                    rows = p.removed.rows,
                    bytes = p.removed.bytes,
                    oldest_kept = ?p.oldest_kept,
                    took_ms = u64::try_from(p.took.as_millis()).unwrap_or(u64::MAX),
                    "maintenance: pruned"
                );
            }
            metrics::histogram!("opspilot_retention_run_seconds").record(started.elapsed().as_secs_f64());
            if stopped {
                tracing::info!("maintenance: stopped mid-turn by shutdown; the next turn goes on");
            }
        }
        Err(err) => {
            metrics::counter!("opspilot_retention_failures_total").increment(1);
            tracing::warn!(error = %err, "maintenance turn failed; retrying at the next");
        }
    }
}

fn rand_secs(max: u64) -> u64 {
    rand::random_range(0..max)
}
