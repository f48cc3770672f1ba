//! A stand-in for OpenRouter: an OpenAI-compatible `/chat/completions` that answers at
//! once with a valid analysis. The analyzer runs with a (fake) key, as in production,
//! so the secrets check proves the key stays out of the logs; the server counts the
//! calls that carried exactly that key.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};

/// The fake OpenAI-compatible endpoint.
pub struct MockAi {
    /// `OPENROUTER_BASE_URL` for the analyzer.
    pub base_url: String,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Counters {
    expected_auth: String,
    with_key: AtomicU64,
    without_key: AtomicU64,
}

impl MockAi {
    pub async fn start(key: &str) -> anyhow::Result<Self> {
        let counters = Arc::new(Counters { expected_auth: format!("Bearer {key}"), ..Counters::default() });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the mock AI")?;
        let base_url = format!("http://{}/v1", listener.local_addr()?);
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(complete))
            .with_state(Arc::clone(&counters));
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::warn!(error = %err, "mock AI server stopped");
            }
        });
        Ok(Self { base_url, counters, task })
    }

    /// Calls that carried the configured key.
    pub fn calls_with_key(&self) -> u64 {
        self.counters.with_key.load(Ordering::Relaxed)
    }

    /// Calls without it (there should be none).
    pub fn calls_without_key(&self) -> u64 {
        self.counters.without_key.load(Ordering::Relaxed)
    }
}

impl Drop for MockAi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn complete(
    State(counters): State<Arc<Counters>>,
    headers: HeaderMap,
) -> (StatusCode, axum::Json<Value>) {
    let authorised = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == counters.expected_auth);
    if !authorised {
        counters.without_key.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": {"message": "no auth", "code": 401}})));
    }
    counters.with_key.fetch_add(1, Ordering::Relaxed);
    let answer = json!({
        "analysis": "The service was killed by the kernel; restarting it restores it.",
        "critical": true,
        "suggested_action": {"command": "restart_service", "params": {"service": "nginx"}}
    });
    (
        StatusCode::OK,
        axum::Json(json!({
            "id": "chaos-mock",
            "object": "chat.completion",
            "model": "chaos/mock",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": answer.to_string()}}],
        })),
    )
}
