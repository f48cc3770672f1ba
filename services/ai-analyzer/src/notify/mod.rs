//! Notifications: critical incidents, agents going offline and failed actions, posted
//! to webhooks (HMAC-signed) and Slack incoming webhooks.
//!
//! Two halves, both in every replica. [`route`] reads the change feed through one
//! durable consumer shared by the replicas and writes a delivery row per matching
//! target (the row's unique key makes a redelivered message harmless). [`send`] claims
//! due rows from Postgres under a per-target lock that applies the target's rate and
//! folds the excess into a digest, posts them, and records the outcome with retries.
//! Ingestion and presence never wait for any of it: they only publish to the feed.
//!
//! Off by default: nothing is sent until a target exists (admin API or environment).

pub mod format;
pub(crate) mod route;
pub(crate) mod send;

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use service_kit::config::parse_duration;
use storage::notifications::{MIN_SECRET_LEN, NewTarget, NotifyEvent, TargetKind, check_target_url};
use wire_models::Severity;

/// Notification settings of the analyzer.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Notifications")]
pub struct NotifyArgs {
    /// Route and send notifications in this replica. Nothing is sent while no target
    /// is configured, so this only needs turning off to keep a replica out of it.
    #[arg(long = "notify", env = "NOTIFY", value_name = "NOTIFY", default_value_t = true, action = clap::ArgAction::Set)]
    pub enabled: bool,
    /// Durable consumer name on the incidents stream (shared by every replica).
    #[arg(
        long = "notify-consumer",
        env = "NOTIFY_CONSUMER",
        value_name = "NOTIFY_CONSUMER",
        default_value = "notifier"
    )]
    pub consumer: String,
    /// A webhook target from the environment (`env-webhook`): HTTP(S) URL receiving
    /// signed JSON posts, as NOTIFY_WEBHOOK_URL in the environment or this file (never
    /// a flag, never logged).
    #[arg(
        long = "notify-webhook-url-file",
        env = "NOTIFY_WEBHOOK_URL_FILE",
        value_name = "NOTIFY_WEBHOOK_URL_FILE"
    )]
    pub webhook_url_file: Option<PathBuf>,
    /// NOTIFY_WEBHOOK_URL, read by [`service_kit::config::LoadSecrets`].
    #[arg(skip)]
    pub webhook_url: Option<SecretString>,
    /// The HMAC-SHA256 key signing `env-webhook`'s posts (at least 16 characters),
    /// required with NOTIFY_WEBHOOK_URL: NOTIFY_WEBHOOK_SECRET in the environment, or
    /// this file (never a flag, never logged).
    #[arg(
        long = "notify-webhook-secret-file",
        env = "NOTIFY_WEBHOOK_SECRET_FILE",
        value_name = "NOTIFY_WEBHOOK_SECRET_FILE"
    )]
    pub webhook_secret_file: Option<PathBuf>,
    /// NOTIFY_WEBHOOK_SECRET, read by [`service_kit::config::LoadSecrets`].
    #[arg(skip)]
    pub webhook_secret: Option<SecretString>,
    /// A Slack incoming-webhook URL from the environment (`env-slack`):
    /// NOTIFY_SLACK_WEBHOOK_URL, or this file (never a flag, never logged).
    #[arg(
        long = "notify-slack-webhook-url-file",
        env = "NOTIFY_SLACK_WEBHOOK_URL_FILE",
        value_name = "NOTIFY_SLACK_WEBHOOK_URL_FILE"
    )]
    pub slack_url_file: Option<PathBuf>,
    /// NOTIFY_SLACK_WEBHOOK_URL, read by [`service_kit::config::LoadSecrets`].
    #[arg(skip)]
    pub slack_url: Option<SecretString>,
    /// What the environment's targets are told about: `incident`, `offline`,
    /// `action_failed` (comma-separated).
    #[arg(long = "notify-events", env = "NOTIFY_EVENTS", value_name = "NOTIFY_EVENTS", value_delimiter = ',', default_value = "incident,offline,action_failed", value_parser = parse_event)]
    pub events: Vec<NotifyEvent>,
    /// The least severity of a new incident the environment's targets hear about
    /// (critical incidents always qualify).
    #[arg(long = "notify-min-severity", env = "NOTIFY_MIN_SEVERITY", value_name = "NOTIFY_MIN_SEVERITY", default_value = "critical", value_parser = parse_severity)]
    pub min_severity: Severity,
    /// Incident kinds the environment's targets hear about (comma-separated; empty:
    /// every kind).
    #[arg(
        long = "notify-kinds",
        env = "NOTIFY_KINDS",
        value_name = "NOTIFY_KINDS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub kinds: Vec<String>,
    /// Posts a minute to each of the environment's targets before the rest of the
    /// minute is folded into one digest.
    #[arg(long = "notify-rate-per-minute", env = "NOTIFY_RATE_PER_MINUTE", value_name = "NOTIFY_RATE_PER_MINUTE", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=600))]
    pub rate_per_minute: u32,
    /// Timeout of one post.
    #[arg(long = "notify-timeout", env = "NOTIFY_TIMEOUT", value_name = "NOTIFY_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Delay before the first retry of a failed post; it doubles per retry (with
    /// jitter) up to NOTIFY_BACKOFF_MAX.
    #[arg(long = "notify-backoff", env = "NOTIFY_BACKOFF", value_name = "NOTIFY_BACKOFF", default_value = "1s", value_parser = parse_duration)]
    pub backoff: Duration,
    #[arg(long = "notify-backoff-max", env = "NOTIFY_BACKOFF_MAX", value_name = "NOTIFY_BACKOFF_MAX", default_value = "1m", value_parser = parse_duration)]
    pub backoff_max: Duration,
    /// How long a notification is retried before it is given up as failed.
    #[arg(long = "notify-retry-for", env = "NOTIFY_RETRY_FOR", value_name = "NOTIFY_RETRY_FOR", default_value = "6h", value_parser = parse_duration)]
    pub retry_for: Duration,
    /// How often a replica looks for notifications to send.
    #[arg(long = "notify-poll", env = "NOTIFY_POLL", value_name = "NOTIFY_POLL", default_value = "500ms", value_parser = parse_duration)]
    pub poll: Duration,
    /// Posts in flight at once from this replica.
    #[arg(long = "notify-concurrency", env = "NOTIFY_CONCURRENCY", value_name = "NOTIFY_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,
    /// How long delivered, failed and digested notifications are kept.
    #[arg(long = "notify-retention", env = "NOTIFY_RETENTION", value_name = "NOTIFY_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub retention: Duration,
}

/// The names the environment's targets are stored under.
pub const ENV_WEBHOOK: &str = "env-webhook";
pub const ENV_SLACK: &str = "env-slack";

fn parse_event(s: &str) -> Result<NotifyEvent, String> {
    NotifyEvent::parse(s.trim()).ok_or_else(|| "expected incident, offline or action_failed".to_owned())
}

fn parse_severity(s: &str) -> Result<Severity, String> {
    Severity::parse(s.trim()).ok_or_else(|| "expected info, warning, error or critical".to_owned())
}

impl service_kit::config::LoadSecrets for NotifyArgs {
    fn load_secrets(&mut self, env: &service_kit::config::SecretEnv<'_>) -> Result<(), String> {
        self.webhook_url = env.secret("NOTIFY_WEBHOOK_URL", self.webhook_url_file.as_deref())?;
        self.webhook_secret = env.secret("NOTIFY_WEBHOOK_SECRET", self.webhook_secret_file.as_deref())?;
        self.slack_url = env.secret("NOTIFY_SLACK_WEBHOOK_URL", self.slack_url_file.as_deref())?;
        Ok(())
    }
}

impl NotifyArgs {
    pub fn validate(&self, dev: bool) -> Result<(), String> {
        let name = &self.consumer;
        if name.is_empty()
            || name.len() > 64
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err("NOTIFY_CONSUMER: use 1 to 64 letters, digits, '-' and '_'".into());
        }
        if let Some(url) = present(&self.webhook_url) {
            check_target_url(TargetKind::Webhook, url).map_err(|e| format!("NOTIFY_WEBHOOK_URL: {e}"))?;
            let Some(key) = present(&self.webhook_secret) else {
                return Err(
                    "NOTIFY_WEBHOOK_SECRET: required with NOTIFY_WEBHOOK_URL (it signs the posts)".into()
                );
            };
            if key.chars().count() < MIN_SECRET_LEN {
                return Err(format!("NOTIFY_WEBHOOK_SECRET: use at least {MIN_SECRET_LEN} characters"));
            }
            service_kit::config::check_secret("NOTIFY_WEBHOOK_SECRET", key, dev)?;
        }
        if let Some(url) = present(&self.slack_url) {
            check_target_url(TargetKind::Slack, url).map_err(|e| format!("NOTIFY_SLACK_WEBHOOK_URL: {e}"))?;
        }
        if self.events.is_empty() {
            return Err("NOTIFY_EVENTS: name at least one of incident, offline, action_failed".into());
        }
        if self.timeout.is_zero() {
            return Err("NOTIFY_TIMEOUT: must be more than 0".into());
        }
        if self.backoff.is_zero() || self.backoff_max < self.backoff {
            return Err(
                "NOTIFY_BACKOFF_MAX: must be at least NOTIFY_BACKOFF, which must be more than 0".into()
            );
        }
        if self.poll < Duration::from_millis(50) || self.poll > Duration::from_secs(60) {
            return Err("NOTIFY_POLL: must be between 50ms and 60s".into());
        }
        if self.retention < Duration::from_secs(3600) {
            return Err("NOTIFY_RETENTION: must be at least 1h".into());
        }
        Ok(())
    }

    /// The kinds filter with blanks dropped (`NOTIFY_KINDS=` means every kind).
    fn kinds(&self) -> Vec<String> {
        self.kinds.iter().map(|k| k.trim().to_owned()).filter(|k| !k.is_empty()).collect()
    }

    /// Writes (or removes) the environment's targets, so the environment and the
    /// database agree at every start.
    pub(crate) async fn sync_env_targets(&self, pool: &storage::PgPool) -> anyhow::Result<()> {
        let kinds = self.kinds();
        let target = |name, kind, url, secret| NewTarget {
            name,
            kind,
            url,
            secret,
            events: &self.events,
            min_severity: self.min_severity,
            kinds: &kinds,
            rate_per_minute: self.rate_per_minute,
            enabled: true,
        };
        match present(&self.webhook_url) {
            Some(url) => {
                let new = target(ENV_WEBHOOK, TargetKind::Webhook, url, present(&self.webhook_secret));
                storage::notifications::upsert_env_target(pool, &new).await?;
                tracing::info!(target = ENV_WEBHOOK, "webhook notifications configured by the environment");
            }
            None => {
                storage::notifications::remove_env_target(pool, ENV_WEBHOOK).await?;
            }
        }
        match present(&self.slack_url) {
            Some(url) => {
                storage::notifications::upsert_env_target(
                    pool,
                    &target(ENV_SLACK, TargetKind::Slack, url, None),
                )
                .await?;
                tracing::info!(target = ENV_SLACK, "slack notifications configured by the environment");
            }
            None => {
                storage::notifications::remove_env_target(pool, ENV_SLACK).await?;
            }
        }
        Ok(())
    }
}

fn present(value: &Option<SecretString>) -> Option<&str> {
    value.as_ref().map(|v| v.expose_secret().trim()).filter(|v| !v.is_empty())
}
