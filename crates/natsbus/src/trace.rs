//! W3C trace context in NATS headers, so one trace follows a request across services,
//! and messaging spans named and attributed by the OpenTelemetry messaging conventions
//! (`messaging.system`, `messaging.destination.name`, the operation).
//!
//! Spans for sending (publish, request, reply) are opened only inside a trace
//! ([`service_kit::telemetry::in_trace`]); a received message gets a `process` span
//! when it carries trace context (see [`process_span!`](crate::process_span)).

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value);
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

/// Writes the current span's context (`traceparent`, `tracestate`) into `headers`.
pub fn inject_current(headers: &mut HeaderMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers));
    });
}

/// Reads a trace context from message headers (an empty context when absent).
pub fn extract(headers: Option<&HeaderMap>) -> opentelemetry::Context {
    match headers {
        Some(headers) => opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(headers))
        }),
        None => opentelemetry::Context::new(),
    }
}

/// Makes `span` a child of the trace carried by `headers`, if any.
pub fn set_parent(span: &tracing::Span, headers: Option<&HeaderMap>) {
    let parent = extract(headers);
    let _ = span.set_parent(parent);
}

/// Makes `batch` (the span of handling many messages or requests at once) a child of
/// the first of the `traced` contexts and links it to the others: one span has one
/// parent, and the batch's work belongs to every one of those traces.
pub fn adopt_batch(batch: &tracing::Span, traced: &[opentelemetry::Context]) {
    use opentelemetry::trace::TraceContextExt as _;
    if let Some((first, others)) = traced.split_first() {
        let _ = batch.set_parent(first.clone());
        for other in others {
            batch.add_link(other.span().span_context().clone());
        }
    }
}

/// The trace contexts of `spans`, for [`adopt_batch`].
pub fn contexts(spans: &[tracing::Span]) -> Vec<opentelemetry::Context> {
    spans.iter().map(OpenTelemetrySpanExt::context).collect()
}

/// The subject with its variable tokens named, for span names (the conventions want a
/// low-cardinality name: `send ops.{agent_id}.events.{kind}`, never one per agent).
pub fn destination_template(subject: &str) -> String {
    if subject.starts_with("_INBOX.") {
        return "_INBOX".to_owned();
    }
    let mut tokens: Vec<&str> = subject.split('.').collect();
    let n = tokens.len();
    if let Some(i) = tokens.iter().position(|t| *t == "sys") {
        if tokens.get(i + 1) == Some(&"presence") && n > i + 2 {
            tokens[i + 2] = "{agent_id}";
        }
        return tokens.join(".");
    }
    if n >= 3 && tokens[n - 2] == "events" {
        tokens[n - 3] = "{agent_id}";
        tokens[n - 1] = "{kind}";
    } else if n >= 2 && matches!(tokens[n - 1], "inventory" | "rpc") {
        tokens[n - 2] = "{agent_id}";
    }
    tokens.join(".")
}

/// How a message leaves: the span's kind and `messaging.operation.name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Send {
    /// A JetStream or core publish (producer).
    Publish,
    /// A request waiting for its reply (client).
    Request,
    /// The reply to a request (producer, to the requester's inbox).
    Reply,
}

impl Send {
    fn name(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Request => "request",
            Self::Reply => "reply",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Self::Request => "client",
            Self::Publish | Self::Reply => "producer",
        }
    }
}

/// The span of sending one message to `subject`; enter it (or instrument the send with
/// it) before [`inject_current`], so the receiver's span is its child. A disabled span
/// outside a trace.
pub fn send_span(operation: Send, subject: &str, body_size: usize) -> tracing::Span {
    if !service_kit::telemetry::in_trace() {
        return tracing::Span::none();
    }
    let destination = destination_template(subject);
    tracing::info_span!(
        "send",
        otel.name = format!("{} {destination}", operation.name()),
        otel.kind = operation.kind(),
        messaging.system = "nats",
        messaging.operation.type = "send",
        messaging.operation.name = operation.name(),
        messaging.destination.name = subject,
        messaging.destination.template = destination.as_str(),
        messaging.destination.temporary = operation == Send::Reply,
        messaging.message.body.size = body_size,
        messaging.message.id = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        "error.type" = tracing::field::Empty,
    )
}

/// Marks the current send span as failed, with a short, bounded reason.
pub fn record_error(kind: &'static str) {
    let span = tracing::Span::current();
    span.record("otel.status_code", "ERROR");
    span.record("error.type", kind);
}

/// The span of processing one received message, a child of the trace in its headers:
/// `process_span!(subject, headers)` or with more fields,
/// `process_span!(subject, headers, incident_id = id)`.
#[macro_export]
macro_rules! process_span {
    ($subject:expr, $headers:expr $(, $($field:tt)+)?) => {{
        let subject: &str = $subject;
        let destination = $crate::trace::destination_template(subject);
        let span = $crate::__tracing::info_span!(
            "process",
            otel.name = format!("process {destination}"),
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.destination.name = subject,
            messaging.destination.template = destination.as_str(),
            $($($field)+)?
        );
        $crate::trace::set_parent(&span, $headers);
        span
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_named_without_their_agent() {
        assert_eq!(destination_template("ops.web-01.events.oom"), "ops.{agent_id}.events.{kind}");
        assert_eq!(destination_template("t1.ops.web-01.events.oom"), "t1.ops.{agent_id}.events.{kind}");
        assert_eq!(destination_template("ops.web-01.inventory"), "ops.{agent_id}.inventory");
        assert_eq!(destination_template("ops.web-01.rpc"), "ops.{agent_id}.rpc");
        assert_eq!(destination_template("ops.sys.presence.web-01"), "ops.sys.presence.{agent_id}");
        assert_eq!(destination_template("ops.sys.incidents.created"), "ops.sys.incidents.created");
        assert_eq!(destination_template("ops.sys.dlq.events"), "ops.sys.dlq.events");
        assert_eq!(destination_template("_INBOX.abc.def"), "_INBOX");
    }
}
