//! Postgres statements as OpenTelemetry client spans.
//!
//! sqlx already times every statement and reports it as a `sqlx::query` event when the
//! statement finishes (its text with `$n` placeholders, rows, elapsed time). Wrapping
//! the pool to open spans instead would mean another executor type through every
//! storage function; this layer turns that one event into a span that ends now and
//! started `elapsed` ago, a child of the span the statement ran in.
//!
//! Parameter values never reach a span: sqlx's text is the statement as written, with
//! `$n` placeholders, and it is the only text recorded.
//!
//! Only statements inside a trace become spans: the background loops (flushes,
//! retention) would otherwise start a new trace per statement.

use std::fmt::Debug;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::Tracer;
use tracing::field::{Field, Visit};
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::layer::Context as LayerContext;
use tracing_subscriber::registry::LookupSpan;

/// The target sqlx reports finished statements under.
pub(super) const TARGET: &str = "sqlx::query";

/// Longest statement text recorded in `db.query.text`.
const MAX_QUERY_TEXT: usize = 2048;

pub(super) struct SqlSpans {
    tracer: Tracer,
    dispatch: super::Registered,
}

impl SqlSpans {
    pub(super) fn new(tracer: Tracer, dispatch: super::Registered) -> Self {
        Self { tracer, dispatch }
    }
}

impl<S> tracing_subscriber::Layer<S> for SqlSpans
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, _ctx: LayerContext<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        let Some(dispatch) = self.dispatch.get() else { return };
        let Some(parent) = parent_context(&dispatch) else { return };
        let mut fields = Fields::default();
        event.record(&mut fields);
        let Some(statement) = fields.statement() else { return };
        let end = SystemTime::now();
        let start = end.checked_sub(fields.elapsed).unwrap_or(end);
        let described = Statement::describe(&statement);

        let mut attributes = vec![
            KeyValue::new("db.system.name", "postgresql"),
            KeyValue::new("db.query.text", truncate(&statement, MAX_QUERY_TEXT)),
        ];
        if let Some(operation) = &described.operation {
            attributes.push(KeyValue::new("db.operation.name", operation.clone()));
        }
        if let Some(collection) = &described.collection {
            attributes.push(KeyValue::new("db.collection.name", collection.clone()));
        }
        if let Some(rows) = fields.rows_returned.filter(|r| *r > 0) {
            attributes.push(KeyValue::new("db.response.returned_rows", rows as i64));
        }
        let mut span = self
            .tracer
            .span_builder(described.span_name())
            .with_kind(SpanKind::Client)
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        span.end_with_timestamp(end);
    }
}

/// The OpenTelemetry context of the span the statement ran in, when that is part of a
/// sampled trace. Asked of the dispatcher, not of this layer's context: this layer's
/// filter admits sqlx's events only, so its context sees no span at all.
fn parent_context(dispatch: &Dispatch) -> Option<Context> {
    let current = dispatch.current_span();
    let cx = tracing_opentelemetry::get_otel_context(current.id()?, dispatch)?;
    let valid = cx.span().span_context().is_valid() && cx.span().span_context().is_sampled();
    valid.then_some(cx)
}

/// What sqlx's statement event carries.
#[derive(Default)]
struct Fields {
    summary: Option<String>,
    statement: Option<String>,
    rows_returned: Option<u64>,
    elapsed: Duration,
}

impl Fields {
    /// sqlx writes the whole text only when it is longer than its four-word summary,
    /// and then with an ellipsis on the summary.
    fn statement(&self) -> Option<String> {
        match (&self.statement, &self.summary) {
            (Some(text), _) if !text.trim().is_empty() => Some(text.trim().to_owned()),
            (_, Some(summary)) if !summary.trim().is_empty() => Some(summary.trim().to_owned()),
            _ => None,
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "summary" => self.summary = Some(value.to_owned()),
            "db.statement" => self.statement = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "rows_returned" {
            self.rows_returned = Some(value);
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "elapsed_secs" && value.is_finite() && value >= 0.0 {
            self.elapsed = Duration::from_secs_f64(value);
        }
    }

    fn record_debug(&mut self, _field: &Field, _value: &dyn Debug) {}
}

/// The operation and table of a statement, read from its first words, for the span
/// name the conventions ask for (`{operation} {table}`, e.g. `INSERT incidents`).
#[derive(Debug, PartialEq, Eq)]
struct Statement {
    operation: Option<String>,
    collection: Option<String>,
}

impl Statement {
    fn describe(sql: &str) -> Self {
        let words: Vec<&str> = sql.split_whitespace().take(8).collect();
        let Some(first) = words.first() else { return Self { operation: None, collection: None } };
        let operation = first.trim_end_matches(';').to_ascii_uppercase();
        if !operation.chars().all(|c| c.is_ascii_alphabetic()) {
            return Self { operation: None, collection: None };
        }
        let after = |keyword: &str| {
            words
                .iter()
                .position(|w| w.eq_ignore_ascii_case(keyword))
                .and_then(|i| words.get(i + 1))
                .map(|w| table_name(w))
                .filter(|t| !t.is_empty())
        };
        let collection = match operation.as_str() {
            "INSERT" => after("INTO"),
            "UPDATE" => words.get(1).map(|w| table_name(w)).filter(|t| !t.is_empty()),
            "DELETE" | "SELECT" => after("FROM"),
            _ => None,
        };
        Self { operation: Some(operation), collection }
    }

    fn span_name(&self) -> String {
        match (&self.operation, &self.collection) {
            (Some(operation), Some(collection)) => format!("{operation} {collection}"),
            (Some(operation), None) => operation.clone(),
            _ => "postgresql".to_owned(),
        }
    }
}

/// `agents(id,` → `agents`; `public.agents` stays qualified.
fn table_name(word: &str) -> String {
    word.split(['(', ',', ';', ')'])
        .next()
        .unwrap_or_default()
        .trim_matches('"')
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
        .collect()
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn described(sql: &str) -> (Option<String>, Option<String>) {
        let s = Statement::describe(sql);
        (s.operation, s.collection)
    }

    #[test]
    fn statements_are_named_by_operation_and_table() {
        assert_eq!(
            described("INSERT INTO incidents (id, agent_id) VALUES ($1, $2)"),
            (Some("INSERT".into()), Some("incidents".into()))
        );
        assert_eq!(
            described("insert into agents(id,hostname) select * from unnest($1)"),
            (Some("INSERT".into()), Some("agents".into()))
        );
        assert_eq!(
            described("UPDATE agents SET status = $1"),
            (Some("UPDATE".into()), Some("agents".into()))
        );
        assert_eq!(
            described("DELETE FROM audit_log WHERE id = $1"),
            (Some("DELETE".into()), Some("audit_log".into()))
        );
        assert_eq!(
            described("SELECT id, status FROM agents WHERE id = $1"),
            (Some("SELECT".into()), Some("agents".into()))
        );
        assert_eq!(described("WITH x AS (SELECT 1) SELECT * FROM x"), (Some("WITH".into()), None));
        assert_eq!(described("COMMIT"), (Some("COMMIT".into()), None));
        assert_eq!(described("   "), (None, None));
        assert_eq!(Statement::describe("SELECT 1").span_name(), "SELECT");
        assert_eq!(Statement::describe("UPDATE agents SET x = 1").span_name(), "UPDATE agents");
    }

    #[test]
    fn a_statement_inside_a_trace_becomes_a_client_span_and_one_outside_does_not() {
        use opentelemetry::trace::TracerProvider as _;
        use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
        use tracing_subscriber::Layer as _;
        use tracing_subscriber::layer::SubscriberExt;

        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let registered = super::super::Registered::default();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(SqlSpans::new(provider.tracer("sql"), registered.clone()).with_filter(
                tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::TRACE),
            ));
        tracing::subscriber::with_default(subscriber, || {
            registered.set_current();
            // What sqlx reports, as sqlx reports it.
            let statement = |sql: &str| {
                tracing::event!(
                    target: "sqlx::query",
                    tracing::Level::DEBUG,
                    summary = "insert into incidents(agent_id, …",
                    db.statement = sql,
                    rows_affected = 1u64,
                    rows_returned = 0u64,
                    elapsed_secs = 0.25f64,
                );
            };
            statement("outside any trace");
            let request = tracing::info_span!("request");
            let _entered = request.enter();
            statement("\n\ninsert into incidents(agent_id, title) values ($1, $2)\n");
        });
        provider.force_flush().unwrap();

        let spans = exporter.get_finished_spans().unwrap();
        let db: Vec<_> = spans.iter().filter(|s| s.instrumentation_scope.name() == "sql").collect();
        assert_eq!(db.len(), 1, "only the statement inside a trace is a span: {spans:#?}");
        let span = db[0];
        let request = spans.iter().find(|s| s.name == "request").expect("the request span");
        assert_eq!(span.name, "INSERT incidents");
        assert_eq!(span.span_kind, SpanKind::Client);
        assert_eq!(span.parent_span_id, request.span_context.span_id());
        assert_eq!(span.span_context.trace_id(), request.span_context.trace_id());
        let attribute = |key: &str| {
            span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
        };
        assert_eq!(attribute("db.system.name").as_deref(), Some("postgresql"));
        assert_eq!(attribute("db.operation.name").as_deref(), Some("INSERT"));
        assert_eq!(attribute("db.collection.name").as_deref(), Some("incidents"));
        assert_eq!(
            attribute("db.query.text").as_deref(),
            Some("insert into incidents(agent_id, title) values ($1, $2)")
        );
        let took = span.end_time.duration_since(span.start_time).unwrap();
        assert!((took.as_secs_f64() - 0.25).abs() < 0.01, "{took:?}");
    }

    #[test]
    fn the_whole_text_is_preferred_over_the_summary() {
        let fields = Fields {
            summary: Some("SELECT id FROM agents …".into()),
            statement: Some("\n\nSELECT id FROM agents WHERE id = $1\n".into()),
            ..Fields::default()
        };
        assert_eq!(fields.statement().as_deref(), Some("SELECT id FROM agents WHERE id = $1"));
        let short =
            Fields { summary: Some("COMMIT".into()), statement: Some(String::new()), ..Fields::default() };
        assert_eq!(short.statement().as_deref(), Some("COMMIT"));
        assert_eq!(truncate("ééé", 3), "é…");
    }
}
