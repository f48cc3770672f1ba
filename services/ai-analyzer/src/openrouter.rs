//! The OpenRouter (or any OpenAI-compatible) chat-completions client.
//!
//! One analysis is one `POST {base}/chat/completions` with the key as a bearer token,
//! the configured model, `response_format: json_object` and the prompt. Every attempt
//! has a timeout; 429, 5xx, timeouts and connection errors are retried with exponential
//! backoff and jitter (a `Retry-After` header wins over the backoff), at most
//! `max_attempts` times and never past the overall deadline. Other 4xx (a bad key, a
//! bad model) fail at once. The W3C trace context goes along in `traceparent`.

use std::time::Duration;

use futures::future::BoxFuture;
use opentelemetry::propagation::Injector;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use storage::analysis::AnalysisInput;
use tokio::time::Instant;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::analyzer::{Analysis, AnalyzeError, Analyzer};
use crate::text::truncate_chars;

/// The analyzer name stored with OpenRouter answers.
pub const NAME: &str = "openrouter";

/// Largest response body read, in bytes.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// How the client talks to the provider.
#[derive(Clone)]
pub struct Settings {
    /// `https://openrouter.ai/api/v1` or any OpenAI-compatible base URL.
    pub base_url: Url,
    pub key: SecretString,
    pub model: String,
    /// Timeout of each attempt.
    pub timeout: Duration,
    /// Budget of the whole call, retries and waits included.
    pub deadline: Duration,
    pub max_attempts: u32,
    /// The first retry's delay; it doubles with every retry, up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
    pub max_tokens: u32,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("base_url", &self.base_url.as_str())
            .field("key", &"[REDACTED]")
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .field("deadline", &self.deadline)
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("backoff_max", &self.backoff_max)
            .field("max_tokens", &self.max_tokens)
            .finish()
    }
}

/// The chat-completions analyzer.
#[derive(Debug)]
pub struct OpenRouterAnalyzer {
    http: reqwest::Client,
    endpoint: Url,
    settings: Settings,
}

impl OpenRouterAnalyzer {
    pub fn new(settings: Settings) -> Result<Self, reqwest::Error> {
        let endpoint_text = format!("{}/chat/completions", settings.base_url.as_str().trim_end_matches('/'));
        // The base URL was validated; appending a path segment keeps it valid.
        let endpoint = Url::parse(&endpoint_text).unwrap_or_else(|_| settings.base_url.clone());
        let http = reqwest::Client::builder()
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("opspilot-ai-analyzer/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http, endpoint, settings })
    }

    async fn call(&self, input: &AnalysisInput) -> Result<Analysis, AnalyzeError> {
        let prompt = crate::prompt::build(input);
        let body = ChatRequest {
            model: &self.settings.model,
            messages: [
                ChatMessage { role: "system", content: &prompt.system },
                ChatMessage { role: "user", content: &prompt.user },
            ],
            response_format: ResponseFormat { kind: "json_object" },
            temperature: TEMPERATURE,
            max_tokens: self.settings.max_tokens,
        };
        let deadline = Instant::now() + self.settings.deadline;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let timeout = self.settings.timeout.min(remaining);
            let failure = match self.attempt(&body, timeout).await {
                Ok(response) => return self.finish(response),
                Err(Attempt::Fatal(err)) => return Err(err),
                Err(Attempt::Retryable(failure)) => failure,
            };
            metrics::counter!("opspilot_ai_retryable_failures_total", "reason" => failure.code())
                .increment(1);
            let wait = failure.retry_after.unwrap_or_else(|| backoff(&self.settings, attempt));
            let out_of_budget = Instant::now() + wait >= deadline;
            if attempt >= self.settings.max_attempts || out_of_budget {
                tracing::warn!(attempt, reason = failure.code(), "ai call failed; giving up");
                return Err(failure.into_error(attempt, self.settings.timeout));
            }
            tracing::info!(
                attempt,
                reason = failure.code(),
                wait_ms = wait.as_millis() as u64,
                "ai call failed; retrying"
            );
            metrics::counter!("opspilot_ai_retries_total", "reason" => failure.code()).increment(1);
            tokio::time::sleep(wait).await;
        }
    }

    /// One HTTP exchange.
    async fn attempt(&self, body: &ChatRequest<'_>, timeout: Duration) -> Result<ChatResponse, Attempt> {
        let mut headers = HeaderMap::new();
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", self.settings.key.expose_secret()))
            .map_err(|_| {
                Attempt::Fatal(AnalyzeError::Refused {
                    status: 0,
                    detail: "OPENROUTER_KEY is not a valid header value".into(),
                })
            })?;
        auth.set_sensitive(true);
        headers.insert(AUTHORIZATION, auth);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(HeaderName::from_static("x-title"), HeaderValue::from_static("OpsPilot"));
        inject_trace_context(&tracing::Span::current().context(), &mut headers);

        let sent =
            self.http.post(self.endpoint.clone()).headers(headers).json(body).timeout(timeout).send().await;
        let response = match sent {
            Ok(response) => response,
            Err(err) if err.is_timeout() => return Err(Attempt::Retryable(Failure::timeout())),
            Err(err) => return Err(Attempt::Retryable(Failure::transport(err))),
        };
        let status = response.status();
        let retry_after =
            response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
        let bytes = match read_capped(response, MAX_RESPONSE_BYTES).await {
            Ok(bytes) => bytes,
            Err(err) if err.is_timeout() => return Err(Attempt::Retryable(Failure::timeout())),
            Err(err) => return Err(Attempt::Retryable(Failure::transport(err))),
        };
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Err(Attempt::Retryable(Failure {
                status: Some(status.as_u16()),
                retry_after,
                detail: error_detail(&bytes),
            }));
        }
        if !status.is_success() {
            return Err(Attempt::Fatal(AnalyzeError::Refused {
                status: status.as_u16(),
                detail: error_detail(&bytes),
            }));
        }
        let parsed: ChatResponse = serde_json::from_slice(&bytes).map_err(|e| {
            Attempt::Fatal(AnalyzeError::Malformed(format!(
                "the provider's response is not a chat completion ({e})"
            )))
        })?;
        // OpenRouter reports some upstream failures inside a 200.
        if parsed.choices.is_empty()
            && let Some(error) = &parsed.error
        {
            let code =
                error.code.as_ref().and_then(serde_json::Value::as_u64).and_then(|c| u16::try_from(c).ok());
            let detail = one_line(error.message.as_deref().unwrap_or("no message"), 300);
            return Err(match code {
                Some(code) if code == 429 || code >= 500 => {
                    Attempt::Retryable(Failure { status: Some(code), retry_after, detail })
                }
                Some(code) => Attempt::Fatal(AnalyzeError::Refused { status: code, detail }),
                None => Attempt::Retryable(Failure { status: Some(502), retry_after, detail }),
            });
        }
        Ok(parsed)
    }

    fn finish(&self, response: ChatResponse) -> Result<Analysis, AnalyzeError> {
        record_response(&response);
        if let Some(usage) = &response.usage {
            for (kind, tokens) in [("prompt", usage.prompt_tokens), ("completion", usage.completion_tokens)] {
                if let Some(tokens) = tokens {
                    metrics::counter!("opspilot_ai_tokens_total", "analyzer" => NAME, "kind" => kind)
                        .increment(tokens);
                }
            }
        }
        let choice = response
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| AnalyzeError::Malformed("the response has no choices".into()))?;
        let content = choice
            .message
            .and_then(|m| m.content)
            .ok_or_else(|| AnalyzeError::Malformed("the response has no message content".into()))?;
        let cut = choice.finish_reason.as_deref() == Some("length");
        let answer = crate::answer::parse(&content).map_err(|reason| {
            AnalyzeError::Malformed(if cut {
                format!("{reason} (the answer was cut at AI_MAX_TOKENS={})", self.settings.max_tokens)
            } else {
                reason
            })
        })?;
        let model = response
            .model
            .filter(|m| !m.is_empty() && m.len() <= 128 && !m.chars().any(char::is_control))
            .unwrap_or_else(|| self.settings.model.clone());
        Ok(Analysis {
            text: answer.text,
            is_critical: answer.is_critical,
            action: answer.action,
            dropped: answer.dropped,
            model: Some(model),
        })
    }
}

impl Analyzer for OpenRouterAnalyzer {
    fn name(&self) -> &'static str {
        NAME
    }

    fn model(&self) -> Option<&str> {
        Some(&self.settings.model)
    }

    fn is_paid(&self) -> bool {
        true
    }

    fn analyze<'a>(&'a self, input: &'a AnalysisInput) -> BoxFuture<'a, Result<Analysis, AnalyzeError>> {
        // The OpenTelemetry generative-AI conventions: `{operation} {model}`, the provider,
        // the request's parameters, then what the response says (model, tokens, why it
        // stopped). Never the prompt or the answer: they quote hosts' logs.
        let span = tracing::info_span!(
            "gen_ai.chat",
            otel.name = format!("chat {}", self.settings.model),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            "error.type" = tracing::field::Empty,
            gen_ai.operation.name = "chat",
            gen_ai.provider.name = "openrouter",
            gen_ai.request.model = self.settings.model.as_str(),
            gen_ai.request.max_tokens = self.settings.max_tokens,
            gen_ai.request.temperature = f64::from(TEMPERATURE),
            gen_ai.response.model = tracing::field::Empty,
            gen_ai.response.finish_reasons = tracing::field::Empty,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
            incident_id = input.incident.id,
        );
        Box::pin(
            async move {
                let result = self.call(input).await;
                if let Err(err) = &result {
                    let span = tracing::Span::current();
                    span.record("otel.status_code", "ERROR");
                    span.record("error.type", err.code());
                }
                result
            }
            .instrument(span),
        )
    }
}

/// Low: the answer must be a JSON document in a fixed shape, not creative writing.
const TEMPERATURE: f32 = 0.2;

/// Writes what the provider answered onto the `gen_ai` span.
fn record_response(response: &ChatResponse) {
    let span = tracing::Span::current();
    if let Some(model) =
        response.model.as_deref().filter(|m| m.len() <= 128 && !m.chars().any(char::is_control))
    {
        span.record("gen_ai.response.model", model);
    }
    let reasons: Vec<&str> = response.choices.iter().filter_map(|c| c.finish_reason.as_deref()).collect();
    if !reasons.is_empty() {
        span.record("gen_ai.response.finish_reasons", reasons.join(",").as_str());
    }
    if let Some(usage) = &response.usage {
        if let Some(tokens) = usage.prompt_tokens {
            span.record("gen_ai.usage.input_tokens", tokens);
        }
        if let Some(tokens) = usage.completion_tokens {
            span.record("gen_ai.usage.output_tokens", tokens);
        }
    }
}

/// How one attempt ended when it did not produce a response.
enum Attempt {
    Retryable(Failure),
    Fatal(AnalyzeError),
}

/// A failure worth another attempt.
struct Failure {
    /// HTTP status; `None` for a timeout or a transport error.
    status: Option<u16>,
    retry_after: Option<Duration>,
    detail: String,
}

impl Failure {
    fn timeout() -> Self {
        Self { status: None, retry_after: None, detail: "timeout".into() }
    }

    fn transport(err: reqwest::Error) -> Self {
        // Without the URL (it is ours): the error and its causes are enough.
        let err = err.without_url();
        let mut detail = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            detail.push_str(": ");
            detail.push_str(&cause.to_string());
            source = cause.source();
        }
        Self { status: None, retry_after: None, detail: one_line(&detail, 300) }
    }

    fn code(&self) -> &'static str {
        match self.status {
            Some(429) => "rate_limited",
            Some(_) => "server_error",
            None if self.detail == "timeout" => "timeout",
            None => "transport",
        }
    }

    fn into_error(self, attempts: u32, timeout: Duration) -> AnalyzeError {
        match self.status {
            Some(429) => AnalyzeError::RateLimited { attempts, retry_after: self.retry_after },
            Some(status) => AnalyzeError::Upstream { status, attempts, detail: self.detail },
            None if self.detail == "timeout" => AnalyzeError::Timeout { attempts, timeout },
            None => AnalyzeError::Transport { attempts, detail: self.detail },
        }
    }
}

/// `min(backoff * 2^(attempt-1), backoff_max)`, with up to half of it random so that
/// replicas do not retry in lockstep.
fn backoff(settings: &Settings, attempt: u32) -> Duration {
    service_kit::backoff::Backoff::new(settings.backoff, settings.backoff_max)
        .delay(attempt.saturating_sub(1))
}

/// `Retry-After`: delay-seconds (integer or decimal) or an HTTP date.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = date.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

async fn read_capped(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = max.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= max {
            break;
        }
    }
    Ok(body)
}

/// A short, single-line description of an error body: its `error.message` when it is
/// OpenAI-shaped JSON, else the start of the text.
fn error_detail(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Envelope {
        error: Option<ApiError>,
    }
    let message = serde_json::from_slice::<Envelope>(body)
        .ok()
        .and_then(|e| e.error)
        .and_then(|e| e.message)
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let message = one_line(message.trim(), 300);
    if message.is_empty() { "no details".into() } else { message }
}

fn one_line(s: &str, max_chars: usize) -> String {
    let line: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    truncate_chars(&line, max_chars)
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(key.as_bytes()), HeaderValue::from_str(&value))
        {
            self.0.insert(name, value);
        }
    }
}

/// Writes `context` (`traceparent`, `tracestate`) into HTTP headers with the global
/// propagator, so the provider call appears in the caller's trace.
pub(crate) fn inject_trace_context(context: &opentelemetry::Context, headers: &mut HeaderMap) {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(context, &mut HeaderInjector(headers));
    });
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: [ChatMessage<'a>; 2],
    response_format: ResponseFormat,
    temperature: f32,
    max_tokens: u32,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct ResponseFormat {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Deserialize)]
struct ChatResponse {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    message: Option<ChoiceMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<String>,
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

    use super::*;

    fn settings() -> Settings {
        Settings {
            base_url: Url::parse("http://127.0.0.1:1/api/v1/").unwrap(),
            key: SecretString::from("sk-or-secret".to_owned()),
            model: "m".into(),
            timeout: Duration::from_secs(1),
            deadline: Duration::from_secs(5),
            max_attempts: 3,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_millis(300),
            max_tokens: 100,
        }
    }

    #[test]
    fn retry_after_as_seconds_or_a_date() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        let wait = parse_retry_after(&later).unwrap();
        assert!(wait > Duration::from_secs(28) && wait <= Duration::from_secs(30), "{wait:?}");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let s = settings();
        for _ in 0..50 {
            let first = backoff(&s, 1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100), "{first:?}");
            let second = backoff(&s, 2);
            assert!(
                second >= Duration::from_millis(100) && second <= Duration::from_millis(200),
                "{second:?}"
            );
            let capped = backoff(&s, 30);
            assert!(
                capped >= Duration::from_millis(150) && capped <= Duration::from_millis(300),
                "{capped:?}"
            );
        }
    }

    #[test]
    fn the_endpoint_appends_chat_completions() {
        service_kit::install_crypto_provider();
        let a = OpenRouterAnalyzer::new(settings()).unwrap();
        assert_eq!(a.endpoint.as_str(), "http://127.0.0.1:1/api/v1/chat/completions");
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        service_kit::install_crypto_provider();
        let a = OpenRouterAnalyzer::new(settings()).unwrap();
        assert!(!format!("{a:?}").contains("sk-or-secret"));
    }

    /// The model call's span by the generative-AI conventions: the provider, the model
    /// asked for and the one that answered, token usage, why it stopped; an error type
    /// when the provider fails. Never the prompt or the answer.
    #[tokio::test]
    async fn the_model_call_is_a_gen_ai_span() {
        use opentelemetry::trace::TracerProvider as _;
        use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
        use tracing_subscriber::layer::SubscriberExt;
        use wiremock::matchers::method;
        use wiremock::{Mock, MockServer, ResponseTemplate};

        service_kit::install_crypto_provider();
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let _default = tracing::subscriber::set_default(subscriber);

        let answer = serde_json::json!({
            "analysis": "nginx was killed; restart it.",
            "critical": true,
            "suggested_action": {"command": "restart_service", "params": {"service": "nginx"}},
        });
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "model": "vendor/model-2025",
                "choices": [{"message": {"role": "assistant", "content": answer.to_string()}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 812, "completion_tokens": 97},
            })))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(400)
                    .set_body_json(serde_json::json!({"error": {"message": "bad model"}})),
            )
            .mount(&server)
            .await;
        let analyzer = OpenRouterAnalyzer::new(Settings {
            base_url: Url::parse(&format!("{}/api/v1/", server.uri())).unwrap(),
            model: "vendor/model".into(),
            ..settings()
        })
        .unwrap();
        let input = crate::rules::tests::input(
            "service_down",
            "critical",
            "nginx",
            "nginx: secret-in-log",
            &["nginx"],
        );
        analyzer.analyze(&input).await.expect("the first call succeeds");
        analyzer.analyze(&input).await.expect_err("the second is refused");
        provider.force_flush().unwrap();

        let spans = exporter.get_finished_spans().unwrap();
        let calls: Vec<_> = spans.iter().filter(|s| s.name == "chat vendor/model").collect();
        assert_eq!(calls.len(), 2, "{spans:#?}");
        let attribute = |span: &opentelemetry_sdk::trace::SpanData, key: &str| {
            span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
        };
        let ok = calls[0];
        assert_eq!(ok.span_kind, opentelemetry::trace::SpanKind::Client);
        assert_eq!(attribute(ok, "gen_ai.operation.name").as_deref(), Some("chat"));
        assert_eq!(attribute(ok, "gen_ai.provider.name").as_deref(), Some("openrouter"));
        assert_eq!(attribute(ok, "gen_ai.request.model").as_deref(), Some("vendor/model"));
        assert_eq!(attribute(ok, "gen_ai.response.model").as_deref(), Some("vendor/model-2025"));
        assert_eq!(attribute(ok, "gen_ai.usage.input_tokens").as_deref(), Some("812"));
        assert_eq!(attribute(ok, "gen_ai.usage.output_tokens").as_deref(), Some("97"));
        assert_eq!(attribute(ok, "gen_ai.response.finish_reasons").as_deref(), Some("stop"));
        assert_eq!(ok.status, opentelemetry::trace::Status::Unset);
        let refused = calls[1];
        assert_eq!(attribute(refused, "error.type").as_deref(), Some("refused"));
        assert!(matches!(refused.status, opentelemetry::trace::Status::Error { .. }));
        for span in calls {
            assert!(
                span.attributes.iter().all(|kv| !kv.value.to_string().contains("secret-in-log")),
                "the prompt must not be recorded: {span:#?}"
            );
        }
    }

    #[test]
    fn trace_context_goes_into_http_headers() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let span_id = SpanId::from_hex("00f067aa0ba902b7").unwrap();
        let context = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ));
        let mut headers = HeaderMap::new();
        inject_trace_context(&context, &mut headers);
        assert_eq!(headers["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    }

    #[test]
    fn error_details_are_short_single_lines() {
        assert_eq!(
            error_detail(br#"{"error": {"message": "Rate limit\nexceeded", "code": 429}}"#),
            "Rate limit exceeded"
        );
        assert_eq!(error_detail(b""), "no details");
        assert_eq!(error_detail(&[b'x'; 5000]).len(), 300);
    }
}
