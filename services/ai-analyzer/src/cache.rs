//! Paid analyses cached in Redis under `{prefix}cache:analysis:{fingerprint}`, so the
//! same error (same agent, kind, source and normalised text) is not paid for twice
//! within the TTL. The cache is an optimisation: when Redis fails, the analysis goes on
//! without it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use storage::redis::{Keys, Pool, RedisError};
use wire_models::Command;

/// What is cached: a validated analysis and who produced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct CachedAnalysis {
    pub(crate) text: String,
    pub(crate) is_critical: bool,
    pub(crate) suggested_action: Option<Value>,
    pub(crate) dropped_action: Option<Value>,
    pub(crate) analyzer: String,
    pub(crate) model: Option<String>,
}

#[derive(Clone)]
pub(crate) struct AnalysisCache {
    pool: Pool,
    keys: Keys,
    /// Zero disables the cache.
    ttl: Duration,
    timeout: Duration,
}

impl AnalysisCache {
    pub(crate) fn new(pool: Pool, keys: Keys, ttl: Duration, timeout: Duration) -> Self {
        Self { pool, keys, ttl, timeout }
    }

    fn key(&self, fingerprint: &str) -> Option<String> {
        // Fingerprints are SHA-256 hex; anything else is not used in a key.
        let safe = !fingerprint.is_empty()
            && fingerprint.len() <= 128
            && fingerprint.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        (safe && !self.ttl.is_zero()).then(|| self.keys.cache(&format!("analysis:{fingerprint}")))
    }

    /// The cached analysis for `fingerprint`, if any (and still valid).
    pub(crate) async fn get(&self, fingerprint: &str) -> Option<CachedAnalysis> {
        let key = self.key(fingerprint)?;
        let raw = match tokio::time::timeout(self.timeout, self.get_raw(&key)).await {
            Ok(Ok(raw)) => raw,
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "reading the analysis cache failed; analyzing without it");
                metrics::counter!("opspilot_ai_cache_errors_total").increment(1);
                return None;
            }
            Err(_) => {
                tracing::warn!(timeout = ?self.timeout, "reading the analysis cache timed out; analyzing without it");
                metrics::counter!("opspilot_ai_cache_errors_total").increment(1);
                return None;
            }
        };
        // A cached action is checked against the allow-list again: the cache is not
        // trusted more than the model.
        let hit = raw.and_then(|raw| serde_json::from_str::<CachedAnalysis>(&raw).ok()).filter(|c| {
            c.suggested_action.as_ref().is_none_or(|a| serde_json::from_value::<Command>(a.clone()).is_ok())
        });
        match &hit {
            Some(_) => metrics::counter!("opspilot_ai_cache_hits_total").increment(1),
            None => metrics::counter!("opspilot_ai_cache_misses_total").increment(1),
        }
        hit
    }

    /// Caches `analysis` for `fingerprint` for the TTL (best effort).
    pub(crate) async fn put(&self, fingerprint: &str, analysis: &CachedAnalysis) {
        let Some(key) = self.key(fingerprint) else { return };
        let Ok(value) = serde_json::to_string(analysis) else { return };
        match tokio::time::timeout(self.timeout, self.put_raw(&key, &value)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "writing the analysis cache failed"),
            Err(_) => tracing::warn!(timeout = ?self.timeout, "writing the analysis cache timed out"),
        }
    }

    async fn get_raw(&self, key: &str) -> Result<Option<String>, RedisError> {
        let mut conn = self.pool.get().await?;
        Ok(redis::cmd("GET").arg(key).query_async(&mut conn).await?)
    }

    async fn put_raw(&self, key: &str, value: &str) -> Result<(), RedisError> {
        let mut conn = self.pool.get().await?;
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let () = redis::cmd("SET").arg(key).arg(value).arg("PX").arg(ttl_ms).query_async(&mut conn).await?;
        Ok(())
    }
}
