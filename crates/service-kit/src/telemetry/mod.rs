//! Logs, traces and panics, set up the same way in every service.
//!
//! Logs go to stdout as JSON (`LOG_FORMAT=json`, for collectors) or human-readable
//! text (`pretty`), filtered by `RUST_LOG`. A JSON line carries the fields of the spans
//! it was written in (agent_id, request_id, incident_id...) and, inside a trace, its
//! `trace_id` and `span_id`. When `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are
//! exported over OTLP/HTTP (protobuf) with the service name, version and instance as
//! resource attributes, Postgres statements become client spans ([`sql`]), and W3C
//! trace context is the propagator.

use std::sync::{Arc, OnceLock};

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Dispatch;
use tracing::dispatcher::WeakDispatch;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer as _};

mod json;
mod sql;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Telemetry flags shared by every service; global, so a subcommand takes them too.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Log format: `json` for log collectors, `pretty` for people.
    #[arg(
        id = "log-format",
        long = "log-format",
        env = "LOG_FORMAT",
        value_name = "LOG_FORMAT",
        global = true,
        value_enum,
        default_value = "pretty"
    )]
    pub log_format: LogFormat,
    /// Log filter in `tracing` EnvFilter syntax, e.g. `info,event_ingestor=debug`.
    #[arg(
        id = "log-filter",
        long = "log-filter",
        env = "RUST_LOG",
        value_name = "RUST_LOG",
        global = true,
        default_value = "info"
    )]
    pub log_filter: String,
    /// OTLP/HTTP collector base URL (e.g. `http://jaeger:4318`); traces are exported
    /// only when set.
    #[arg(
        id = "otlp-endpoint",
        long = "otlp-endpoint",
        env = "OTEL_EXPORTER_OTLP_ENDPOINT",
        value_name = "OTEL_EXPORTER_OTLP_ENDPOINT",
        global = true
    )]
    pub otlp_endpoint: Option<String>,
    /// Instance name reported with every span (defaults to host name and pid).
    #[arg(
        id = "instance-id",
        long = "instance-id",
        env = "OTEL_SERVICE_INSTANCE_ID",
        value_name = "OTEL_SERVICE_INSTANCE_ID",
        global = true
    )]
    pub instance_id: Option<String>,
}

impl TelemetryArgs {
    /// Validates what clap cannot: the filter syntax and the endpoint URL.
    pub fn validate(&self) -> Result<(), String> {
        EnvFilter::try_new(&self.log_filter).map_err(|e| format!("RUST_LOG: {e}"))?;
        if let Some(endpoint) = &self.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err("OTEL_EXPORTER_OTLP_ENDPOINT: must be an http:// or https:// URL".into());
        }
        Ok(())
    }
}

/// Whether the current span is part of a sampled trace. Client spans (a Redis command,
/// a NATS publish) are opened only then: outside a trace they would each start one of
/// their own, and without an exporter they would cost a span for nothing.
pub fn in_trace() -> bool {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let current = tracing::Span::current();
    if current.is_none() {
        return false;
    }
    let context = current.context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid() && span_context.is_sampled()
}

/// The subscriber the layers are part of, for the layers that read another layer's
/// span data (trace ids) while handling an event: the thread's default dispatcher is
/// unavailable then (tracing's re-entrancy guard).
#[derive(Clone, Default)]
pub(crate) struct Registered(Arc<OnceLock<WeakDispatch>>);

impl Registered {
    /// Remembers the current default dispatcher (call right after installing it).
    pub(crate) fn set_current(&self) {
        let _ = self.0.set(tracing::dispatcher::get_default(Dispatch::downgrade));
    }

    pub(crate) fn get(&self) -> Option<Dispatch> {
        self.0.get().and_then(WeakDispatch::upgrade)
    }
}

/// Keeps the tracer provider alive; [`TelemetryGuard::shutdown`] flushes pending spans.
#[must_use = "dropping the guard without shutdown() may lose the last spans"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Flushes and stops span export. Blocking (the exporter has its own thread), so
    /// call it after the runtime's work is done or from `spawn_blocking`.
    pub fn shutdown(mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("telemetry: flushing spans on shutdown failed: {err}");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber, the OTLP exporter (when configured), the W3C
/// propagator and a panic hook that logs through `tracing`.
///
/// Each layer has its own filter: `RUST_LOG` decides what is logged and which spans are
/// exported, while sqlx's statement events (debug level) reach only the layer that
/// turns them into database spans, and only when spans are exported.
pub fn init(service: &'static str, args: &TelemetryArgs) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = || EnvFilter::try_new(&args.log_filter);

    let provider = match &args.otlp_endpoint {
        Some(endpoint) => Some(tracer_provider(service, endpoint, args.instance_id.clone())?),
        None => None,
    };
    let otel_layer = match &provider {
        Some(p) => Some(tracing_opentelemetry::layer().with_tracer(p.tracer(service)).with_filter(filter()?)),
        None => None,
    };
    let dispatch = Registered::default();
    let sql_layer = provider.as_ref().map(|p| {
        sql::SqlSpans::new(p.tracer("opspilot.postgres"), dispatch.clone())
            .with_filter(Targets::new().with_target(sql::TARGET, tracing::Level::TRACE))
    });
    let log_layer = match args.log_format {
        LogFormat::Json => json::layer(dispatch.clone()).with_filter(filter()?).boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_filter(filter()?).boxed(),
    };
    tracing_subscriber::registry().with(otel_layer).with(sql_layer).with(log_layer).try_init()?;
    dispatch.set_current();

    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_owned());
        tracing::error!(panic = %payload, location = location.as_deref().unwrap_or("unknown"), "panic");
    }));

    if let Some(endpoint) = &args.otlp_endpoint {
        tracing::info!(endpoint, "exporting traces over otlp/http");
    }
    Ok(TelemetryGuard { provider })
}

fn tracer_provider(
    service: &'static str,
    endpoint: &str,
    instance_id: Option<String>,
) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()?;
    let instance = instance_id.unwrap_or_else(default_instance_id);
    let resource = Resource::builder()
        .with_service_name(service)
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", instance),
        ])
        .build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    format!("{host}-{}", std::process::id())
}
