//! Live presence of the agents executes target, kept for a moment and forgotten as soon
//! as the change feed says an agent's presence changed: an execute to an agent read a
//! moment ago does not ask Redis again, and one whose presence changed since does.
//!
//! The feed is what makes this exact, the time to live only bounds the cost of a lost
//! message: entries are kept only while this replica follows the feed (its hub reads
//! it), all are dropped when it starts following again after a gap, and a read of
//! Redis that a change overtook is not kept (a generation counts the changes).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use presence::PresenceView;
use wire_models::AgentId;

/// Entries past this many make a put sweep out the expired ones first.
const SWEEP_OVER: usize = 10_000;

pub(crate) struct PresenceCache {
    ttl: Duration,
    following: AtomicBool,
    // Locked only to read or write one entry (or to sweep); never across an await.
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<AgentId, (PresenceView, Instant)>,
    /// Changes seen so far: a read that began before one is not kept.
    generation: u64,
}

/// Where the cache stood when a read of Redis began.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadStart(u64);

impl PresenceCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self { ttl, following: AtomicBool::new(false), inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The view kept for `agent`, or where the cache stands for the read to come.
    pub(crate) fn get(&self, agent: &AgentId) -> Result<PresenceView, ReadStart> {
        let inner = self.lock();
        if self.following.load(Ordering::Acquire)
            && let Some((view, at)) = inner.entries.get(agent)
            && at.elapsed() < self.ttl
        {
            return Ok(view.clone());
        }
        Err(ReadStart(inner.generation))
    }

    /// Keeps what Redis said of `agent`, unless a change came in since `start`.
    pub(crate) fn put(&self, agent: AgentId, view: PresenceView, start: ReadStart) {
        let mut inner = self.lock();
        if !self.following.load(Ordering::Acquire) || inner.generation != start.0 {
            return;
        }
        if inner.entries.len() > SWEEP_OVER {
            let ttl = self.ttl;
            inner.entries.retain(|_, (_, at)| at.elapsed() < ttl);
        }
        inner.entries.insert(agent, (view, Instant::now()));
    }

    /// The feed says `agent`'s presence changed.
    pub(crate) fn changed(&self, agent: &AgentId) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.entries.remove(agent);
    }

    /// Whether the feed is being read. Starting again forgets everything: changes may
    /// have been missed in between.
    pub(crate) fn following(&self, following: bool) {
        let mut inner = self.lock();
        if following && !self.following.load(Ordering::Acquire) {
            inner.generation += 1;
            inner.entries.clear();
        }
        self.following.store(following, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire_models::PresenceState;

    fn view(state: PresenceState) -> PresenceView {
        PresenceView { state, since: None, last_seen: None, threshold_secs: 30 }
    }

    fn agent(n: u8) -> AgentId {
        AgentId::parse(&format!("a1b2c3d4e5f{n}")).unwrap()
    }

    fn kept(cache: &PresenceCache, id: &AgentId) -> Option<PresenceState> {
        cache.get(id).ok().map(|v| v.state)
    }

    /// A miss, then Redis's answer (online) offered to the cache.
    fn read_online(cache: &PresenceCache, id: &AgentId) {
        let start = cache.get(id).unwrap_err();
        cache.put(id.clone(), view(PresenceState::Online), start);
    }

    #[test]
    fn a_view_is_kept_until_its_agent_changes() {
        let cache = PresenceCache::new(Duration::from_secs(60));
        cache.following(true);
        let (a, b) = (agent(1), agent(2));
        read_online(&cache, &a);
        read_online(&cache, &b);
        assert_eq!(kept(&cache, &a), Some(PresenceState::Online));
        cache.changed(&a);
        assert_eq!(kept(&cache, &a), None);
        assert_eq!(
            kept(&cache, &b),
            Some(PresenceState::Online),
            "another agent's change forgets only its own"
        );
    }

    #[test]
    fn a_read_overtaken_by_a_change_is_not_kept() {
        let cache = PresenceCache::new(Duration::from_secs(60));
        cache.following(true);
        let a = agent(1);
        let start = cache.get(&a).unwrap_err();
        // The agent went offline while Redis was being read: what was read may be older.
        cache.changed(&a);
        cache.put(a.clone(), view(PresenceState::Online), start);
        assert_eq!(kept(&cache, &a), None);
    }

    #[test]
    fn nothing_is_kept_without_the_feed_and_a_gap_forgets_everything() {
        let cache = PresenceCache::new(Duration::from_secs(60));
        let a = agent(1);
        read_online(&cache, &a);
        assert_eq!(kept(&cache, &a), None, "not following the feed: nothing kept");

        cache.following(true);
        read_online(&cache, &a);
        assert_eq!(kept(&cache, &a), Some(PresenceState::Online));
        cache.following(false);
        assert_eq!(kept(&cache, &a), None, "the feed lost: nothing served");
        cache.following(true);
        assert_eq!(kept(&cache, &a), None, "following again: what was kept before the gap is gone");
    }

    #[test]
    fn a_view_expires_with_its_time_to_live() {
        let cache = PresenceCache::new(Duration::from_millis(20));
        cache.following(true);
        let a = agent(1);
        read_online(&cache, &a);
        assert!(kept(&cache, &a).is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(kept(&cache, &a), None);
    }
}
