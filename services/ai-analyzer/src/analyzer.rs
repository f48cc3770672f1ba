//! What an analyzer is: something that turns an incident (with its agent and recent
//! history) into an explanation, a criticality and at most one allow-listed action.

use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Value, json};
use storage::analysis::AnalysisInput;
use wire_models::Command;

/// An analyzer: the OpenRouter client ([`crate::openrouter::OpenRouterAnalyzer`]) or the
/// built-in rules ([`crate::rules::RulesAnalyzer`]).
pub trait Analyzer: Send + Sync + 'static {
    /// Stored in `incidents.analyzer` (`openrouter`, `rules`).
    fn name(&self) -> &'static str;

    /// The configured model, if the analyzer has one.
    fn model(&self) -> Option<&str>;

    /// Whether an answer costs something (a paid API call), so it is worth caching.
    fn is_paid(&self) -> bool;

    fn analyze<'a>(&'a self, input: &'a AnalysisInput) -> BoxFuture<'a, Result<Analysis, AnalyzeError>>;
}

/// A validated analysis.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    pub text: String,
    pub is_critical: bool,
    /// An allow-listed action with valid params.
    pub action: Option<Command>,
    /// The action the analyzer proposed that the allow-list refused.
    pub dropped: Option<DroppedAction>,
    /// The model that answered (as the provider reports it), if any.
    pub model: Option<String>,
}

/// A suggested action that was refused, kept so an operator can see what the model
/// wanted and why it was not offered.
#[derive(Debug, Clone, PartialEq)]
pub struct DroppedAction {
    /// What the model put in `command` (any JSON; bounded).
    pub command: Value,
    /// What the model put in `params` (any JSON; bounded).
    pub params: Value,
    pub reason: String,
}

impl DroppedAction {
    /// The JSON stored in `incidents.dropped_action`.
    pub fn to_json(&self) -> Value {
        json!({ "command": self.command, "params": self.params, "reason": self.reason })
    }
}

/// Why an analysis failed. The message is what the incident records and the caller is
/// told, so it never contains the key or a whole response body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnalyzeError {
    #[error("the AI provider did not answer in time ({attempts} attempt(s), {timeout:?} each)")]
    Timeout { attempts: u32, timeout: Duration },
    #[error("rate limited by the AI provider after {attempts} attempt(s){}", retry_after_hint(*.retry_after))]
    RateLimited { attempts: u32, retry_after: Option<Duration> },
    #[error("the AI provider failed with HTTP {status} after {attempts} attempt(s): {detail}")]
    Upstream { status: u16, attempts: u32, detail: String },
    #[error("the AI provider refused the request with HTTP {status}: {detail}")]
    Refused { status: u16, detail: String },
    #[error("cannot reach the AI provider after {attempts} attempt(s): {detail}")]
    Transport { attempts: u32, detail: String },
    #[error("the AI answer is unusable: {0}")]
    Malformed(String),
}

fn retry_after_hint(retry_after: Option<Duration>) -> String {
    retry_after.map(|d| format!(" (it asked to wait {}s)", d.as_secs_f64().ceil())).unwrap_or_default()
}

impl AnalyzeError {
    /// A stable code for metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            AnalyzeError::Timeout { .. } => "timeout",
            AnalyzeError::RateLimited { .. } => "rate_limited",
            AnalyzeError::Upstream { .. } => "server_error",
            AnalyzeError::Refused { .. } => "refused",
            AnalyzeError::Transport { .. } => "transport",
            AnalyzeError::Malformed(_) => "malformed_answer",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_well() {
        let err = AnalyzeError::RateLimited { attempts: 3, retry_after: Some(Duration::from_millis(1500)) };
        assert_eq!(
            err.to_string(),
            "rate limited by the AI provider after 3 attempt(s) (it asked to wait 2s)"
        );
        let err = AnalyzeError::Timeout { attempts: 2, timeout: Duration::from_millis(300) };
        assert_eq!(err.to_string(), "the AI provider did not answer in time (2 attempt(s), 300ms each)");
    }
}
