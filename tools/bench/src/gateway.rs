//! An api-gateway for the benchmarks, with an admin logged in.

use natsbus::auth::Identity;
use serde_json::json;
use test_support::Stack;

use crate::services::{self, Service};

pub(crate) const SECRET: &str = "bench-secret-0123456789abcdef0123456789abcdef";
const PASSWORD: &str = "bench-admin-password";

pub(crate) struct Gateway {
    pub(crate) service: Service,
    pub(crate) base: String,
    pub(crate) token: String,
    pub(crate) port: u16,
}

pub(crate) async fn start(stack: &Stack) -> anyhow::Result<Gateway> {
    let port = test_support::free_port();
    let mut env = vec![
        ("JWT_SECRET", SECRET.into()),
        ("HTTP_ADDR", format!("127.0.0.1:{port}")),
        ("ADMIN_EMAIL", "bench@example.com".into()),
        ("ADMIN_PASSWORD", PASSWORD.into()),
        // A load generator is one address and one user; the limits are not what
        // is measured here.
        ("RATE_LIMIT_PER_IP", "0".into()),
        ("RATE_LIMIT_PER_USER", "0".into()),
        // Sized like a production pool: about twice the database server's cores, which
        // here are the machine's own. More connections only add context switches.
        ("DB_MAX_CONNECTIONS", pool_size()),
    ];
    // For profiling: the page cache's TTL (0 turns it off).
    if let Ok(ttl) = std::env::var("BENCH_GATEWAY_CACHE_TTL") {
        env.push(("API_CACHE_TTL", ttl));
    }
    let service = services::start(stack, &Identity::ApiGateway, "api-gateway", &env).await?;
    let base = format!("http://127.0.0.1:{port}");
    let login: serde_json::Value = reqwest::Client::new()
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"email": "bench@example.com", "password": PASSWORD}))
        .send()
        .await?
        .json()
        .await?;
    let token =
        login["access_token"].as_str().ok_or_else(|| anyhow::anyhow!("login failed: {login}"))?.to_owned();
    Ok(Gateway { service, base, token, port })
}

/// `BENCH_GATEWAY_DB_CONNECTIONS`, or twice the machine's cores (at least 4).
pub(crate) fn pool_size() -> String {
    std::env::var("BENCH_GATEWAY_DB_CONNECTIONS").unwrap_or_else(|_| {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        (cores * 2).max(4).to_string()
    })
}

/// The page cache's TTL the gateway runs with: `BENCH_GATEWAY_CACHE_TTL` (`{n}ms` or
/// `{n}s`) or the gateway's default of 2 s.
pub(crate) fn cache_ttl() -> std::time::Duration {
    let parse = |v: &str| {
        if let Some(ms) = v.strip_suffix("ms") {
            ms.parse().ok().map(std::time::Duration::from_millis)
        } else {
            v.strip_suffix('s').unwrap_or(v).parse().ok().map(std::time::Duration::from_secs)
        }
    };
    std::env::var("BENCH_GATEWAY_CACHE_TTL")
        .ok()
        .and_then(|v| parse(v.trim()))
        .unwrap_or(std::time::Duration::from_secs(2))
}
