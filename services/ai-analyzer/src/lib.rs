//! The ai-analyzer: explains an incident and proposes one safe, allow-listed action,
//! with OpenRouter (or any OpenAI-compatible endpoint) or with built-in rules.
//!
//! It serves `AnalyzeRequest`s on `{root}.sys.analyze` in a queue group (the API's
//! analyze endpoint reaches it only that way) and, when AUTO_ANALYZE is on, analyzes
//! new critical incidents from the INCIDENTS stream. Either way the outcome is written
//! to the incident in Postgres; the AI never runs an action itself.

#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod analyzer;
mod answer;
mod auto;
mod cache;
mod engine;
mod grounding;
mod metrics;
pub mod notify;
pub mod openrouter;
mod prompt;
mod requests;
pub mod rules;
mod text;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use natsbus::NatsConfig;
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use service_kit::admin::Readiness;
use service_kit::service::{AdminArgs, Service};
use service_kit::telemetry::TelemetryArgs;
use storage::DbConfig;
use storage::redis::RedisConfig;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::analyzer::Analyzer;

/// Configuration of the ai-analyzer.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "ai-analyzer",
    version,
    args_override_self = true,
    about = "OpsPilot AI analyzer: incident analysis over NATS",
    next_help_heading = "AI analysis"
)]
pub struct Config {
    /// OpenRouter API key, sent as a bearer token; without it the rule-based analyzer
    /// answers. OPENROUTER_KEY in the environment, or this file (never a flag, never
    /// logged).
    #[arg(long = "openrouter-key-file", env = "OPENROUTER_KEY_FILE", value_name = "OPENROUTER_KEY_FILE")]
    pub openrouter_key_file: Option<std::path::PathBuf>,
    /// OPENROUTER_KEY, read by [`service_kit::config::LoadSecrets`].
    #[arg(skip)]
    pub openrouter_key: Option<SecretString>,
    /// Base URL of the chat-completions API: OpenRouter, or any OpenAI-compatible
    /// server (`{base}/chat/completions` is called).
    #[arg(long = "openrouter-base-url", env = "OPENROUTER_BASE_URL", value_name = "OPENROUTER_BASE_URL", default_value = "https://openrouter.ai/api/v1", value_parser = parse_base_url)]
    pub openrouter_base_url: Url,
    /// Model asked for the analysis (an OpenRouter model id, or the local server's).
    #[arg(long = "openrouter-model", env = "OPENROUTER_MODEL", value_name = "OPENROUTER_MODEL", default_value = "openai/gpt-4o-mini", value_parser = parse_model)]
    pub openrouter_model: String,
    /// Timeout of each call to the AI provider.
    #[arg(long = "ai-timeout", env = "AI_TIMEOUT", value_name = "AI_TIMEOUT", default_value = "20s", value_parser = service_kit::config::parse_duration)]
    pub ai_timeout: Duration,
    /// Budget of one analysis with the AI provider, retries and waits included; set the
    /// API's analyze request timeout above it.
    #[arg(long = "ai-deadline", env = "AI_DEADLINE", value_name = "AI_DEADLINE", default_value = "45s", value_parser = service_kit::config::parse_duration)]
    pub ai_deadline: Duration,
    /// Attempts per analysis: 429, 5xx, timeouts and connection errors are retried.
    #[arg(long = "ai-max-attempts", env = "AI_MAX_ATTEMPTS", value_name = "AI_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub ai_max_attempts: u32,
    /// Delay before the first retry; it doubles with every retry (with jitter). A
    /// `Retry-After` from the provider takes precedence.
    #[arg(long = "ai-backoff", env = "AI_BACKOFF", value_name = "AI_BACKOFF", default_value = "500ms", value_parser = service_kit::config::parse_duration)]
    pub ai_backoff: Duration,
    /// Longest delay between two retries.
    #[arg(long = "ai-backoff-max", env = "AI_BACKOFF_MAX", value_name = "AI_BACKOFF_MAX", default_value = "8s", value_parser = service_kit::config::parse_duration)]
    pub ai_backoff_max: Duration,
    /// Analyses in progress at once in this replica, requested and automatic together.
    #[arg(long = "ai-concurrency", env = "AI_CONCURRENCY", value_name = "AI_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub ai_concurrency: u32,
    /// Largest answer the model may write, in tokens.
    #[arg(long = "ai-max-tokens", env = "AI_MAX_TOKENS", value_name = "AI_MAX_TOKENS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(64..=32_768))]
    pub ai_max_tokens: u32,
    /// How long an AI analysis stays in the Redis cache, keyed by the incident's
    /// fingerprint (`0s` disables the cache).
    #[arg(long = "analysis-cache-ttl", env = "ANALYSIS_CACHE_TTL", value_name = "ANALYSIS_CACHE_TTL", default_value = "24h", value_parser = service_kit::config::parse_duration)]
    pub analysis_cache_ttl: Duration,
    /// Analyze new critical incidents automatically (from the incident-created
    /// messages).
    #[arg(long = "auto-analyze", env = "AUTO_ANALYZE", value_name = "AUTO_ANALYZE", default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_analyze: bool,
    /// Durable consumer name on the incidents stream (shared by every replica).
    #[arg(
        long = "auto-analyze-consumer",
        env = "AUTO_ANALYZE_CONSUMER",
        value_name = "AUTO_ANALYZE_CONSUMER",
        default_value = "ai-analyzer"
    )]
    pub auto_analyze_consumer: String,
    /// The agent's other incidents put in the prompt (newest first).
    #[arg(long = "recent-incidents", env = "RECENT_INCIDENTS", value_name = "RECENT_INCIDENTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=50))]
    pub recent_incidents: u32,
    #[command(flatten)]
    pub notify: notify::NotifyArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
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
}

impl service_kit::config::LoadSecrets for Config {
    fn load_secrets(&mut self, env: &service_kit::config::SecretEnv<'_>) -> Result<(), String> {
        self.openrouter_key = env.secret("OPENROUTER_KEY", self.openrouter_key_file.as_deref())?;
        self.notify.load_secrets(env)?;
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
        if self.ai_timeout.is_zero() {
            return Err("AI_TIMEOUT: must be more than 0".into());
        }
        if self.ai_deadline < self.ai_timeout {
            return Err("AI_DEADLINE: must be at least AI_TIMEOUT".into());
        }
        if self.ai_backoff_max < self.ai_backoff {
            return Err("AI_BACKOFF_MAX: must be at least AI_BACKOFF".into());
        }
        if !self.analysis_cache_ttl.is_zero() && self.analysis_cache_ttl < Duration::from_secs(1) {
            return Err("ANALYSIS_CACHE_TTL: must be 0s (off) or at least 1s".into());
        }
        if let Some(key) = self.key()
            && !key.expose_secret().chars().all(|c| c.is_ascii_graphic())
        {
            // The key itself is never echoed.
            return Err("OPENROUTER_KEY: must be printable ASCII without spaces".into());
        }
        if let Some(key) = self.key() {
            service_kit::config::check_secret("OPENROUTER_KEY", key.expose_secret(), self.dev.dev)?;
        }
        let name = &self.auto_analyze_consumer;
        if name.is_empty()
            || name.len() > 64
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err("AUTO_ANALYZE_CONSUMER: use 1 to 64 letters, digits, '-' and '_'".into());
        }
        if self.notify.consumer == self.auto_analyze_consumer {
            return Err("NOTIFY_CONSUMER: must differ from AUTO_ANALYZE_CONSUMER".into());
        }
        self.notify.validate(self.dev.dev)
    }

    /// The key, unless unset or blank.
    fn key(&self) -> Option<&SecretString> {
        self.openrouter_key.as_ref().filter(|k| !k.expose_secret().trim().is_empty())
    }

    /// The analyzer this configuration asks for: OpenRouter with a key, rules without.
    pub fn build_analyzer(&self) -> anyhow::Result<Arc<dyn Analyzer>> {
        let Some(key) = self.key() else {
            return Ok(Arc::new(rules::RulesAnalyzer));
        };
        let settings = openrouter::Settings {
            base_url: self.openrouter_base_url.clone(),
            key: key.clone(),
            model: self.openrouter_model.clone(),
            timeout: self.ai_timeout,
            deadline: self.ai_deadline,
            max_attempts: self.ai_max_attempts,
            backoff: self.ai_backoff,
            backoff_max: self.ai_backoff_max,
            max_tokens: self.ai_max_tokens,
        };
        Ok(Arc::new(openrouter::OpenRouterAnalyzer::new(settings)?))
    }
}

fn parse_base_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("must be an http:// or https:// URL".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials (the key goes in OPENROUTER_KEY)".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    Ok(url)
}

fn parse_model(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 128 || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("must be 1 to 128 characters without spaces".into());
    }
    Ok(s.to_owned())
}

/// The admin port when ADMIN_ADDR is not set.
pub const ADMIN_PORT: u16 = 9093;

/// A started analyzer.
pub struct Running {
    pub admin_addr: SocketAddr,
    service: service_kit::service::Running,
    handled: Arc<AtomicU64>,
}

impl Running {
    /// Analyze requests this replica has answered so far.
    pub fn requests_handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }

    /// Waits until the analyzer stops (after `shutdown` is cancelled, or on a fatal error).
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
    use anyhow::Context as _;

    // Before anything is counted (the binary's runtime has installed the recorder; a
    // test has not).
    service_kit::metrics::init(metrics::describe);
    // The HTTP client needs a TLS crypto provider; installing it twice is harmless.
    service_kit::install_crypto_provider();
    let analyzer = config.build_analyzer().context("building the AI client")?;
    let client = natsbus::connect_until(&config.nats, "ai-analyzer", &shutdown).await?;
    let js = async_nats::jetstream::new(client.clone());
    let topology = config.nats.topology();
    natsbus::ensure_topology(&js, &topology).await?;
    let pool = storage::connect(&config.db).await?;
    storage::check_schema(&pool).await?;
    let redis = storage::redis::connect(&config.redis).await?;
    match analyzer.model() {
        Some(model) => {
            tracing::info!(analyzer = analyzer.name(), model, base_url = %config.openrouter_base_url, "analyzing with the AI provider")
        }
        None => tracing::info!(
            analyzer = analyzer.name(),
            "OPENROUTER_KEY is not set; the rule-based analyzer answers"
        ),
    }

    let concurrency = usize::try_from(config.ai_concurrency).unwrap_or(1);
    let engine = Arc::new(engine::Engine {
        pool: pool.clone(),
        cache: cache::AnalysisCache::new(
            redis.clone(),
            config.redis.keys(),
            config.analysis_cache_ttl,
            config.redis.timeout,
        ),
        analyzer,
        limit: Arc::new(Semaphore::new(concurrency)),
        recent_incidents: config.recent_incidents,
        feed: natsbus::feed::FeedPublisher::new(client.clone(), topology.subjects.clone()),
    });

    let readiness = Readiness::new()
        .with_check("postgres", storage::ready_check(pool.clone()))
        .with_check("nats", natsbus::ready_check(client.clone()))
        .with_check("redis", storage::redis::ready_check(redis.clone()));
    let (admin_addr, admin) =
        service_kit::admin::spawn(config.admin.admin_addr(ADMIN_PORT), readiness, shutdown.clone()).await?;

    let mut service = Service::new("ai-analyzer");
    let handled = Arc::new(AtomicU64::new(0));
    if config.auto_analyze {
        let spec = auto::AutoSpec::new(
            topology.incidents_stream.clone(),
            config.auto_analyze_consumer.clone(),
            topology.subjects.incident_created(),
            topology.subjects.incident_created(),
            concurrency,
        );
        // Created before reporting ready, so a ready replica is part of the consumer.
        natsbus::ensure_durable(&js, &spec.bus).await.context("creating the auto-analysis consumer")?;
        service.worker(auto::run(js.clone(), spec, Arc::clone(&engine), shutdown.clone()));
    } else {
        tracing::info!("automatic analysis of critical incidents is off (AUTO_ANALYZE=false)");
    }
    if config.notify.enabled {
        config
            .notify
            .sync_env_targets(&pool)
            .await
            .context("writing the environment's notification targets")?;
        let spec = notify::route::spec(topology.incidents_stream.clone(), config.notify.consumer.clone());
        natsbus::ensure_durable(&js, &spec).await.context("creating the notification consumer")?;
        let written = Arc::new(tokio::sync::Notify::new());
        let router = notify::route::Router {
            pool: pool.clone(),
            subjects: topology.subjects.clone(),
            written: Arc::clone(&written),
        };
        service.worker(notify::route::run(js.clone(), spec, router, shutdown.clone()));
        let n = &config.notify;
        let sender = notify::send::Sender {
            pool: pool.clone(),
            http: notify::send::client(n.timeout).context("building the notification HTTP client")?,
            settings: notify::send::Settings {
                timeout: n.timeout,
                backoff: service_kit::backoff::Backoff::new(n.backoff, n.backoff_max),
                retry_for: n.retry_for,
                poll: n.poll,
                concurrency: n.concurrency,
                retention: n.retention,
            },
            written,
        };
        service.worker(notify::send::run(sender, shutdown.clone()));
    } else {
        tracing::info!("notifications are off in this replica (NOTIFY=false)");
    }
    // Subscribed before reporting ready, so a ready replica answers requests.
    let subscriber = requests::subscribe(&client, &topology.subjects).await?;
    service.worker(requests::serve(
        client.clone(),
        subscriber,
        engine,
        Arc::clone(&handled),
        shutdown.clone(),
    ));
    tracing::info!(%admin_addr, auto_analyze = config.auto_analyze, concurrency, "ai-analyzer ready");

    service.on_stop_best_effort("flushing nats", async move { Ok(client.flush().await?) });
    service.on_stop("the admin server", async move { Ok(admin.await??) });
    let service = service.start(admin_addr, shutdown, config.admin.shutdown_grace);
    Ok(Running { admin_addr, service, handled })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration from `flags`, with exactly `secrets` as the secret variables.
    fn parse_with(flags: &[&str], secrets: &[(&str, &str)]) -> Result<Config, String> {
        let mut args = vec!["ai-analyzer"];
        args.extend(flags);
        service_kit::config::try_parse_with_secrets::<Config, _, _>(
            args,
            service_kit::config::SecretEnv::fixed(secrets),
        )
    }

    fn parse(flags: &[&str]) -> Result<Config, String> {
        parse_with(flags, &[])
    }

    #[test]
    fn defaults_are_valid() {
        let config = parse(&[]).unwrap();
        config.validate().unwrap();
        assert_eq!(config.openrouter_base_url.as_str(), "https://openrouter.ai/api/v1");
        assert!(config.auto_analyze);
        assert_eq!(config.analysis_cache_ttl, Duration::from_secs(86_400));
    }

    #[test]
    fn the_key_is_never_in_debug_output() {
        let config = parse_with(&[], &[("OPENROUTER_KEY", "sk-or-v1-very-secret")]).unwrap();
        assert!(!format!("{config:?}").contains("very-secret"));
        service_kit::install_crypto_provider();
        let analyzer = config.build_analyzer().unwrap();
        assert_eq!(analyzer.name(), "openrouter");
        assert_eq!(analyzer.model(), Some("openai/gpt-4o-mini"));
    }

    #[test]
    fn secrets_are_no_flags_and_come_from_files_too() {
        for flag in [
            "--openrouter-key",
            "--notify-webhook-url",
            "--notify-webhook-secret",
            "--notify-slack-webhook-url",
        ] {
            let err = parse(&[flag, "x"]).unwrap_err();
            assert!(err.contains(&format!("unexpected argument '{flag}'")), "{flag}: {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("openrouter-key");
        std::fs::write(&key, "sk-or-v1-from-a-file\n").unwrap();
        let config = parse(&["--openrouter-key-file", key.to_str().unwrap()]).unwrap();
        assert_eq!(config.openrouter_key.unwrap().expose_secret(), "sk-or-v1-from-a-file");
    }

    #[test]
    fn notification_secrets_are_never_in_debug_output() {
        let config = parse_with(
            &[],
            &[
                ("NOTIFY_WEBHOOK_URL", "https://example.net/hook/url-token"),
                ("NOTIFY_WEBHOOK_SECRET", "webhook-signing-secret"),
                ("NOTIFY_SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T0/B0/slack-token"),
            ],
        )
        .unwrap();
        config.validate().unwrap();
        let debug = format!("{config:?}");
        for secret in ["url-token", "webhook-signing-secret", "slack-token"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
    }

    #[test]
    fn a_blank_key_means_rules() {
        let config = parse_with(&[], &[("OPENROUTER_KEY", "  ")]).unwrap();
        assert_eq!(config.build_analyzer().unwrap().name(), "rules");
        let config = parse(&[]).unwrap();
        assert_eq!(config.build_analyzer().unwrap().name(), "rules");
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (flag, value, var) in [
            ("--openrouter-base-url", "ftp://x", "OPENROUTER_BASE_URL"),
            ("--openrouter-base-url", "not a url", "OPENROUTER_BASE_URL"),
            ("--openrouter-model", "a b", "OPENROUTER_MODEL"),
            ("--ai-concurrency", "0", "AI_CONCURRENCY"),
            ("--ai-max-attempts", "11", "AI_MAX_ATTEMPTS"),
            ("--ai-timeout", "soon", "AI_TIMEOUT"),
            ("--auto-analyze", "maybe", "AUTO_ANALYZE"),
            ("--openrouter-base-url", "https://user:pw@openrouter.ai/api/v1", "OPENROUTER_BASE_URL"),
            ("--notify-events", "incident,everything", "NOTIFY_EVENTS"),
            ("--notify-min-severity", "fatal", "NOTIFY_MIN_SEVERITY"),
            ("--notify-rate-per-minute", "0", "NOTIFY_RATE_PER_MINUTE"),
        ] {
            let err = parse(&[flag, value]).unwrap_err();
            assert!(err.contains(var), "{flag} {value}: {err}");
        }
        let webhook = |url| [("NOTIFY_WEBHOOK_URL", url), ("NOTIFY_WEBHOOK_SECRET", "0123456789abcdef")];
        for (flags, secrets, var) in [
            (&["--ai-timeout", "0s"][..], &[][..], "AI_TIMEOUT"),
            (&["--ai-timeout", "10s", "--ai-deadline", "5s"][..], &[][..], "AI_DEADLINE"),
            (&["--ai-backoff", "2s", "--ai-backoff-max", "1s"][..], &[][..], "AI_BACKOFF_MAX"),
            (&["--analysis-cache-ttl", "10ms"][..], &[][..], "ANALYSIS_CACHE_TTL"),
            (&["--auto-analyze-consumer", "a.b"][..], &[][..], "AUTO_ANALYZE_CONSUMER"),
            (&[][..], &[("OPENROUTER_KEY", "sk-or\u{7f}-secret")][..], "OPENROUTER_KEY"),
            (&["--notify-consumer", "ai-analyzer"][..], &[][..], "NOTIFY_CONSUMER"),
            (&[][..], &[("NOTIFY_WEBHOOK_URL", "https://example.net/h")][..], "NOTIFY_WEBHOOK_SECRET"),
            (
                &[][..],
                &[("NOTIFY_WEBHOOK_URL", "https://example.net/h"), ("NOTIFY_WEBHOOK_SECRET", "short")][..],
                "NOTIFY_WEBHOOK_SECRET",
            ),
            (&[][..], &webhook("ftp://example.net/h")[..], "NOTIFY_WEBHOOK_URL"),
            (&[][..], &webhook("https://u:p@example.net/h")[..], "NOTIFY_WEBHOOK_URL"),
            (
                &[][..],
                &[("NOTIFY_SLACK_WEBHOOK_URL", "http://hooks.slack.com/services/x")][..],
                "NOTIFY_SLACK_WEBHOOK_URL",
            ),
            (&["--notify-backoff", "2s", "--notify-backoff-max", "1s"][..], &[][..], "NOTIFY_BACKOFF_MAX"),
            (&["--notify-poll", "1ms"][..], &[][..], "NOTIFY_POLL"),
            (&["--notify-retention", "10m"][..], &[][..], "NOTIFY_RETENTION"),
        ] {
            let err = parse_with(flags, secrets).unwrap().validate().unwrap_err();
            assert!(err.starts_with(var), "{flags:?} {secrets:?}: {err}");
        }
    }
}
