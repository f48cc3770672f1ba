//! The admin HTTP surface every service exposes: `/healthz` (the process is alive),
//! `/readyz` (its dependencies answer) and `/metrics` (Prometheus text format).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};

/// What a readiness check returns: `Err` carries the reason, which is logged, not served.
pub type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type CheckFn = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// The readiness check of a pool: every call runs `ping` on a clone of `pool`.
pub fn ping_check<T, F, Fut, E>(pool: T, ping: F) -> impl Fn() -> CheckFuture + Send + Sync + 'static
where
    T: Clone + Send + Sync + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    move || {
        let ping = ping(pool.clone());
        Box::pin(async move { ping.await.map_err(|e| e.to_string()) })
    }
}

/// Named dependency checks run by `/readyz`, each bounded by a timeout.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, CheckFn)>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a check; `check` is called on every `/readyz`.
    pub fn with_check<F, Fut>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks.push((name, Arc::new(move || Box::pin(check()))));
        self
    }

    /// Runs every check concurrently; returns whether all passed and a JSON report. The
    /// report names failed checks but not why: error text can carry hosts, users or
    /// paths, and `/readyz` may be reachable by anyone. The reason is logged.
    pub async fn run(&self) -> (bool, Value) {
        const TIMEOUT: Duration = Duration::from_secs(2);
        let results = futures::future::join_all(self.checks.iter().map(|(name, check)| {
            let fut = check();
            async move {
                let outcome = match tokio::time::timeout(TIMEOUT, fut).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(format!("no answer within {TIMEOUT:?}")),
                };
                (*name, outcome)
            }
        }))
        .await;
        let mut report = Map::new();
        let mut ready = true;
        for (name, outcome) in results {
            let value = match outcome {
                Ok(()) => json!("ok"),
                Err(e) => {
                    ready = false;
                    tracing::warn!(check = name, error = %e, "readiness check failed");
                    json!("unavailable")
                }
            };
            report.insert(name.to_owned(), value);
        }
        (ready, json!({ "status": if ready { "ready" } else { "not_ready" }, "checks": report }))
    }
}

/// Router with `/healthz`, `/readyz` and `/metrics`, to serve on an admin port.
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(readiness))
}

/// `/healthz` and `/readyz` only, to merge into a public API: metrics stay on the
/// admin port.
pub fn probes(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Arc::new(readiness))
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

async fn readyz(State(readiness): State<Arc<Readiness>>) -> Response {
    let (ready, report) = readiness.run().await;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(report)).into_response()
}

async fn metrics() -> Response {
    // Rendering reads /proc for the process metrics and formats every series.
    match tokio::task::spawn_blocking(crate::metrics::render).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "rendering metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Serves the admin router on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    readiness: Readiness,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(readiness)).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

/// Binds `addr` and serves the admin router in the background until `shutdown`.
/// Returns the bound address (port 0 picks a free one) and the server task.
pub async fn spawn(
    addr: std::net::SocketAddr,
    readiness: Readiness,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    use anyhow::Context as _;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the admin address {addr}"))?;
    let bound = listener.local_addr()?;
    Ok((bound, tokio::spawn(serve(listener, readiness, shutdown))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_check_is_named_without_its_error_text() {
        let readiness = Readiness::new()
            .with_check("postgres", || async {
                Err("password authentication failed for user \"opspilot\" at 10.1.2.3:5432".to_owned())
            })
            .with_check("nats", || async { Ok(()) });
        let (ready, report) = readiness.run().await;
        assert!(!ready);
        assert_eq!(report["status"], "not_ready");
        assert_eq!(report["checks"]["postgres"], "unavailable");
        assert_eq!(report["checks"]["nats"], "ok");
        let text = report.to_string();
        assert!(!text.contains("10.1.2.3") && !text.contains("opspilot"), "{text}");
    }
}
