//! An OTLP/HTTP (protobuf) receiver inside the test: services started as processes
//! export their spans here, and the test checks they form one trace.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::AnyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message;

/// One received span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// `SERVER`, `CLIENT`, `PRODUCER`, `CONSUMER` or `INTERNAL`.
    pub kind: String,
    /// `OK`, `ERROR` or `UNSET`.
    pub status: String,
    /// Every attribute, its value rendered as text.
    pub attributes: std::collections::BTreeMap<String, String>,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

type Store = Arc<Mutex<Vec<ReceivedSpan>>>;

pub struct OtlpReceiver {
    pub endpoint: String,
    spans: Store,
    task: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    pub async fn start() -> Self {
        let spans: Store = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the otlp receiver");
        let endpoint = format!("http://{}", listener.local_addr().expect("otlp address"));
        let app = axum::Router::new().route("/v1/traces", post(receive)).with_state(Arc::clone(&spans));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { endpoint, spans, task }
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until a span matching `predicate` arrived.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        predicate: impl Fn(&ReceivedSpan) -> bool,
    ) -> ReceivedSpan {
        crate::eventually(timeout, what, || {
            let found = self.spans().into_iter().find(|s| predicate(s));
            async move { found }
        })
        .await
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(State(store): State<Store>, body: Bytes) -> Vec<u8> {
    if let Ok(request) = ExportTraceServiceRequest::decode(body) {
        let mut spans = store.lock().unwrap();
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    let kind = SpanKind::try_from(span.kind)
                        .map(|k| k.as_str_name().trim_start_matches("SPAN_KIND_").to_owned())
                        .unwrap_or_default();
                    let status = span
                        .status
                        .as_ref()
                        .and_then(|s| StatusCode::try_from(s.code).ok())
                        .map(|c| c.as_str_name().trim_start_matches("STATUS_CODE_").to_owned())
                        .unwrap_or_else(|| "UNSET".to_owned());
                    let attributes = span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), kv.value.as_ref().map(render).unwrap_or_default()))
                        .collect();
                    spans.push(ReceivedSpan {
                        service: service.clone(),
                        name: span.name,
                        trace_id: hex::encode(span.trace_id),
                        span_id: hex::encode(span.span_id),
                        parent_span_id: hex::encode(span.parent_span_id),
                        kind,
                        status,
                        attributes,
                    });
                }
            }
        }
    }
    ExportTraceServiceResponse::default().encode_to_vec()
}

fn render(value: &AnyValue) -> String {
    match &value.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// Path of a workspace binary built next to the running test (`target/debug/{name}`).
pub fn binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/it-xxxx -> target/debug/{name}
    let dir = exe.parent().and_then(std::path::Path::parent).expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; build the workspace (`cargo build --workspace --bins`)",
        path.display()
    );
    path
}
