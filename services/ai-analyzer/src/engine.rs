//! One analysis, however it was asked for: load the incident, reuse an earlier
//! analysis or a cached one when allowed, otherwise ask the analyzer (within the global
//! concurrency limit), then record the outcome on the incident.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use storage::PgPool;
use storage::StorageError;
use storage::analysis::{AnalysisInput, AnalysisStatus, NewAnalysis};
use tokio::sync::Semaphore;
use wire_models::AnalyzeOutcome;

use crate::analyzer::{Analysis, Analyzer};
use crate::cache::{AnalysisCache, CachedAnalysis};
use crate::text::truncate_chars;

/// Longest failure reason recorded and replied.
const MAX_REASON_CHARS: usize = 1000;

/// Who asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// An `AnalyzeRequest` (the API).
    Request,
    /// Automatic analysis of a new critical incident.
    Auto,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Request => "request",
            Trigger::Auto => "auto",
        }
    }
}

/// The outcome, with what a notification needs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outcome {
    pub(crate) reply: AnalyzeOutcome,
    /// The loaded input, when the incident exists.
    pub(crate) input: Option<Box<AnalysisInput>>,
    /// Whether the analysis (new or reused) calls the incident critical.
    pub(crate) is_critical: bool,
    pub(crate) suggested_action: Option<Value>,
    /// The analysis text, when this call produced or reused one from the cache.
    pub(crate) text: Option<String>,
}

impl Outcome {
    fn not_found() -> Self {
        Self {
            reply: AnalyzeOutcome::NotFound,
            input: None,
            is_critical: false,
            suggested_action: None,
            text: None,
        }
    }
}

/// The analysis could not be loaded or recorded (the database failed).
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub(crate) struct EngineError {
    what: &'static str,
    #[source]
    source: StorageError,
}

impl EngineError {
    pub(crate) fn is_transient(&self) -> bool {
        self.source.is_transient()
    }

    fn is_not_found(&self) -> bool {
        matches!(self.source, StorageError::NotFound)
    }
}

pub(crate) struct Engine {
    pub(crate) pool: PgPool,
    pub(crate) cache: AnalysisCache,
    pub(crate) analyzer: Arc<dyn Analyzer>,
    /// The global limit on analyses in progress (AI_CONCURRENCY).
    pub(crate) limit: Arc<Semaphore>,
    pub(crate) recent_incidents: u32,
    /// Says on the change feed that an incident's analysis finished.
    pub(crate) feed: natsbus::feed::FeedPublisher,
}

impl Engine {
    #[tracing::instrument(skip_all, fields(incident_id = incident_id, force = force, trigger = trigger.as_str()))]
    pub(crate) async fn analyze(
        &self,
        incident_id: i64,
        force: bool,
        trigger: Trigger,
    ) -> Result<Outcome, EngineError> {
        let outcome = match self.analyze_inner(incident_id, force).await {
            // Deleted while it was being analyzed.
            Err(err) if err.is_not_found() => Ok(Outcome::not_found()),
            other => other,
        };
        let label = match &outcome {
            Ok(Outcome { reply: AnalyzeOutcome::Analyzed { cached: true, .. }, .. }) => "cached",
            Ok(Outcome { reply: AnalyzeOutcome::Analyzed { .. }, .. }) => "analyzed",
            Ok(Outcome { reply: AnalyzeOutcome::Failed { .. }, .. }) => "failed",
            Ok(Outcome { reply: AnalyzeOutcome::NotFound, .. }) => "not_found",
            Err(_) => "error",
        };
        metrics::counter!("opspilot_analyses_total", "trigger" => trigger.as_str(), "outcome" => label)
            .increment(1);
        if let Ok(outcome) = &outcome {
            self.announce(outcome).await;
        }
        outcome
    }

    /// An analysis recorded on the incident (new, from the cache, or failed) goes on the
    /// change feed; reusing the stored one changed nothing.
    async fn announce(&self, outcome: &Outcome) {
        let analysis_status = match &outcome.reply {
            AnalyzeOutcome::Analyzed { .. } if outcome.text.is_some() => "ok",
            AnalyzeOutcome::Failed { .. } => "failed",
            _ => return,
        };
        let Some(input) = &outcome.input else { return };
        let Ok(agent_id) = wire_models::AgentId::parse(&input.incident.agent_id) else { return };
        self.feed
            .incident_updated(&wire_models::IncidentUpdated {
                v: wire_models::PROTOCOL_VERSION,
                incident_id: input.incident.id,
                agent_id,
                change: wire_models::IncidentChange::Analysis,
                status: None,
                occurrences: None,
                last_seen_at: None,
                analysis_status: Some(analysis_status.to_owned()),
                updated_at: chrono::Utc::now(),
            })
            .await;
    }

    async fn analyze_inner(&self, incident_id: i64, force: bool) -> Result<Outcome, EngineError> {
        let input = match with_retries(|| {
            storage::analysis::load_input(&self.pool, incident_id, self.recent_incidents)
        })
        .await
        {
            Ok(input) => input,
            Err(StorageError::NotFound) => return Ok(Outcome::not_found()),
            Err(source) => return Err(EngineError { what: "loading the incident", source }),
        };
        let incident = &input.incident;

        // Analyzed before: the stored analysis stands unless the caller forces a new one.
        if !force && incident.analysis_status == AnalysisStatus::Ok {
            tracing::debug!("incident already analyzed; reusing it");
            let reply = AnalyzeOutcome::Analyzed {
                analyzer: incident.analyzer.clone().unwrap_or_else(|| "unknown".into()),
                model: incident.analyzer_model.clone(),
                cached: true,
            };
            let is_critical = incident.is_critical;
            return Ok(Outcome {
                reply,
                input: Some(Box::new(input)),
                is_critical,
                suggested_action: None,
                text: None,
            });
        }

        if !force && let Some(hit) = self.cache.get(&incident.fingerprint).await {
            tracing::debug!(analyzer = %hit.analyzer, "analysis cache hit");
            let hit = crate::grounding::ground(&input, hit);
            self.store(&input, &hit).await?;
            let is_critical = hit.is_critical || input.incident.is_critical;
            let reply = AnalyzeOutcome::Analyzed { analyzer: hit.analyzer, model: hit.model, cached: true };
            let (suggested_action, text) = (hit.suggested_action, Some(hit.text));
            return Ok(Outcome { reply, input: Some(Box::new(input)), is_critical, suggested_action, text });
        }

        let analyzer = &self.analyzer;
        let name = analyzer.name();
        let result = {
            // The semaphore is never closed; a closed one would only mean no limit.
            let _permit = self.limit.acquire().await.ok();
            let started = Instant::now();
            let result = analyzer.analyze(&input).await;
            metrics::histogram!("opspilot_ai_call_seconds", "analyzer" => name)
                .record(started.elapsed().as_secs_f64());
            result
        };
        match result {
            Ok(analysis) => {
                metrics::counter!("opspilot_ai_calls_total", "analyzer" => name, "outcome" => "ok")
                    .increment(1);
                let record = to_cached(name, &analysis);
                if let Some(dropped) = &analysis.dropped {
                    metrics::counter!("opspilot_ai_dropped_actions_total", "analyzer" => name).increment(1);
                    tracing::info!(reason = %dropped.reason, "suggested action refused by the allow-list");
                }
                // Cached first: if recording fails, a retry does not pay again. The cache
                // holds what the model said; what may be offered depends on this
                // incident and agent, so it is decided after.
                if analyzer.is_paid() {
                    self.cache.put(&input.incident.fingerprint, &record).await;
                }
                let record = crate::grounding::ground(&input, record);
                self.store(&input, &record).await?;
                tracing::info!(
                    analyzer = name,
                    model = record.model.as_deref().unwrap_or(""),
                    critical = record.is_critical,
                    action = record.suggested_action.is_some(),
                    "incident analyzed"
                );
                let reply = AnalyzeOutcome::Analyzed {
                    analyzer: name.to_owned(),
                    model: record.model,
                    cached: false,
                };
                let is_critical = record.is_critical || input.incident.is_critical;
                let (suggested_action, text) = (record.suggested_action, Some(record.text));
                Ok(Outcome { reply, input: Some(Box::new(input)), is_critical, suggested_action, text })
            }
            Err(err) => {
                metrics::counter!("opspilot_ai_calls_total", "analyzer" => name, "outcome" => err.code())
                    .increment(1);
                metrics::counter!("opspilot_ai_failures_total", "analyzer" => name, "reason" => err.code())
                    .increment(1);
                let reason = truncate_chars(&err.to_string(), MAX_REASON_CHARS);
                tracing::warn!(analyzer = name, reason = %reason, "analysis failed");
                let model = analyzer.model().map(str::to_owned);
                with_retries(|| {
                    storage::analysis::record_failure(
                        &self.pool,
                        incident_id,
                        &reason,
                        name,
                        model.as_deref(),
                    )
                })
                .await
                .map_err(|source| EngineError { what: "recording the failed analysis", source })?;
                let is_critical = input.incident.is_critical;
                let reply = AnalyzeOutcome::Failed { reason };
                Ok(Outcome {
                    reply,
                    input: Some(Box::new(input)),
                    is_critical,
                    suggested_action: None,
                    text: None,
                })
            }
        }
    }

    async fn store(&self, input: &AnalysisInput, record: &CachedAnalysis) -> Result<(), EngineError> {
        let analysis = NewAnalysis {
            text: &record.text,
            is_critical: record.is_critical,
            suggested_action: record.suggested_action.as_ref(),
            dropped_action: record.dropped_action.as_ref(),
            analyzer: &record.analyzer,
            model: record.model.as_deref(),
        };
        with_retries(|| storage::analysis::record_success(&self.pool, input.incident.id, &analysis))
            .await
            .map(|_| ())
            .map_err(|source| EngineError { what: "recording the analysis", source })
    }
}

fn to_cached(analyzer: &str, analysis: &Analysis) -> CachedAnalysis {
    CachedAnalysis {
        text: analysis.text.clone(),
        is_critical: analysis.is_critical,
        suggested_action: analysis.action.as_ref().and_then(|a| serde_json::to_value(a).ok()),
        dropped_action: analysis.dropped.as_ref().map(|d| d.to_json()),
        analyzer: analyzer.to_owned(),
        model: analysis.model.clone(),
    }
}

/// Runs a database operation, retrying transient failures (connection lost, pool
/// exhausted, deadlock) three times over about a second.
async fn with_retries<T, F, Fut>(mut op: F) -> Result<T, StorageError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StorageError>>,
{
    let mut delay = Duration::from_millis(100);
    for _ in 0..3 {
        match op().await {
            Err(err) if err.is_transient() => {
                tracing::warn!(error = %err, "transient database failure; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            other => return other,
        }
    }
    op().await
}
