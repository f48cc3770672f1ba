//! Which agents are enrolled, cached: every event needs the answer and the answer
//! rarely changes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use wire_models::AgentId;

/// Known agents stay cached this long (a revoked agent is refused at the bus anyway).
const POSITIVE_TTL: Duration = Duration::from_secs(60);
/// Unknown ids are remembered briefly so a spammer does not turn into a query storm,
/// while a freshly enrolled agent is accepted within seconds.
const NEGATIVE_TTL: Duration = Duration::from_secs(2);

#[derive(Default)]
pub(crate) struct KnownAgents {
    // Locked only for map lookups and inserts, never across an await.
    entries: Mutex<HashMap<AgentId, (bool, Instant)>>,
}

impl KnownAgents {
    /// Returns the subset of `ids` that are enrolled, asking Postgres about the ones
    /// the cache cannot answer.
    pub(crate) async fn filter_enrolled<'a>(
        &self,
        pool: &PgPool,
        ids: impl IntoIterator<Item = &'a AgentId>,
    ) -> Result<std::collections::HashSet<AgentId>, storage::StorageError> {
        let now = Instant::now();
        let mut enrolled = std::collections::HashSet::new();
        let mut unknown: Vec<&AgentId> = Vec::new();
        {
            let entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for id in ids {
                match entries.get(id) {
                    Some((true, at)) if now.duration_since(*at) < POSITIVE_TTL => {
                        enrolled.insert(id.clone());
                    }
                    Some((false, at)) if now.duration_since(*at) < NEGATIVE_TTL => {}
                    _ => {
                        if !unknown.contains(&id) {
                            unknown.push(id);
                        }
                    }
                }
            }
        }
        if unknown.is_empty() {
            return Ok(enrolled);
        }
        let found = storage::agents::enrolled(pool, &unknown).await?;
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() > 1_000_000 {
            entries.clear();
        }
        for id in unknown {
            let known = found.contains(id);
            entries.insert(id.clone(), (known, now));
            if known {
                enrolled.insert(id.clone());
            }
        }
        Ok(enrolled)
    }
}
