use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event, ServerAddr};
use secrecy::ExposeSecret;

use crate::{NatsConfig, NatsError};

/// Oldest nats-server this backend works with: 2.9 lacks account-info fields that the
/// KV API needs and ignores multi-filter consumers.
pub const MIN_SERVER_VERSION: (u64, u64) = (2, 10);

/// Connects with every configured URL, waiting (with backoff) until a server answers.
/// Once connected the client reconnects forever on its own; disconnects and
/// reconnects are logged.
pub async fn connect(config: &NatsConfig, name: &str) -> Result<Client, NatsError> {
    let mut options = ConnectOptions::new();
    if let Some(creds) = &config.creds {
        // Read now to fail fast on a bad file; read again on every reconnect.
        let text = tokio::fs::read_to_string(creds)
            .await
            .map_err(|e| NatsError::Config(format!("NATS_CREDS: {}: {e}", creds.display())))?;
        crate::auth::parse_creds(&text)
            .map_err(|_| NatsError::Config(format!("NATS_CREDS: {} is not a creds file", creds.display())))?;
        options = creds_file_options(creds);
    }
    if let Some(token) = &config.token {
        options = options.token(token.expose_secret().to_owned());
    }
    connect_as(config, options, name).await
}

/// Connects with `options` (another identity's credentials: the gateway's system user)
/// to the servers `config` names, with its TLS settings and request timeout.
pub async fn connect_as(
    config: &NatsConfig,
    options: ConnectOptions,
    name: &str,
) -> Result<Client, NatsError> {
    connect_with(config.with_tls(options), &config.server_urls(), name, config.request_timeout).await
}

/// Options that authenticate with the creds file at `path`, read again at every
/// (re)connect: rotated credentials (`nats-init --rotate`, or a Kubernetes Secret
/// updated in place) are picked up when the server drops the old ones, without a
/// restart.
pub fn creds_file_options(path: &std::path::Path) -> ConnectOptions {
    let path = path.to_owned();
    ConnectOptions::with_auth_callback(move |nonce| {
        let path = path.clone();
        async move {
            let text = tokio::fs::read_to_string(&path).await.map_err(async_nats::AuthError::new)?;
            let (jwt, seed) = crate::auth::parse_creds(&text).map_err(async_nats::AuthError::new)?;
            let key = nkeys::KeyPair::from_seed(&seed).map_err(async_nats::AuthError::new)?;
            let signature = key.sign(&nonce).map_err(async_nats::AuthError::new)?;
            let mut auth = async_nats::Auth::new();
            auth.jwt = Some(jwt);
            auth.signature = Some(signature);
            Ok(auth)
        }
    })
}

/// [`connect`], abandoned when `shutdown` is cancelled first: a service asked to stop
/// while NATS is still unreachable stops instead of waiting for it.
pub async fn connect_until(
    config: &NatsConfig,
    name: &str,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<Client, NatsError> {
    tokio::select! {
        client = connect(config, name) => client,
        _ = shutdown.cancelled() => Err(NatsError::Connect("shutdown requested before nats answered".into())),
    }
}

/// Like [`connect`] with explicit options (credentials and TLS built in code, tests).
/// Waits, with backoff, until one of the servers accepts; each failure is logged with
/// its cause (a refused connection, an unknown certificate authority, an authorization
/// violation), since a service that never becomes ready must say why.
pub async fn connect_with(
    options: ConnectOptions,
    urls: &[String],
    name: &str,
    request_timeout: Duration,
) -> Result<Client, NatsError> {
    let addrs: Vec<ServerAddr> = urls
        .iter()
        .map(|u| u.parse::<ServerAddr>().map_err(|e| NatsError::Config(format!("NATS_URLS: {u}: {e}"))))
        .collect::<Result<_, _>>()?;
    let service = name.to_owned();
    // The first Connected event is the initial connection, logged below with the server
    // version; later ones are reconnects.
    let connected_before = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let options = options
        .name(name)
        // Each identity has an inbox namespace of its own (see auth::perms).
        .custom_inbox_prefix(crate::auth::inbox_prefix(name))
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(request_timeout))
        .ping_interval(Duration::from_secs(10))
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            let service = service.clone();
            let reconnect = matches!(event, Event::Connected)
                && connected_before.swap(true, std::sync::atomic::Ordering::Relaxed);
            async move { log_event(&service, event, reconnect) }
        });
    // The first connection is retried here rather than with `retry_on_initial_connect`:
    // the client's own retries report only an error kind ("IO error"), while a failed
    // attempt returns the cause, such as the certificate the server presented not being
    // trusted.
    let mut attempt = 0;
    let client = loop {
        match options.clone().connect(addrs.clone()).await {
            Ok(client) => break client,
            Err(err) => {
                tracing::warn!(service = name, error = %err, "cannot connect to nats yet; retrying");
                attempt += 1;
                tokio::time::sleep(reconnect_delay(attempt)).await;
            }
        }
    };
    wait_until_connected(&client).await;
    let info = client.server_info();
    check_server_version(&info.version)?;
    tracing::info!(
        server_version = %info.version,
        server_name = %info.server_name,
        jetstream = info.jetstream,
        "connected to nats"
    );
    Ok(client)
}

/// With `retry_on_initial_connect` the client returns at once and connects in the
/// background; wait for it so callers can rely on server info and JetStream. The state
/// turns `Connected` a moment before the server's INFO is published to the client, so
/// both are awaited: reading the version in between found an empty one and refused the
/// server as too old.
async fn wait_until_connected(client: &Client) {
    let mut logged = false;
    loop {
        if client.connection_state() == async_nats::connection::State::Connected
            && !client.server_info().version.is_empty()
        {
            return;
        }
        if !logged {
            tracing::info!("waiting for nats");
            logged = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_event(service: &str, event: Event, reconnect: bool) {
    match event {
        Event::Connected if reconnect => tracing::info!(service, "reconnected to nats"),
        Event::Connected => {}
        Event::Disconnected => tracing::warn!(service, "disconnected from nats; reconnecting"),
        Event::LameDuckMode => tracing::warn!(service, "nats server entered lame duck mode"),
        Event::SlowConsumer(sid) => tracing::warn!(service, sid, "nats slow consumer"),
        Event::ServerError(err) => tracing::warn!(service, error = %err, "nats server error"),
        Event::ClientError(err) => tracing::warn!(service, error = %err, "nats client error"),
        Event::Draining | Event::Closed => tracing::debug!(service, %event, "nats connection"),
    }
}

/// Refuses servers older than [`MIN_SERVER_VERSION`].
pub fn check_server_version(version: &str) -> Result<(), NatsError> {
    let mut parts = version.trim_start_matches('v').split(['.', '-']);
    let major = parts.next().and_then(|p| p.parse::<u64>().ok());
    let minor = parts.next().and_then(|p| p.parse::<u64>().ok());
    match (major, minor) {
        (Some(major), Some(minor)) if (major, minor) >= MIN_SERVER_VERSION => Ok(()),
        _ => Err(NatsError::ServerTooOld { found: version.to_owned(), required: "2.10" }),
    }
}

/// Reconnect delay: 100 ms doubling to 5 s, plus up to 250 ms of jitter so a fleet of
/// services does not reconnect in lockstep after a server restart.
fn reconnect_delay(attempt: usize) -> Duration {
    let exp = u32::try_from(attempt.min(6)).unwrap_or(6);
    let base = Duration::from_millis(100 * 2u64.pow(exp)).min(Duration::from_secs(5));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    base + Duration::from_millis(u64::from(nanos % 250))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(check_server_version("2.15.1").is_ok());
        assert!(check_server_version("2.10.0").is_ok());
        assert!(check_server_version("v2.11.0-beta").is_ok());
        assert!(check_server_version("3.0.0").is_ok());
        assert!(matches!(check_server_version("2.9.10"), Err(NatsError::ServerTooOld { .. })));
        assert!(check_server_version("garbage").is_err());
    }
}
