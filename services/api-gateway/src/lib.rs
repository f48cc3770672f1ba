//! The api-gateway: the HTTP API operators, dashboards and scripts use. It reaches
//! agents and the other services only through NATS and Postgres.

#![cfg_attr(not(test), warn(unused_crate_dependencies))]

// The binary (main.rs) installs it as the global allocator.
use mimalloc as _;

mod audit_writer;
mod auth;
mod bus_auth;
mod cache;
mod client_ip;
mod config;
mod console;
mod error;
mod extract;
mod fleet_action;
mod http;
mod inventory_diff;
mod metrics;
mod nats_init;
mod passwords;
mod presence_cache;
mod presence_view;
mod ratelimit;
mod requests;
mod routes;
mod rpc;
mod sessions;
mod state;
mod stream;
mod ttl_cache;
mod views;

pub use auth::Role;
pub use config::{Command, Config, ServeArgs};
pub use nats_init::NatsInitArgs;
pub use requests::*;
pub use views::*;

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use secrecy::{ExposeSecret, SecretString};
use service_kit::admin::Readiness;
use service_kit::service::Service;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use utoipa_swagger_ui::SwaggerUi;

/// Largest request body accepted (413 beyond).
pub const BODY_LIMIT: usize = 64 * 1024;

/// The admin port when ADMIN_ADDR is not set.
pub const ADMIN_PORT: u16 = 9090;

/// How long an execute's read of an agent's presence is kept at most. The change feed
/// forgets it at once when the presence changes; this only bounds the cost of a change
/// the feed lost, and it is well inside the tracker's own detection delay (the offline
/// threshold) and the execute path's agent cache.
const PRESENCE_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// How long finished actions wait for company before they are announced on the change
/// feed together: invisible on an operator's stream, and one publish (and one read back
/// by each replica) per batch instead of per execute.
const ANNOUNCE_LINGER: std::time::Duration = std::time::Duration::from_millis(20);

/// A started gateway.
pub struct Running {
    pub addr: SocketAddr,
    /// Where `/metrics` (and the probes) are served.
    pub admin_addr: SocketAddr,
    service: service_kit::service::Running,
}

impl Running {
    /// Waits until the gateway stops (after `shutdown` is cancelled, or on a fatal error).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.service.wait().await
    }
}

/// Runs the subcommand the configuration names (serving by default).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    match config.command.clone().unwrap_or(Command::Serve) {
        Command::Serve => start(config, shutdown).await?.wait().await,
        Command::Migrate => {
            storage::ensure_database(&config.db).await?;
            let pool = storage::connect(&config.db).await?;
            storage::migrate(&pool).await?;
            Ok(())
        }
        Command::NatsInit(request) => nats_init::run(&config, request).await,
        Command::CreateUser { email, role } => {
            let password = match &config.serve.admin_password {
                Some(password) => password.clone(),
                None => read_password_from_stdin()?,
            };
            let pool = storage::connect(&config.db).await?;
            storage::check_schema(&pool).await?;
            let hasher = auth::Hasher::new(1, std::time::Duration::from_secs(60));
            let user = routes::auth::create_user(&pool, &hasher, &email, password, role)
                .await
                .map_err(|e| anyhow::anyhow!("creating the user: {e}"))?;
            tracing::info!(user_id = %user.id, role = role.as_str(), "user created");
            Ok(())
        }
    }
}

fn read_password_from_stdin() -> anyhow::Result<SecretString> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("reading the password from standard input")?;
    Ok(SecretString::from(line.trim_end_matches(['\r', '\n']).to_owned()))
}

/// Connects to everything and starts serving HTTP; returns once ready.
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    // Before anything is counted (the binary's runtime has installed the recorder; a
    // test has not).
    service_kit::metrics::init(metrics::describe);
    let secret = config.serve.jwt_secret.clone().context("JWT_SECRET is required")?;
    let mut nats = config.nats.clone();
    if nats.creds.is_none()
        && let Some(dir) = &config.bus_auth.auth_dir
    {
        // The gateway's own identity sits in the directory nats-init wrote.
        nats.creds = Some(dir.join("creds").join("api-gateway.creds"));
    }
    let client = natsbus::connect_until(&nats, "api-gateway", &shutdown).await?;
    let pool = storage::connect(&config.db).await?;
    storage::check_schema(&pool).await?;
    let redis = storage::redis::connect(&config.redis).await?;
    ensure_first_admin(&pool, &config).await?;
    let bus_auth = std::sync::Arc::new(bus_auth::BusAuth::start(&config.bus_auth, &config.nats).await?);

    let serve = &config.serve;
    let limits = ratelimit::Limits {
        per_ip_per_minute: serve.rate_limit_ip,
        per_user_per_minute: serve.rate_limit_user,
        login_per_ip_per_minute: serve.rate_limit_login,
        login_per_account_per_10_minutes: serve.rate_limit_login_account,
        enroll_per_ip_per_minute: serve.rate_limit_enroll,
    };
    let nats_urls = match &serve.agent_nats_urls {
        Some(urls) => urls.0.clone(),
        None => config.nats.server_urls(),
    };
    let presence_cache = std::sync::Arc::new(presence_cache::PresenceCache::new(PRESENCE_CACHE_TTL));
    let feed = natsbus::feed::FeedPublisher::new(client.clone(), config.nats.subjects());
    let feed_hub = stream::FeedHub::new(
        client.clone(),
        std::sync::Arc::clone(&presence_cache),
        config.nats.incidents_stream.clone(),
        config.nats.subjects(),
        usize::try_from(serve.stream_buffer).unwrap_or(4096),
        serve.stream_keepalive,
        shutdown.clone(),
    );
    let feed_end = feed_hub.current_end().await;
    let runs = tokio_util::task::TaskTracker::new();
    let state = state::AppState::new(state::Inner {
        pool: pool.clone(),
        redis: redis.clone(),
        presence: presence::PresenceStore::new(redis.clone(), presence::Keys::for_config(&config.redis)),
        keys: config.redis.keys(),
        nats: client.clone(),
        subjects: config.nats.subjects(),
        jwt: auth::JwtKeys::new(&secret, &serve.jwt_issuer, serve.token_ttl),
        limiter: ratelimit::RateLimiter::new(redis.clone(), config.redis.keys(), limits),
        users: auth::UserCache::new(std::time::Duration::from_secs(1)),
        agents: state::AgentCache::new(std::time::Duration::from_secs(1)),
        presence_cache,
        hasher: auth::Hasher::new(usize::from(serve.max_concurrent_hashes), serve.password_hash_wait),
        rpc_timeout: serve.rpc_timeout,
        analyze_timeout: serve.analyze_timeout,
        bootstrap_token_hash: serve
            .bootstrap_token
            .as_ref()
            .map(|t| wire_models::sha256_hex(t.expose_secret().as_bytes())),
        enrollment: state::EnrollmentInfo {
            nats_urls,
            subject_root: config.nats.subject_root.to_string(),
            agents_bucket: config.nats.agents_bucket.clone(),
            heartbeat_interval_secs: serve.agent_heartbeat_interval,
        },
        page_cache: cache::PageCache::new(serve.cache_ttl, redis.clone(), config.redis.keys()),
        bus_auth: std::sync::Arc::clone(&bus_auth),
        default_offline_threshold: serve.offline_threshold,
        feed: feed.clone(),
        announcer: natsbus::feed::ActionAnnouncer::start(feed, ANNOUNCE_LINGER),
        feed_hub: std::sync::Arc::clone(&feed_hub),
        actions: state::ActionLimits {
            confirm_over: usize::try_from(serve.action_confirm_over).unwrap_or(usize::MAX),
            max_targets: usize::try_from(serve.action_max_targets).unwrap_or(100_000),
        },
        runs: runs.clone(),
        audit: audit_writer::AuditWriter::start(pool.clone()),
        shutdown: shutdown.clone(),
    });

    let readiness = Readiness::new()
        .with_check("postgres", storage::ready_check(pool.clone()))
        .with_check("nats", natsbus::ready_check(client.clone()))
        .with_check("redis", storage::redis::ready_check(redis.clone()));
    let trust = client_ip::TrustProxy {
        networks: serve.trusted_proxies.as_ref().map(|n| n.0.clone()).unwrap_or_default(),
        one_hop: serve.trust_proxy,
    };
    let (admin_addr, admin) =
        service_kit::admin::spawn(config.admin.admin_addr(ADMIN_PORT), readiness.clone(), shutdown.clone())
            .await?;
    let (audit, announcer) = (state.audit.clone(), state.announcer.clone());
    let app = router(state, readiness, trust, serve.body_timeout);

    let listener = tokio::net::TcpListener::bind(serve.http_addr)
        .await
        .with_context(|| format!("binding {}", serve.http_addr))?;
    let addr = listener.local_addr()?;
    let send_buffer = usize::try_from(serve.http_send_buffer).unwrap_or(128 * 1024);
    let listener = axum::serve::ListenerExt::tap_io(listener, move |tcp: &mut tokio::net::TcpStream| {
        if let Err(err) = socket2::SockRef::from(&*tcp).set_send_buffer_size(send_buffer) {
            tracing::debug!(error = %err, "could not bound a connection's send buffer");
        }
    });
    tracing::info!(%addr, %admin_addr, "api-gateway ready");
    let mut service = Service::new("api-gateway");
    let stopping = shutdown.clone();
    service.worker(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(stopping.cancelled_owned())
            .await
            .context("serving http")
    });
    service.background(feed_hub.run(feed_end));
    service.background(bus_auth::resync_forever(
        bus_auth,
        pool.clone(),
        std::time::Duration::from_secs(60),
        shutdown.clone(),
    ));
    service.background(fleet_action::sweep_forever(pool.clone(), shutdown.clone()));
    // Running fleet actions stop sending at shutdown, record what they have and end
    // `unfinished` before the connections they need close.
    service.on_stop("fleet actions", async move {
        runs.close();
        runs.wait().await;
        // The outcomes of the last executes, and their announcements, are still queued.
        audit.settled().await;
        announcer.settled().await;
        Ok(())
    });
    service.on_stop_best_effort("flushing nats", async move { Ok(client.flush().await?) });
    service.on_stop("the admin server", async move { Ok(admin.await??) });
    let service = service.start(admin_addr, shutdown, config.admin.shutdown_grace);
    Ok(Running { addr, admin_addr, service })
}

fn router(
    state: state::AppState,
    readiness: Readiness,
    trust: client_ip::TrustProxy,
    body_timeout: std::time::Duration,
) -> Router {
    let (api, openapi) = routes::api();
    let api =
        api.layer(axum::middleware::from_fn_with_state(state.clone(), http::rate_limit)).with_state(state);
    Router::new()
        .merge(api)
        .merge(SwaggerUi::new("/api/v1/docs").url("/api/v1/openapi.json", openapi))
        .merge(service_kit::admin::probes(readiness))
        .merge(console::routes())
        .fallback(http::not_found)
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(axum::middleware::from_fn(http::metrics))
        .layer(TraceLayer::new_for_http().make_span_with(http::make_span))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(http::announced_body_limit))
        .layer(axum::Extension(trust))
        .layer(axum::Extension(extract::BodyDeadline(body_timeout)))
        .layer(CatchPanicLayer::custom(http::panic_response))
}

/// Creates the first admin from ADMIN_EMAIL / ADMIN_PASSWORD when there are no users.
async fn ensure_first_admin(pool: &storage::PgPool, config: &Config) -> anyhow::Result<()> {
    let (Some(email), Some(password)) = (&config.serve.admin_email, &config.serve.admin_password) else {
        return Ok(());
    };
    if storage::users::count(pool).await? > 0 {
        return Ok(());
    }
    let hasher = auth::Hasher::new(1, std::time::Duration::from_secs(60));
    match routes::auth::create_user(pool, &hasher, email, password.clone(), Role::Admin).await {
        Ok(user) => tracing::info!(user_id = %user.id, "first admin created from ADMIN_EMAIL"),
        // Another replica created it at the same moment.
        Err(error::ApiError::Conflict(_)) => {}
        Err(err) => anyhow::bail!("creating the first admin: {err}"),
    }
    Ok(())
}
