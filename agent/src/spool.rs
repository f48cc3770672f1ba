//! The on-disk spool of events not yet acknowledged by the stream. An event is
//! written here (atomically, one file per event) before the first publish attempt and
//! removed only once JetStream acknowledged it, so it survives restarts and long
//! disconnections and is re-published with the same `event_id` (JetStream and the
//! backend's ledger drop the duplicate). The spool is bounded: when it is full the
//! oldest events are dropped, and counted.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use wire_models::Event;

use crate::state::{StateError, write_private};

/// The spool. Its index is behind a `std::sync::Mutex`: it is held only for in-memory
/// bookkeeping and never across an `.await`.
pub struct Spool {
    dir: PathBuf,
    max: usize,
    index: Mutex<Index>,
}

struct Index {
    /// File names, oldest first.
    queue: VecDeque<String>,
    next_seq: u64,
    dropped: u64,
}

impl Spool {
    /// Opens the spool in `dir`, keeping what an earlier run left there.
    pub fn open(dir: &Path, max: usize) -> Result<Self, StateError> {
        let io = |source| StateError::Io { path: dir.to_owned(), source };
        crate::state::create_private_dir(dir)?;
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| name.ends_with(".json") && !name.starts_with('.'))
            .collect();
        // Names start with a zero-padded sequence number: sorting them is FIFO order.
        names.sort();
        let next_seq =
            names.last().and_then(|n| n.split('-').next()?.parse::<u64>().ok()).map_or(0, |s| s + 1);
        let spool = Self {
            dir: dir.to_owned(),
            max: max.max(1),
            index: Mutex::new(Index { queue: names.into(), next_seq, dropped: 0 }),
        };
        spool.trim();
        Ok(spool)
    }

    /// Keeps `event` until it is acknowledged.
    pub fn push(&self, event: &Event) -> Result<(), StateError> {
        let name = {
            let mut index = self.lock();
            let name = format!("{:020}-{}.json", index.next_seq, event.event_id);
            index.next_seq += 1;
            name
        };
        let bytes = serde_json::to_vec(event)
            .map_err(|e| StateError::Corrupt { path: self.dir.join(&name), reason: e.to_string() })?;
        write_private(&self.dir.join(&name), &bytes)?;
        self.lock().queue.push_back(name);
        self.trim();
        Ok(())
    }

    /// The oldest unacknowledged event and its handle for [`Spool::ack`]. A file that
    /// cannot be read back is dropped (logged): it would block the spool for ever.
    pub fn peek(&self) -> Option<(String, Event)> {
        loop {
            let name = self.lock().queue.front()?.clone();
            let path = self.dir.join(&name);
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Event>(&b).map_err(|e| e.to_string()))
            {
                Ok(event) => return Some((name, event)),
                Err(error) => {
                    tracing::warn!(file = %path.display(), %error, "unreadable spooled event dropped");
                    self.remove(&name);
                }
            }
        }
    }

    /// Forgets an event the stream acknowledged.
    pub fn ack(&self, name: &str) {
        self.remove(name);
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many events were dropped because the spool was full.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    fn remove(&self, name: &str) {
        {
            let mut index = self.lock();
            if let Some(pos) = index.queue.iter().position(|n| n == name) {
                index.queue.remove(pos);
            }
        }
        if let Err(err) = std::fs::remove_file(self.dir.join(name))
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(file = name, error = %err, "removing a spooled event failed");
        }
    }

    fn trim(&self) {
        loop {
            let victim = {
                let mut index = self.lock();
                if index.queue.len() <= self.max {
                    return;
                }
                index.dropped += 1;
                index.queue.pop_front()
            };
            if let Some(name) = victim {
                tracing::warn!(file = %name, max = self.max, "spool full; oldest event dropped");
                let _ = std::fs::remove_file(self.dir.join(name));
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        // A panic while holding the lock leaves a consistent index (every update is
        // a single step), so a poisoned lock is still usable.
        self.index.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use wire_models::{AgentId, EventKind, PROTOCOL_VERSION, Severity};

    fn event(n: u32) -> Event {
        Event {
            v: PROTOCOL_VERSION,
            event_id: uuid::Uuid::now_v7(),
            agent_id: AgentId::parse("a1b2c3d4e5f6").unwrap(),
            kind: EventKind::parse("log_match").unwrap(),
            severity: Severity::Error,
            source: format!("test-{n}"),
            raw_error: "x".into(),
            context: Default::default(),
            occurred_at: Utc::now(),
        }
    }

    #[test]
    fn events_survive_a_restart_in_order_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let events: Vec<Event> = (0..3).map(event).collect();
        {
            let spool = Spool::open(dir.path(), 10).unwrap();
            for e in &events {
                spool.push(e).unwrap();
            }
            let (name, first) = spool.peek().unwrap();
            assert_eq!(first, events[0]);
            spool.ack(&name);
        }
        let spool = Spool::open(dir.path(), 10).unwrap();
        assert_eq!(spool.len(), 2);
        let (name, next) = spool.peek().unwrap();
        assert_eq!(next.event_id, events[1].event_id, "same event, same id");
        spool.ack(&name);
        spool.push(&event(9)).unwrap();
        let (_, next) = spool.peek().unwrap();
        assert_eq!(next.event_id, events[2].event_id, "new events queue behind old ones");
    }

    #[test]
    fn a_full_spool_drops_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 2).unwrap();
        let events: Vec<Event> = (0..3).map(event).collect();
        for e in &events {
            spool.push(e).unwrap();
        }
        assert_eq!((spool.len(), spool.dropped()), (2, 1));
        assert_eq!(spool.peek().unwrap().1.event_id, events[1].event_id);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn an_unreadable_file_does_not_block_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("00000000000000000000-x.json"), "garbage").unwrap();
        let spool = Spool::open(dir.path(), 10).unwrap();
        let e = event(1);
        spool.push(&e).unwrap();
        assert_eq!(spool.peek().unwrap().1.event_id, e.event_id);
        assert_eq!(spool.len(), 1);
    }
}
