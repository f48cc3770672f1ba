//! Telling people about analyzed critical incidents. The original design had a Slack
//! notifier that was never switched on; it is kept as a disabled stub behind the
//! [`Notifier`] interface, and says so at startup, until someone wires a real one.

use futures::future::BoxFuture;
use serde_json::Value;
use wire_models::{AnalyzeOutcome, IncidentCreated};

use crate::engine::Outcome;
use crate::text::truncate_chars;

/// What a notification says.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub incident_id: i64,
    pub agent_id: String,
    pub hostname: Option<String>,
    pub kind: String,
    pub is_critical: bool,
    pub analyzer: Option<String>,
    /// The start of the analysis text.
    pub summary: Option<String>,
    /// The suggested action (`{"command": ..., "params": ...}`), if any.
    pub suggested_action: Option<Value>,
}

impl Notification {
    pub(crate) fn from_outcome(created: &IncidentCreated, outcome: &Outcome) -> Self {
        let analyzer = match &outcome.reply {
            AnalyzeOutcome::Analyzed { analyzer, .. } => Some(analyzer.clone()),
            AnalyzeOutcome::Failed { .. } | AnalyzeOutcome::NotFound => None,
        };
        Self {
            incident_id: created.incident_id,
            agent_id: created.agent_id.to_string(),
            hostname: outcome.input.as_ref().map(|i| i.agent.hostname.clone()),
            kind: created.kind.to_string(),
            is_critical: outcome.is_critical,
            analyzer,
            summary: outcome.text.as_deref().map(|t| truncate_chars(t, 300)),
            suggested_action: outcome.suggested_action.clone(),
        }
    }
}

/// Why a notification was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notification channel {channel} failed: {detail}")]
    Failed { channel: &'static str, detail: String },
}

/// A channel that tells people about analyzed critical incidents.
pub trait Notifier: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Whether notifications actually go anywhere.
    fn is_enabled(&self) -> bool;

    fn notify<'a>(&'a self, notification: &'a Notification) -> BoxFuture<'a, Result<(), NotifyError>>;
}

/// Slack, as in the original design: a disabled stub that sends nothing.
#[derive(Debug, Default)]
pub struct SlackNotifier {
    _private: (),
}

impl SlackNotifier {
    /// The stub; it logs that Slack notifications are disabled.
    pub fn disabled() -> Self {
        tracing::info!(notifier = "slack", "slack notifications disabled");
        Self { _private: () }
    }
}

impl Notifier for SlackNotifier {
    fn name(&self) -> &'static str {
        "slack"
    }

    fn is_enabled(&self) -> bool {
        false
    }

    fn notify<'a>(&'a self, notification: &'a Notification) -> BoxFuture<'a, Result<(), NotifyError>> {
        tracing::debug!(incident_id = notification.incident_id, "slack notifications disabled; not sent");
        Box::pin(std::future::ready(Ok(())))
    }
}
