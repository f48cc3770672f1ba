use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use wire_models::{SubjectRoot, Subjects};

use crate::Topology;

/// NATS settings shared by every service. Every flag is global, so the gateway's
/// subcommands (`nats-init --rotate`) take them too.
#[derive(Clone, clap::Args)]
#[command(next_help_heading = "NATS")]
pub struct NatsConfig {
    /// Comma-separated NATS server URLs; every one is tried and kept for reconnects.
    /// `tls://` requires TLS to that server. Falls back to NATS_URL.
    #[arg(id = "nats-urls", long = "nats-urls", env = "NATS_URLS", value_name = "NATS_URLS", global = true)]
    pub urls: Option<String>,
    /// A single NATS server URL (the original variable), used when NATS_URLS is unset.
    #[arg(
        id = "nats-url",
        long = "nats-url",
        env = "NATS_URL",
        value_name = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    pub url: String,
    /// Credentials file (user JWT and NKey seed) for this service's NATS identity.
    #[arg(
        id = "nats-creds",
        long = "nats-creds",
        env = "NATS_CREDS",
        value_name = "NATS_CREDS",
        global = true
    )]
    pub creds: Option<PathBuf>,
    /// Token for servers that authenticate with a token: NATS_TOKEN in the
    /// environment, or this file (never a flag, never logged).
    #[arg(
        id = "nats-token-file",
        long = "nats-token-file",
        env = "NATS_TOKEN_FILE",
        value_name = "NATS_TOKEN_FILE",
        global = true
    )]
    pub token_file: Option<PathBuf>,
    /// NATS_TOKEN, read by [`service_kit::config::LoadSecrets`].
    #[arg(skip)]
    pub token: Option<SecretString>,
    /// Refuse to talk to a server without TLS, whatever its URL's scheme says. Implied
    /// by NATS_TLS_CA and NATS_TLS_CERT.
    #[arg(
        id = "nats-tls-required",
        long = "nats-tls-required",
        env = "NATS_TLS_REQUIRED",
        value_name = "NATS_TLS_REQUIRED",
        global = true
    )]
    pub tls_required: bool,
    /// PEM file of the CA(s) that signed the servers' certificates; it replaces the
    /// system's roots.
    #[arg(
        id = "nats-tls-ca",
        long = "nats-tls-ca",
        env = "NATS_TLS_CA",
        value_name = "NATS_TLS_CA",
        global = true
    )]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for servers that verify clients (mutual TLS), with
    /// NATS_TLS_KEY. It composes with NATS_CREDS: TLS proves the host, the credentials
    /// the identity.
    #[arg(
        id = "nats-tls-cert",
        long = "nats-tls-cert",
        env = "NATS_TLS_CERT",
        value_name = "NATS_TLS_CERT",
        global = true
    )]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        id = "nats-tls-key",
        long = "nats-tls-key",
        env = "NATS_TLS_KEY",
        value_name = "NATS_TLS_KEY",
        global = true
    )]
    pub tls_key: Option<PathBuf>,
    /// First subject token(s); every subject lives under it.
    #[arg(id = "subject-root", long = "subject-root", env = "SUBJECT_ROOT", value_name = "SUBJECT_ROOT", default_value = SubjectRoot::DEFAULT, value_parser = parse_root, global = true)]
    pub subject_root: SubjectRoot,
    /// JetStream stream holding agent events.
    #[arg(id = "events-stream", long = "events-stream", env = "EVENTS_STREAM", value_name = "EVENTS_STREAM", default_value = "EVENTS", value_parser = parse_name, global = true)]
    pub events_stream: String,
    /// JetStream stream holding inventory snapshots.
    #[arg(id = "inventory-stream", long = "inventory-stream", env = "INVENTORY_STREAM", value_name = "INVENTORY_STREAM", default_value = "INVENTORY", value_parser = parse_name, global = true)]
    pub inventory_stream: String,
    /// JetStream stream holding dead-lettered messages.
    #[arg(id = "dlq-stream", long = "dlq-stream", env = "DLQ_STREAM", value_name = "DLQ_STREAM", default_value = "DEADLETTER", value_parser = parse_name, global = true)]
    pub dlq_stream: String,
    /// JetStream stream holding incident-created notifications.
    #[arg(id = "incidents-stream", long = "incidents-stream", env = "INCIDENTS_STREAM", value_name = "INCIDENTS_STREAM", default_value = "INCIDENTS", value_parser = parse_name, global = true)]
    pub incidents_stream: String,
    /// KV bucket agents put their heartbeats in.
    #[arg(id = "agents-bucket", long = "agents-bucket", env = "AGENTS_BUCKET", value_name = "AGENTS_BUCKET", default_value = "AGENTS", value_parser = parse_name, global = true)]
    pub agents_bucket: String,
    /// Replicas of every stream (1 for a single server, 3 for a cluster).
    #[arg(id = "stream-replicas", long = "stream-replicas", env = "STREAM_REPLICAS", value_name = "STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5), global = true)]
    pub stream_replicas: u8,
    /// How long events stay in the events stream.
    #[arg(id = "events-max-age", long = "events-max-age", env = "EVENTS_MAX_AGE", value_name = "EVENTS_MAX_AGE", default_value = "7d", value_parser = service_kit::config::parse_duration, global = true)]
    pub events_max_age: Duration,
    /// JetStream de-duplication window for `Nats-Msg-Id`.
    #[arg(id = "dedup-window", long = "dedup-window", env = "DEDUP_WINDOW", value_name = "DEDUP_WINDOW", default_value = "2m", value_parser = service_kit::config::parse_duration, global = true)]
    pub dedup_window: Duration,
    /// Bytes the events stream may hold (per replica); when full, new events are
    /// refused and agents retry.
    #[arg(id = "events-max-bytes", long = "events-max-bytes", env = "EVENTS_MAX_BYTES", value_name = "EVENTS_MAX_BYTES", default_value = "4GiB", value_parser = service_kit::config::parse_bytes, global = true)]
    pub events_max_bytes: u64,
    /// Bytes the inventory stream may hold (per replica).
    #[arg(id = "inventory-max-bytes", long = "inventory-max-bytes", env = "INVENTORY_MAX_BYTES", value_name = "INVENTORY_MAX_BYTES", default_value = "2GiB", value_parser = service_kit::config::parse_bytes, global = true)]
    pub inventory_max_bytes: u64,
    /// Bytes the dead-letter stream may hold (per replica); the oldest go first.
    #[arg(id = "dlq-max-bytes", long = "dlq-max-bytes", env = "DLQ_MAX_BYTES", value_name = "DLQ_MAX_BYTES", default_value = "1GiB", value_parser = service_kit::config::parse_bytes, global = true)]
    pub dlq_max_bytes: u64,
    /// How long a dead-lettered message is kept (the oldest also go first when the
    /// stream reaches `DLQ_MAX_BYTES`).
    #[arg(id = "dlq-max-age", long = "dlq-max-age", env = "DLQ_MAX_AGE", value_name = "DLQ_MAX_AGE", default_value = "30d", value_parser = service_kit::config::parse_duration, global = true)]
    pub dlq_max_age: Duration,
    /// Bytes the incident-notification stream may hold (per replica).
    #[arg(id = "incidents-max-bytes", long = "incidents-max-bytes", env = "INCIDENTS_MAX_BYTES", value_name = "INCIDENTS_MAX_BYTES", default_value = "256MiB", value_parser = service_kit::config::parse_bytes, global = true)]
    pub incidents_max_bytes: u64,
    /// Bytes the heartbeat bucket may hold (per replica; about 350 bytes an agent).
    #[arg(id = "agents-bucket-max-bytes", long = "agents-bucket-max-bytes", env = "AGENTS_BUCKET_MAX_BYTES", value_name = "AGENTS_BUCKET_MAX_BYTES", default_value = "1GiB", value_parser = service_kit::config::parse_bytes, global = true)]
    pub agents_bucket_max_bytes: u64,
    /// Payload bytes one agent may have copied into the dead-letter stream per hour;
    /// past it, its letters carry headers only.
    #[arg(id = "dlq-agent-bytes-per-hour", long = "dlq-agent-bytes-per-hour", env = "DLQ_AGENT_BYTES_PER_HOUR", value_name = "DLQ_AGENT_BYTES_PER_HOUR", default_value = "4MiB", value_parser = service_kit::config::parse_bytes, global = true)]
    pub dlq_agent_bytes_per_hour: u64,
    /// Letters one agent may have parked per hour; past it, nothing more is parked for
    /// it (counted and logged; the message stays in its own stream).
    #[arg(id = "dlq-agent-messages-per-hour", long = "dlq-agent-messages-per-hour", env = "DLQ_AGENT_MESSAGES_PER_HOUR", value_name = "DLQ_AGENT_MESSAGES_PER_HOUR", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub dlq_agent_messages_per_hour: u64,
    /// The largest payload copied into one letter; a larger one is cut (its size kept).
    #[arg(id = "dlq-max-payload", long = "dlq-max-payload", env = "DLQ_MAX_PAYLOAD", value_name = "DLQ_MAX_PAYLOAD", default_value = "64KiB", value_parser = service_kit::config::parse_bytes, global = true)]
    pub dlq_max_payload: u64,
    /// Timeout of every NATS request (and of JetStream API calls).
    #[arg(id = "nats-request-timeout", long = "nats-request-timeout", env = "NATS_REQUEST_TIMEOUT", value_name = "NATS_REQUEST_TIMEOUT", default_value = "5s", value_parser = service_kit::config::parse_duration, global = true)]
    pub request_timeout: Duration,
}

fn parse_root(s: &str) -> Result<SubjectRoot, String> {
    SubjectRoot::parse(s).map_err(|e| e.to_string())
}

fn parse_name(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        Ok(s.to_owned())
    } else {
        Err("must be 1 to 64 characters of [A-Za-z0-9_-]".into())
    }
}

fn split_urls(raw: &str) -> Vec<String> {
    raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// Comma-separated NATS server URLs, each of which parses; the one parser of
/// `NATS_URLS` and of the URLs handed to agents (`AGENT_NATS_URLS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrls(pub Vec<String>);

/// Parses [`ServerUrls`] (a clap `value_parser`).
pub fn parse_server_urls(raw: &str) -> Result<ServerUrls, String> {
    let urls = split_urls(raw);
    if urls.is_empty() {
        return Err("no server URL given".into());
    }
    for url in &urls {
        url.parse::<async_nats::ServerAddr>()
            .map_err(|e| format!("{url:?} is not a valid server URL: {e}"))?;
    }
    Ok(ServerUrls(urls))
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("urls", &self.server_urls())
            .field("creds", &self.creds)
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .field("tls_required", &self.tls_required())
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("subject_root", &self.subject_root)
            .field("events_stream", &self.events_stream)
            .field("inventory_stream", &self.inventory_stream)
            .field("dlq_stream", &self.dlq_stream)
            .field("agents_bucket", &self.agents_bucket)
            .finish_non_exhaustive()
    }
}

impl service_kit::config::LoadSecrets for NatsConfig {
    fn load_secrets(&mut self, env: &service_kit::config::SecretEnv<'_>) -> Result<(), String> {
        self.token = env.secret("NATS_TOKEN", self.token_file.as_deref())?;
        Ok(())
    }
}

impl NatsConfig {
    /// Whether every connection must be TLS: asked for, or implied by a CA or client
    /// certificate (whoever configures those means TLS, and a server that does not
    /// offer it must not get the credentials in clear text).
    pub fn tls_required(&self) -> bool {
        self.tls_required || self.tls_ca.is_some() || self.tls_cert.is_some()
    }

    /// `options` with these TLS settings; every connection a service opens (its own,
    /// the gateway's system user) goes through here.
    pub fn with_tls(&self, options: async_nats::ConnectOptions) -> async_nats::ConnectOptions {
        let mut options = options.require_tls(self.tls_required());
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        options
    }

    /// The server URLs: NATS_URLS split on commas, else NATS_URL.
    pub fn server_urls(&self) -> Vec<String> {
        split_urls(self.urls.as_deref().filter(|s| !s.trim().is_empty()).unwrap_or(&self.url))
    }

    /// Checks the URLs parse, before anything connects.
    pub fn validate(&self) -> Result<(), String> {
        let raw = self.urls.as_deref().filter(|s| !s.trim().is_empty()).unwrap_or(&self.url);
        parse_server_urls(raw).map_err(|e| format!("NATS_URLS: {e}"))?;
        if let Some(creds) = &self.creds
            && !creds.is_file()
        {
            return Err(format!("NATS_CREDS: {} is not a readable file", creds.display()));
        }
        use service_kit::config::{Pem, read_pem};
        if let Some(ca) = &self.tls_ca {
            read_pem("NATS_TLS_CA", ca, Pem::Certificates)?;
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                read_pem("NATS_TLS_CERT", cert, Pem::Certificates)?;
                read_pem("NATS_TLS_KEY", key, Pem::PrivateKey)?;
            }
            (None, None) => {}
            _ => return Err("NATS_TLS_CERT and NATS_TLS_KEY: set both or neither".into()),
        }
        Ok(())
    }

    /// The per-agent dead-letter budget these settings describe.
    pub fn dead_letter_budget(&self) -> crate::DeadLetterBudget {
        crate::DeadLetterBudget::new(
            self.dlq_agent_bytes_per_hour,
            self.dlq_agent_messages_per_hour,
            usize::try_from(self.dlq_max_payload).unwrap_or(usize::MAX),
        )
    }

    /// Refuses a placeholder or example token outside development mode.
    pub fn check_secrets(&self, dev: bool) -> Result<(), String> {
        match &self.token {
            Some(token) => {
                use secrecy::ExposeSecret as _;
                service_kit::config::check_secret("NATS_TOKEN", token.expose_secret(), dev)
            }
            None => Ok(()),
        }
    }

    pub fn subjects(&self) -> Subjects {
        Subjects::new(self.subject_root.clone())
    }

    pub fn topology(&self) -> Topology {
        Topology {
            subjects: self.subjects(),
            events_stream: self.events_stream.clone(),
            inventory_stream: self.inventory_stream.clone(),
            dlq_stream: self.dlq_stream.clone(),
            incidents_stream: self.incidents_stream.clone(),
            agents_bucket: self.agents_bucket.clone(),
            replicas: usize::from(self.stream_replicas),
            events_max_age: self.events_max_age,
            dlq_max_age: self.dlq_max_age,
            dedup_window: self.dedup_window,
            max_bytes: crate::topology::StreamBytes {
                events: self.events_max_bytes,
                inventory: self.inventory_max_bytes,
                dlq: self.dlq_max_bytes,
                incidents: self.incidents_max_bytes,
                agents_bucket: self.agents_bucket_max_bytes,
            },
        }
    }
}
