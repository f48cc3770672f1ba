//! Conditions that hold for a while (a filesystem over its threshold, a failed unit):
//! reported once when they start, again only after they cleared. The set of active
//! ones is kept in the state directory, so a restarted agent does not report a
//! condition that still holds as new, and forgets one that cleared while it was down
//! (its first check no longer finds it).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::state::{StateDir, write_private};

const CONDITIONS_FILE: &str = "conditions.json";

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    /// Event sources (`filesystem:/var`, `systemd:nginx`).
    active: BTreeSet<String>,
}

/// The active conditions, by event source. Behind a `std::sync::Mutex`: held for the
/// in-memory update and the small file write that must follow it in order, never
/// across an `.await`.
pub struct Conditions {
    path: PathBuf,
    active: Mutex<BTreeSet<String>>,
}

impl Conditions {
    /// The conditions an earlier run left active. An unreadable file is logged and
    /// forgotten: reporting a condition twice is better than not starting.
    pub fn load(state: &StateDir) -> Self {
        let path = state.path().join(CONDITIONS_FILE);
        let active = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Saved>(&bytes) {
                Ok(saved) => saved.active,
                Err(err) => {
                    tracing::warn!(file = %path.display(), error = %err, "unreadable conditions forgotten");
                    BTreeSet::new()
                }
            },
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(err) => {
                tracing::warn!(file = %path.display(), error = %err, "unreadable conditions forgotten");
                BTreeSet::new()
            }
        };
        Self { path, active: Mutex::new(active) }
    }

    pub fn is_active(&self, source: &str) -> bool {
        self.lock().contains(source)
    }

    /// The active conditions, sorted.
    pub fn active(&self) -> Vec<String> {
        self.lock().iter().cloned().collect()
    }

    /// Makes `holding` the active conditions among those whose source starts with
    /// `prefix` (one check saw all of them), calling `raise` for each that was not
    /// active. `raise` spools the event before the set is saved: a crash between the
    /// two reports the condition again, it never loses it.
    pub fn update(&self, prefix: &str, holding: &BTreeSet<String>, mut raise: impl FnMut(&str)) {
        let mut active = self.lock();
        let before = active.len();
        active.retain(|source| !source.starts_with(prefix) || holding.contains(source));
        let mut changed = active.len() != before;
        for source in holding {
            debug_assert!(source.starts_with(prefix));
            if active.insert(source.clone()) {
                raise(source);
                changed = true;
            }
        }
        if changed {
            let saved = Saved { active: active.clone() };
            let written = serde_json::to_vec(&saved)
                .map_err(|e| e.to_string())
                .and_then(|bytes| write_private(&self.path, &bytes).map_err(|e| e.to_string()));
            if let Err(error) = written {
                tracing::warn!(%error, "saving the active conditions failed; a restart may report them again");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        // Every update leaves a consistent set, so a poisoned lock is still usable.
        self.active.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(sources: &[&str]) -> BTreeSet<String> {
        sources.iter().map(|s| (*s).to_owned()).collect()
    }

    fn raised(conditions: &Conditions, prefix: &str, holding: &[&str]) -> Vec<String> {
        let mut raised = Vec::new();
        conditions.update(prefix, &set(holding), |s| raised.push(s.to_owned()));
        raised
    }

    #[test]
    fn a_condition_is_raised_once_across_restarts_and_again_after_it_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let conditions = Conditions::load(&state);
        assert_eq!(raised(&conditions, "filesystem:", &["filesystem:/", "filesystem:/var"]).len(), 2);
        assert_eq!(raised(&conditions, "systemd:", &["systemd:nginx"]), ["systemd:nginx"]);
        assert!(raised(&conditions, "filesystem:", &["filesystem:/", "filesystem:/var"]).is_empty());

        // Restarted: what still holds is not new, what cleared meanwhile is forgotten.
        let conditions = Conditions::load(&state);
        assert_eq!(conditions.active(), ["filesystem:/", "filesystem:/var", "systemd:nginx"]);
        assert!(raised(&conditions, "filesystem:", &["filesystem:/"]).is_empty());
        assert_eq!(conditions.active(), ["filesystem:/", "systemd:nginx"], "other prefixes are kept");
        let conditions = Conditions::load(&state);
        assert_eq!(
            raised(&conditions, "filesystem:", &["filesystem:/", "filesystem:/var"]),
            ["filesystem:/var"]
        );
    }

    #[test]
    fn an_unreadable_file_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONDITIONS_FILE), "{not json").unwrap();
        let conditions = Conditions::load(&StateDir::new(dir.path()));
        assert!(conditions.active().is_empty());
        assert_eq!(raised(&conditions, "systemd:", &["systemd:nginx"]), ["systemd:nginx"]);
        let text = std::fs::read_to_string(dir.path().join(CONDITIONS_FILE)).unwrap();
        assert_eq!(text, r#"{"active":["systemd:nginx"]}"#);
    }
}
