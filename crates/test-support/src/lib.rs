//! The test harness: every integration test gets its own nats-server (a free port and
//! a temporary JetStream directory), its own Postgres database (migrated) and its own
//! Redis key prefix, so tests run in parallel and twice in a row without seeing each
//! other or anything left over.
//!
//! Where the servers are comes from the environment that `make test` prepares:
//! `OPSPILOT_NATS_SERVER` (a nats-server >= 2.10 binary), `OPSPILOT_TEST_DATABASE_URL`
//! (an admin connection that may create databases) and `OPSPILOT_TEST_REDIS_URL`.

#![cfg_attr(not(test), warn(unused_crate_dependencies))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod browser;
mod db;
pub mod hostile;
pub mod lifecycle;
pub mod metrics;
mod nats;
pub mod otlp;
mod partition;
mod ports;
pub mod process;
mod proxy;
mod redis;
mod stack;
mod tls;

pub use db::TestDb;
pub use nats::{NatsServer, cluster_node_config, jetstream_config, nats_server_binary};
pub use ports::free_port;
pub use proxy::TcpProxy;
pub use redis::RedisServer;
pub use stack::Stack;
pub use tls::TestPki;

use std::sync::Once;
use std::time::{Duration, Instant};

/// A short random token for names (`t3f9a1c2e`), unique per call.
pub fn unique_token() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("t{}", &id[..12])
}

/// A Redis key prefix of this test's own.
pub fn redis_prefix() -> String {
    format!("test:{}:", unique_token())
}

/// Redis URL for tests.
pub fn redis_url() -> String {
    std::env::var("OPSPILOT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A configuration parsed from `args` as its binary parses it: the flags, then the
/// secrets from the process environment and the `--…-file` flags ([`Stack::args_for`]
/// writes those files).
pub fn parse_config<C>(args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>) -> C
where
    C: clap::Parser + service_kit::config::LoadSecrets,
{
    service_kit::config::try_parse_from::<C, _, _>(args).unwrap_or_else(|e| panic!("configuration: {e}"))
}

/// Redis settings for `url` and `prefix`, as a service parses them (the URL a secret
/// from the environment, never a flag).
pub fn redis_config(url: &str, prefix: &str) -> storage::redis::RedisConfig {
    #[derive(clap::Parser)]
    struct Args {
        #[command(flatten)]
        redis: storage::redis::RedisConfig,
    }
    impl service_kit::config::LoadSecrets for Args {
        fn load_secrets(&mut self, env: &service_kit::config::SecretEnv<'_>) -> Result<(), String> {
            self.redis.load_secrets(env)
        }
    }
    let vars = [("REDIS_URL", url)];
    let args: Args = service_kit::config::try_parse_with_secrets(
        ["test", "--redis-prefix", prefix],
        service_kit::config::SecretEnv::fixed(&vars),
    )
    .expect("redis settings");
    args.redis
}

/// Removes every key under `prefix` from the test Redis (best effort, blocking: for
/// `Drop`). Keys left behind with long TTLs slow Redis's background expiry for every
/// later test that waits for a key to expire.
pub fn forget_redis_prefix(prefix: &str) {
    let Ok(mut conn) = ::redis::Client::open(redis_url()).and_then(|c| c.get_connection()) else {
        return;
    };
    let pattern = format!("{prefix}*");
    let mut cursor = 0u64;
    loop {
        let Ok((next, keys)): Result<(u64, Vec<String>), _> = ::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(10_000)
            .query(&mut conn)
        else {
            return;
        };
        if !keys.is_empty() {
            let _: Result<(), _> = ::redis::cmd("UNLINK").arg(keys).query(&mut conn);
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

/// A topology (subject root, stream and bucket names) of this test's own.
pub fn isolated_topology() -> natsbus::Topology {
    let token = unique_token();
    let upper = token.to_uppercase();
    natsbus::Topology {
        subjects: wire_models::Subjects::new(
            wire_models::SubjectRoot::parse(&format!("{token}.ops")).unwrap(),
        ),
        events_stream: format!("{upper}_EVENTS"),
        inventory_stream: format!("{upper}_INVENTORY"),
        dlq_stream: format!("{upper}_DEADLETTER"),
        incidents_stream: format!("{upper}_INCIDENTS"),
        agents_bucket: format!("{upper}_AGENTS"),
        max_bytes: natsbus::StreamBytes::SMALL,
        ..natsbus::Topology::default()
    }
}

/// Logs from the code under test, shown for failing tests (`RUST_LOG` filters them),
/// and the TLS crypto provider HTTP clients need.
pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    });
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Returns once the server has processed everything `client` sent before, its
/// subscriptions included. `flush` only empties the client's buffer, so a request from
/// another connection could still race a subscription just made and find no responder.
pub async fn nats_round_trip(client: &async_nats::Client) {
    use futures::StreamExt;
    let subject = format!("_OPSPILOT_TEST.round_trip.{}", unique_token());
    let mut sub = client.subscribe(subject.clone()).await.expect("subscribing for the round trip");
    client.publish(subject, "".into()).await.expect("publishing the round trip");
    client.flush().await.expect("flushing the round trip");
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("the server did not echo the round trip within 10 s")
        .expect("the round-trip subscription ended");
}

/// The workspace root (where `.stack/` lives).
pub fn workspace_root() -> std::path::PathBuf {
    let manifest = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.ancestors().nth(2).map(std::path::Path::to_path_buf).unwrap_or(manifest)
}
