//! Cross-cutting HTTP behaviour: trace context from `traceparent`, per-route metrics,
//! the per-address rate limit, oversized bodies refused on their announced length,
//! panics and unknown routes as problem documents.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use opentelemetry::propagation::Extractor;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::error::ApiError;
use crate::state::AppState;

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The span of one request, a child of the caller's trace when it sent `traceparent`,
/// with the attribute names of the OpenTelemetry HTTP server conventions.
pub(crate) fn make_span(request: &Request) -> tracing::Span {
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let method = known_method(request.method());
    // The conventions name a span by its route, never by its path (unbounded).
    let name = match &route {
        Some(route) => format!("{method} {route}"),
        None => method.to_owned(),
    };
    let user_agent = request.headers().get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let span = tracing::info_span!(
        "http.request",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        http.route = route.as_deref().unwrap_or(""),
        http.response.status_code = tracing::field::Empty,
        url.path = request.uri().path(),
        url.scheme = "http",
        network.protocol.version = protocol_version(request.version()),
        user_agent.original = user_agent,
        "error.type" = tracing::field::Empty,
    );
    let parent =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(request.headers())));
    let _ = span.set_parent(parent);
    span
}

/// The method as the conventions want it: one of the known ones, else `_OTHER` (a
/// client choosing arbitrary methods must not choose span names).
fn known_method(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

fn protocol_version(version: axum::http::Version) -> &'static str {
    use axum::http::Version;
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// Counts and times every request by route and status, and records the status on the
/// request's span: a 5xx is an error of the server span, a 4xx is not (the conventions:
/// the client's mistake is not the server's failure).
pub(crate) async fn metrics(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let code = response.status().as_u16();
    let status = code.to_string();
    let span = tracing::Span::current();
    span.record("http.response.status_code", code);
    if response.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", status.as_str());
    }
    metrics::histogram!("opspilot_http_request_seconds", "route" => route.clone(), "method" => method.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("opspilot_http_requests_total", "route" => route, "method" => method, "status" => status)
        .increment(1);
    response
}

/// The per-address rate limit on every API request.
pub(crate) async fn rate_limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let ip = crate::client_ip::client_ip(&parts);
    if let Err(err) = state.limiter.per_ip(ip).await {
        return err.into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}

/// A body announced (`Content-Length`) over [`crate::BODY_LIMIT`] is refused before a
/// byte of it is read. The body limit alone only trips once that much has arrived, so a
/// client announcing megabytes and sending one byte held the request open for as long
/// as it kept the connection.
pub(crate) async fn announced_body_limit(request: Request, next: Next) -> Response {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|length| length > crate::BODY_LIMIT as u64) {
        return ApiError::PayloadTooLarge(crate::BODY_LIMIT).into_response();
    }
    next.run(request).await
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// A handler panic answers 500 with a problem document; the panic itself is logged by
/// the panic hook.
pub(crate) fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::get;
    use opentelemetry::trace::{Status, TracerProvider as _};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
    use tower_http::trace::TraceLayer;
    use tracing_subscriber::layer::SubscriberExt;

    /// A 5xx marks the server span as an error (with `error.type`); a 4xx does not: the
    /// client's mistake is not the server's failure.
    #[tokio::test]
    async fn a_server_error_is_an_error_of_the_span_and_a_client_error_is_not() {
        service_kit::install_crypto_provider();
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let _default = tracing::subscriber::set_default(subscriber);

        let app = Router::new()
            .route("/broken/{id}", get(|| async { StatusCode::SERVICE_UNAVAILABLE }))
            .route("/refused/{id}", get(|| async { StatusCode::UNPROCESSABLE_ENTITY }))
            .layer(axum::middleware::from_fn(super::metrics))
            .layer(TraceLayer::new_for_http().make_span_with(super::make_span));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        for path in ["/broken/7", "/refused/7"] {
            reqwest::get(format!("{base}{path}")).await.unwrap();
        }
        server.abort();
        provider.force_flush().unwrap();

        let spans = exporter.get_finished_spans().unwrap();
        let span = |name: &str| -> SpanData {
            spans.iter().find(|s| s.name == name).cloned().unwrap_or_else(|| panic!("no {name}: {spans:#?}"))
        };
        let attribute = |span: &SpanData, key: &str| {
            span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
        };
        let broken = span("GET /broken/{id}");
        assert!(matches!(broken.status, Status::Error { .. }), "{broken:#?}");
        assert_eq!(attribute(&broken, "error.type").as_deref(), Some("503"));
        assert_eq!(attribute(&broken, "http.response.status_code").as_deref(), Some("503"));
        assert_eq!(attribute(&broken, "http.route").as_deref(), Some("/broken/{id}"));
        let refused = span("GET /refused/{id}");
        assert_eq!(refused.status, Status::Unset, "{refused:#?}");
        assert_eq!(attribute(&refused, "error.type"), None);
        assert_eq!(attribute(&refused, "http.response.status_code").as_deref(), Some("422"));
    }
}
