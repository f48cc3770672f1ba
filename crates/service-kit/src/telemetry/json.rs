//! The JSON log line: one object per event, with the event's fields, the fields of the
//! spans it was written in (innermost wins) and, inside a trace, `trace_id` and
//! `span_id` as a log pipeline joins them to traces (hex, as in `traceparent`).

use std::io;

use json_subscriber::{FieldWriter, JsonLayer};
use opentelemetry::trace::TraceContextExt;
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

pub(super) fn layer<S>(dispatch: super::Registered) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    with_writer(io::stdout, dispatch)
}

/// The layer writing to `make_writer` (tests capture the lines).
pub(super) fn with_writer<S, W>(make_writer: W, dispatch: super::Registered) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let mut layer = JsonLayer::new(make_writer);
    layer
        .with_timer("timestamp", SystemTime)
        .with_level("level")
        .with_target("target")
        .with_flattened_event()
        .with_top_level_flattened_span_list();
    layer.add_multiple_dynamic_fields(move |event, ctx, writer| {
        if let Some(dispatch) = dispatch.get() {
            trace_ids(event, ctx, &dispatch, writer);
        }
    });
    layer
}

fn trace_ids<S>(event: &Event<'_>, ctx: &Context<'_, S>, dispatch: &Dispatch, writer: &mut FieldWriter<'_>)
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let Some(span) = ctx.event_span(event) else { return };
    let Some(context) = tracing_opentelemetry::get_otel_context(&span.id(), dispatch) else { return };
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        let _ = writer.write_field("trace_id", span_context.trace_id().to_string());
        let _ = writer.write_field("span_id", span_context.span_id().to_string());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    impl Lines {
        fn json(&self) -> Vec<serde_json::Value> {
            let bytes = self.0.lock().unwrap().clone();
            String::from_utf8(bytes)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect()
        }
    }

    #[test]
    fn a_line_carries_its_trace_and_the_fields_of_its_spans() {
        let lines = Lines::default();
        let provider = SdkTracerProvider::builder().build();
        let registered = crate::telemetry::Registered::default();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(with_writer(lines.clone(), registered.clone()));
        let (trace_id, span_id) = tracing::subscriber::with_default(subscriber, || {
            registered.set_current();
            let request = tracing::info_span!("request", request_id = "r-1", agent_id = "web-01");
            let _outer = request.enter();
            let inner = tracing::info_span!("incident", incident_id = 42);
            let _inner = inner.enter();
            tracing::info!(attempt = 2, "analysing");
            let context = inner.context();
            let span_context = context.span().span_context().clone();
            (span_context.trace_id().to_string(), span_context.span_id().to_string())
        });
        tracing::subscriber::with_default(
            tracing_subscriber::registry().with(with_writer(lines.clone(), Default::default())),
            || tracing::warn!("outside any span"),
        );

        let logged = lines.json();
        assert_eq!(logged.len(), 2, "{logged:?}");
        let line = &logged[0];
        assert_eq!(line["message"], "analysing");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["attempt"], 2);
        assert_eq!(line["request_id"], "r-1");
        assert_eq!(line["agent_id"], "web-01");
        assert_eq!(line["incident_id"], 42);
        assert_eq!(line["trace_id"], trace_id.as_str());
        assert_eq!(line["span_id"], span_id.as_str());
        assert_eq!(trace_id.len(), 32);
        assert!(line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{line}");

        let bare = &logged[1];
        assert_eq!(bare["message"], "outside any span");
        assert!(bare.get("trace_id").is_none(), "{bare}");
    }
}
