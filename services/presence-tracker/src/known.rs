//! Which agents are enrolled, cached: every heartbeat needs the answer and it rarely
//! changes. Unlike the ingestor's cache this one keeps working through a Postgres
//! outage: agents known before are still accepted (presence must not stop because the
//! database did), and only never-seen ids wait.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use wire_models::AgentId;

/// Known agents are re-checked after this long (a revoked agent stops being tracked).
const POSITIVE_TTL: Duration = Duration::from_secs(300);
/// Unknown ids are remembered briefly, so a freshly enrolled agent shows up within
/// seconds while a stranger's heartbeats cost one query per few seconds.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Entries kept at most (about 80 bytes each); four times the largest fleet measured.
const MAX_ENTRIES: usize = 4_000_000;
/// One lookup may not hold the heartbeat path up longer than this.
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);
/// After a failed lookup, Postgres is not asked again for this long.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// The answer for a set of ids.
#[derive(Debug, Default)]
pub(crate) struct Enrollment {
    pub(crate) enrolled: HashSet<AgentId>,
    /// Ids Postgres could not be asked about; ask again later.
    pub(crate) undecided: HashSet<AgentId>,
}

#[derive(Default)]
pub(crate) struct KnownAgents {
    // Locked only for map lookups and inserts, never across an await.
    entries: Mutex<HashMap<AgentId, (bool, Instant)>>,
    retry_at: Mutex<Option<Instant>>,
}

impl KnownAgents {
    /// Sorts `ids` into enrolled, not enrolled (left out) and undecided.
    pub(crate) async fn check<'a>(
        &self,
        pool: &PgPool,
        ids: impl IntoIterator<Item = &'a AgentId>,
    ) -> Enrollment {
        let now = Instant::now();
        let mut out = Enrollment::default();
        let mut ask: Vec<&AgentId> = Vec::new();
        let mut stale_known: Vec<&AgentId> = Vec::new();
        {
            let entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for id in ids {
                match entries.get(id) {
                    Some((true, at)) if now.duration_since(*at) < POSITIVE_TTL => {
                        out.enrolled.insert(id.clone());
                    }
                    Some((false, at)) if now.duration_since(*at) < NEGATIVE_TTL => {}
                    Some((true, _)) => {
                        stale_known.push(id);
                        ask.push(id);
                    }
                    _ => ask.push(id),
                }
            }
        }
        if ask.is_empty() {
            return out;
        }
        let waiting = self
            .retry_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| now < at);
        let found = if waiting {
            None
        } else {
            match tokio::time::timeout(QUERY_TIMEOUT, storage::agents::enrolled(pool, &ask)).await {
                Ok(Ok(found)) => Some(found),
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "cannot check which agents are enrolled; using what is cached");
                    None
                }
                Err(_) => {
                    tracing::warn!("checking which agents are enrolled timed out; using what is cached");
                    None
                }
            }
        };
        let Some(found) = found else {
            if !waiting {
                *self.retry_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(now + RETRY_AFTER);
            }
            // Agents known before stay accepted; the others wait.
            for id in ask {
                if stale_known.contains(&id) {
                    out.enrolled.insert(id.clone());
                } else {
                    out.undecided.insert(id.clone());
                }
            }
            return out;
        };
        let found: HashSet<&AgentId> = found.iter().collect();
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() > MAX_ENTRIES {
            // Expired entries go first: a fleet of a million keeps its cache (clearing it
            // would send every agent's next heartbeat to Postgres at once).
            entries.retain(|_, (known, at)| {
                now.duration_since(*at) < if *known { POSITIVE_TTL } else { NEGATIVE_TTL }
            });
            if entries.len() > MAX_ENTRIES {
                entries.clear();
            }
        }
        for id in ask {
            let known = found.contains(id);
            entries.insert(id.clone(), (known, now));
            if known {
                out.enrolled.insert(id.clone());
            }
        }
        out
    }
}
