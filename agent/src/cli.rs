//! The command line: `enroll`, `run` and `check`, with the configuration file and a
//! few overrides shared by all three.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{Config, DEFAULT_CONFIG, Overrides};
use crate::state::StateDir;

/// How long `enroll` keeps trying while the API is unreachable or overloaded.
const ENROLL_PATIENCE: Duration = Duration::from_secs(60);

/// Exit code for a configuration that cannot be used (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(name = "opspilot-agent", version, about = "The OpsPilot agent for Linux hosts")]
pub struct Cli {
    /// The configuration file.
    #[arg(long, env = "OPSPILOT_AGENT_CONFIG", default_value = DEFAULT_CONFIG, global = true)]
    pub config: PathBuf,
    /// Overrides `state_dir` in the configuration file.
    #[arg(long, env = "OPSPILOT_AGENT_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Enroll this host (or enroll it again, with the proof of its key).
    Enroll {
        /// The OpsPilot API, e.g. https://opspilot.example.net (overrides `api`).
        #[arg(long, env = "OPSPILOT_AGENT_API")]
        api: Option<String>,
        /// A file holding the enrollment token (not needed to enroll again).
        #[arg(long, env = "OPSPILOT_AGENT_TOKEN_FILE")]
        token_file: Option<PathBuf>,
    },
    /// Run the agent until SIGTERM or SIGINT.
    Run,
    /// Validate the configuration, the state, the API and the connection to NATS.
    Check,
}

/// Logs to stderr (journald adds the timestamps), filtered by `OPSPILOT_AGENT_LOG`.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OPSPILOT_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

pub async fn main(cli: Cli) -> ExitCode {
    // Several dependencies enable different rustls providers and rustls refuses to pick
    // one (the API and NATS may both be TLS); Err means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let api = match &cli.command {
        Cmd::Enroll { api, .. } => api.clone(),
        _ => None,
    };
    let config = match Config::load(&cli.config, &Overrides { state_dir: cli.state_dir.clone(), api }) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("opspilot-agent: invalid configuration: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = match cli.command {
        Cmd::Enroll { token_file, .. } => enroll(&config, token_file.as_deref()).await,
        Cmd::Run => run(config).await,
        Cmd::Check => check(&config).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("opspilot-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn enroll(config: &Config, token_file: Option<&Path>) -> anyhow::Result<()> {
    let api = config
        .api
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("no api: pass --api or set `api` in the config"))?;
    let token = match token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            let token = text.trim().to_owned();
            if token.is_empty()
                || token.len() > 256
                || token.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                anyhow::bail!("{} does not hold an enrollment token", path.display());
            }
            Some(token)
        }
        None => None,
    };
    // A backend that is restarting or rate limiting answers again soon; a refusal
    // (a bad token, a machine that must prove its key) does not change by waiting.
    let deadline = std::time::Instant::now() + ENROLL_PATIENCE;
    let mut attempt = 0;
    let enrollment = loop {
        match crate::enroll::enroll(config, api, token.as_deref()).await {
            Ok(enrollment) => break enrollment,
            Err(err) if err.is_unavailable() && std::time::Instant::now() < deadline => {
                let wait = service_kit::backoff::Backoff::RECONNECT.delay(attempt);
                attempt += 1;
                eprintln!("opspilot-agent: {err}; trying again in {wait:?}");
                tokio::time::sleep(wait).await;
            }
            Err(err) => return Err(err.into()),
        }
    };
    println!("enrolled as agent {}", enrollment.agent_id);
    // Root enrolling into the service user's directory gave the files to that user (a
    // failure to do so failed the enrollment).
    if let Ok(dir) = std::fs::metadata(&config.state_dir)
        && let Some((uid, gid)) =
            crate::state::owner_for(rustix::process::geteuid().is_root(), dir.uid(), dir.gid())
    {
        println!("state files owned by uid {uid} gid {gid}, the owner of {}", config.state_dir.display());
    }
    Ok(())
}

async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(err) => {
                tracing::error!(error = %err, "cannot watch SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping");
        signal.cancel();
    });
    crate::run::run(config, shutdown).await
}

/// Checks what can be checked without changing anything, printing one line per check.
async fn check(config: &Config) -> anyhow::Result<()> {
    println!("ok   configuration");
    let fingerprint = crate::state::machine_fingerprint(&config.host.machine_id, &config.host.product_uuid)
        .map_err(|e| anyhow::anyhow!(e))?;
    println!("ok   machine fingerprint ({} characters)", fingerprint.len());
    let state = StateDir::new(&config.state_dir);
    let enrollment = state
        .enrollment()?
        .ok_or_else(|| anyhow::anyhow!("not enrolled (no enrollment in {})", config.state_dir.display()))?;
    if state.key()?.is_none() {
        anyhow::bail!("the state has an enrollment but no key: enroll again");
    }
    println!("ok   enrolled as {} with {}", enrollment.agent_id, enrollment.api);
    if let Some(expires) = enrollment.creds_expires_at {
        if expires <= chrono::Utc::now() {
            anyhow::bail!("nats credentials expired at {expires}: enroll again");
        }
        println!("ok   nats credentials valid until {expires}");
    }
    // Where credentials are renewed: a host that cannot reach it works until they expire.
    let api = agent_client::EnrollClient::new(&enrollment.api)?;
    api.health().await.map_err(|e| anyhow::anyhow!("the api {} does not answer: {e}", enrollment.api))?;
    println!("ok   api {} answers", enrollment.api);
    let options = if state.has_creds() {
        natsbus::creds_file_options(&state.creds_path())
    } else {
        async_nats::ConnectOptions::new()
    };
    let connect =
        agent_client::connect(options, &enrollment.nats_urls, &enrollment.agent_id, Duration::from_secs(5));
    let client = tokio::time::timeout(Duration::from_secs(15), connect).await.map_err(|_| {
        anyhow::anyhow!("no nats server of {:?} accepted the agent within 15 s", enrollment.nats_urls)
    })??;
    let subjects = wire_models::Subjects::new(wire_models::SubjectRoot::parse(&enrollment.subject_root)?);
    agent_client::Bus::new(client, subjects, &enrollment.heartbeat_bucket).await?;
    println!("ok   connected to nats and bound to bucket {}", enrollment.heartbeat_bucket);
    Ok(())
}
