//! Rows read on every request and kept for a moment: the calling user, the agent an
//! execute targets, a bearer token already checked. A change takes effect at once on the replica that made it (it
//! forgets the entry) and within the time to live on every other.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Entries past this many make a put sweep out the expired ones first.
const SWEEP_OVER: usize = 10_000;

pub(crate) struct TtlCache<K, V> {
    ttl: Duration,
    // Locked only to read or write one entry (or to sweep); never across an await.
    entries: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self { ttl, entries: Mutex::new(HashMap::new()) }
    }

    pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get(key).filter(|(_, at)| at.elapsed() < self.ttl).map(|(value, _)| value.clone())
    }

    pub(crate) fn put(&self, key: K, value: V) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() > SWEEP_OVER {
            entries.retain(|_, (_, at)| at.elapsed() < self.ttl);
        }
        entries.insert(key, (value, Instant::now()));
    }

    pub(crate) fn forget<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_can_be_forgotten() {
        let cache = TtlCache::new(Duration::from_millis(50));
        cache.put("a", 1);
        cache.put("b", 2);
        assert_eq!(cache.get(&"a"), Some(1));
        cache.forget(&"a");
        assert_eq!(cache.get(&"a"), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.get(&"b"), None);
    }

    #[test]
    fn a_full_cache_sweeps_out_what_expired() {
        let cache = TtlCache::new(Duration::from_millis(20));
        for i in 0..=SWEEP_OVER {
            cache.put(i, i);
        }
        std::thread::sleep(Duration::from_millis(30));
        cache.put(usize::MAX, 0);
        assert_eq!(cache.entries.lock().unwrap().len(), 1);
    }
}
