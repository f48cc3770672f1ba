//! OOM kills, named by the cgroup (the systemd unit) they happened in.
//!
//! Every non-root cgroup v2 directory has a world-readable `memory.events` whose
//! `oom_kill` line counts the kills in that cgroup and, by default, in all of its
//! descendants. The kernel's global counter (`oom_kill` in /proc/vmstat) counts every
//! kill. Each check reads both; a kill is reported once, by the deepest tracked cgroup
//! whose counter grew more than its children's did (`oom:{unit}`), and whatever the
//! cgroups do not explain (processes in the root cgroup, a host without cgroup v2) is
//! reported as before (`kernel:oom`). Neither needs privilege nor the kernel log, which
//! the unit's sandbox denies.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, json};
use tokio_util::sync::CancellationToken;
use wire_models::{EventKind, Severity};

use crate::events::Sink;

/// How deep below the cgroup root the walk goes. systemd's deepest usual layout
/// (`user.slice/user-1000.slice/user@1000.service/app.slice/x.scope`) is 5 levels;
/// kills deeper than the bound are named by their deepest tracked ancestor.
pub const MAX_DEPTH: usize = 6;
/// Most cgroups read per check, so a host running thousands of containers costs a
/// bounded amount of I/O; kills in the others are named by a tracked ancestor.
pub const MAX_CGROUPS: usize = 2048;

/// The source of kills no tracked cgroup explains.
pub const GLOBAL_SOURCE: &str = "kernel:oom";

/// The kernel's count of OOM kills since boot (`oom_kill` in /proc/vmstat, Linux
/// 4.13+), or of one cgroup (`oom_kill` in its `memory.events`).
pub fn oom_kills(counters: &str) -> Option<u64> {
    counters.lines().find_map(|line| line.strip_prefix("oom_kill ")?.trim().parse().ok())
}

/// What one check found: kills since the previous check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kill {
    /// The cgroup, relative to the cgroup root (`system.slice/nginx.service`); None for
    /// kills no tracked cgroup explains.
    pub cgroup: Option<String>,
    pub killed: u64,
}

impl Kill {
    /// The unit a cgroup belongs to: its deepest path component named like a systemd
    /// unit, else its last component.
    pub fn unit(&self) -> Option<&str> {
        let cgroup = self.cgroup.as_deref()?;
        const SUFFIXES: [&str; 4] = [".service", ".scope", ".slice", ".socket"];
        let unit = cgroup.rsplit('/').find(|part| SUFFIXES.iter().any(|s| part.ends_with(s)));
        Some(unit.unwrap_or_else(|| cgroup.rsplit('/').next().unwrap_or(cgroup)))
    }

    /// The event's stable source: `oom:{unit}`, or `kernel:oom`.
    pub fn source(&self) -> String {
        self.unit().map_or_else(|| GLOBAL_SOURCE.to_owned(), |unit| format!("oom:{unit}"))
    }
}

/// One cgroup as last read: its directory's inode (a cgroup removed and created again
/// under the same name is another cgroup, its counter back at 0) and its counter.
#[derive(Debug, Clone, Copy)]
struct Counter {
    ino: u64,
    kills: u64,
    /// Kills already reported by its children that its own counter did not show yet.
    owed: u64,
}

/// The counters as of the previous check.
pub struct OomCounters {
    vmstat: PathBuf,
    cgroup_root: PathBuf,
    max_depth: usize,
    max_cgroups: usize,
    global: Option<u64>,
    /// Kills the cgroups reported that the global counter did not show yet.
    global_owed: u64,
    cgroups: HashMap<String, Counter>,
    /// The previous walk stopped at `max_cgroups`: a cgroup it did not read may be old.
    truncated: bool,
}

impl OomCounters {
    /// Reads every counter once: kills from before the agent started are the baseline,
    /// never reported.
    pub fn baseline(vmstat: PathBuf, cgroup_root: PathBuf) -> Self {
        Self::with_bounds(vmstat, cgroup_root, MAX_DEPTH, MAX_CGROUPS)
    }

    pub fn with_bounds(vmstat: PathBuf, cgroup_root: PathBuf, max_depth: usize, max_cgroups: usize) -> Self {
        let global = read_counter(&vmstat);
        let (cgroups, truncated) = walk(&cgroup_root, max_depth, max_cgroups);
        Self { vmstat, cgroup_root, max_depth, max_cgroups, global, global_owed: 0, cgroups, truncated }
    }

    /// Whether there is anything to watch at all.
    pub fn is_available(&self) -> bool {
        self.global.is_some() || !self.cgroups.is_empty()
    }

    /// How many cgroups are tracked.
    pub fn cgroups(&self) -> usize {
        self.cgroups.len()
    }

    /// The kills since the previous check, each cgroup's own first (sorted by cgroup),
    /// then the rest of the global counter's growth.
    pub fn check(&mut self) -> Vec<Kill> {
        // The kernel counts a kill globally, then in the victim's cgroup, then in each
        // ancestor; reading in that order (the global counter, then parents before
        // children) can only see a kill in a child before its parent, or in a cgroup
        // before the global counter. What a counter shows less than its children is
        // owed: taken off its next growth, so no kill is reported twice.
        let global = read_counter(&self.vmstat);
        let (mut now, truncated) = walk(&self.cgroup_root, self.max_depth, self.max_cgroups);
        // Growth of each cgroup's counter, which includes its descendants', less what it owed.
        let mut grown: HashMap<String, u64> = HashMap::with_capacity(now.len());
        for (path, counter) in &mut now {
            let raw = match self.cgroups.get(path) {
                Some(before) if before.ino == counter.ino && before.kills <= counter.kills => {
                    counter.owed = before.owed;
                    counter.kills - before.kills
                }
                // Another cgroup under the same name (a counter never goes down): all
                // it counted is since the last check.
                Some(_) => counter.kills,
                // Created since the last check: all it counted is new. Unless the last
                // walk was cut short, when it may be an old cgroup read first now.
                None if self.truncated => 0,
                None => counter.kills,
            };
            let paid = raw.min(counter.owed);
            counter.owed -= paid;
            grown.insert(path.clone(), raw - paid);
        }
        let mut children: HashMap<&str, u64> = HashMap::new();
        for (path, &grown) in &grown {
            if let Some(parent) = parent(path) {
                *children.entry(parent).or_default() += grown;
            }
        }
        let mut kills = Vec::new();
        for (path, counter) in &mut now {
            let total = grown.get(path).copied().unwrap_or(0);
            let below = children.get(path.as_str()).copied().unwrap_or(0);
            counter.owed += below.saturating_sub(total);
            let own = total.saturating_sub(below);
            if own > 0 {
                kills.push(Kill { cgroup: Some(path.clone()), killed: own });
            }
        }
        kills.sort_by(|a, b| a.cgroup.cmp(&b.cgroup));
        let named: u64 = kills.iter().map(|k| k.killed).sum();
        if let (Some(before), Some(now)) = (self.global, global) {
            let raw = now.saturating_sub(before);
            let explained = named + self.global_owed;
            self.global_owed = explained.saturating_sub(raw);
            let rest = raw.saturating_sub(explained);
            if rest > 0 {
                kills.push(Kill { cgroup: None, killed: rest });
            }
        }
        if global.is_some() {
            self.global = global;
        }
        self.cgroups = now;
        self.truncated = truncated;
        kills
    }
}

fn read_counter(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok().as_deref().and_then(oom_kills)
}

/// The parent of a relative cgroup path (None for a top-level cgroup).
fn parent(path: &str) -> Option<&str> {
    path.rsplit_once('/').map(|(parent, _)| parent)
}

/// Every cgroup with an `oom_kill` counter under `root`, breadth first in name order
/// (so a bounded walk keeps the same cgroups from one check to the next), without
/// following symbolic links; and whether it stopped at `max_cgroups`.
fn walk(root: &Path, max_depth: usize, max_cgroups: usize) -> (HashMap<String, Counter>, bool) {
    let mut found = HashMap::new();
    let mut level = vec![String::new()];
    for _ in 0..max_depth {
        let mut next = Vec::new();
        for rel in &level {
            let dir = if rel.is_empty() { root.to_owned() } else { root.join(rel) };
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            let mut names: Vec<String> = entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().into_string().ok())
                .collect();
            names.sort();
            for name in names {
                let rel = if rel.is_empty() { name } else { format!("{rel}/{name}") };
                let path = root.join(&rel);
                let (Ok(meta), Some(kills)) =
                    (std::fs::symlink_metadata(&path), read_counter(&path.join("memory.events")))
                else {
                    continue;
                };
                if found.len() == max_cgroups {
                    return (found, true);
                }
                found.insert(rel.clone(), Counter { ino: meta.ino(), kills, owed: 0 });
                next.push(rel);
            }
        }
        level = next;
    }
    (found, false)
}

/// Watches the OOM kill counters until `shutdown`: one event per cgroup whose own kills
/// grew in a check, one for the rest of the global counter's growth.
pub async fn watch(
    sink: Sink,
    vmstat: PathBuf,
    cgroup_root: PathBuf,
    every: Duration,
    shutdown: CancellationToken,
) {
    let baseline = tokio::task::spawn_blocking(move || OomCounters::baseline(vmstat, cgroup_root)).await;
    let Ok(mut counters) = baseline else { return };
    if !counters.is_available() {
        tracing::debug!("no oom_kill counter; oom kills are not watched");
        return;
    }
    tracing::debug!(cgroups = counters.cgroups(), "watching oom kills");
    let oom = kind();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        // Up to a few thousand small reads: not on the runtime's thread.
        let checked = tokio::task::spawn_blocking(move || {
            let kills = counters.check();
            (counters, kills)
        })
        .await;
        let Ok((back, kills)) = checked else { return };
        counters = back;
        for kill in kills {
            let mut context = Map::new();
            context.insert("killed".into(), json!(kill.killed));
            let raw = match (&kill.cgroup, kill.unit()) {
                (Some(cgroup), Some(unit)) => {
                    context.insert("unit".into(), json!(unit));
                    context.insert("cgroup".into(), json!(cgroup));
                    format!("the kernel's out-of-memory killer killed {} process(es) in {unit}", kill.killed)
                }
                _ => format!("the kernel's out-of-memory killer killed {} process(es)", kill.killed),
            };
            sink.emit(&oom, Severity::Critical, &kill.source(), &raw, context);
        }
    }
}

#[allow(clippy::expect_used)] // a constant name, checked by `the_kind_is_valid`
fn kind() -> EventKind {
    EventKind::parse("oom").expect("the oom kind is valid")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::Notify;
    use wire_models::AgentId;

    use super::*;
    use crate::spool::Spool;

    #[test]
    fn the_kind_is_valid() {
        kind();
    }

    #[test]
    fn the_oom_kill_counter_is_read_from_vmstat_and_memory_events() {
        assert_eq!(oom_kills("pgfault 12\noom_kill 3\nnr_foo 1\n"), Some(3));
        assert_eq!(oom_kills("pgfault 12\n"), None);
        let events = "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(oom_kills(events), Some(2), "not oom_group_kill");
        let here = std::fs::read_to_string("/proc/vmstat").unwrap();
        assert!(oom_kills(&here).is_some(), "this kernel counts oom kills");
    }

    /// A cgroup v2 tree in a directory: `memory.events` of each cgroup.
    struct Tree(tempfile::TempDir);

    impl Tree {
        fn new() -> Self {
            let tree = Self(tempfile::tempdir().unwrap());
            std::fs::write(tree.0.path().join("vmstat"), "oom_kill 0\n").unwrap();
            std::fs::create_dir(tree.0.path().join("cgroup")).unwrap();
            tree
        }

        fn root(&self) -> PathBuf {
            self.0.path().join("cgroup")
        }

        fn set(&self, cgroup: &str, kills: u64) {
            let dir = self.root().join(cgroup);
            std::fs::create_dir_all(&dir).unwrap();
            let text = format!("low 0\nhigh 0\nmax 0\noom {kills}\noom_kill {kills}\noom_group_kill 0\n");
            std::fs::write(dir.join("memory.events"), text).unwrap();
        }

        fn global(&self, kills: u64) {
            std::fs::write(self.0.path().join("vmstat"), format!("pgfault 1\noom_kill {kills}\n")).unwrap();
        }

        fn counters(&self) -> OomCounters {
            OomCounters::baseline(self.0.path().join("vmstat"), self.root())
        }
    }

    fn named(kills: &[Kill]) -> Vec<(String, u64)> {
        kills.iter().map(|k| (k.source(), k.killed)).collect()
    }

    #[test]
    fn a_kill_is_named_by_its_unit_once_and_only_the_rest_is_global() {
        let tree = Tree::new();
        // Kills from before the agent started: the baseline.
        tree.set("system.slice", 3);
        tree.set("system.slice/nginx.service", 3);
        tree.set("system.slice/cron.service", 0);
        tree.set("user.slice", 0);
        tree.global(5);
        let mut counters = tree.counters();
        assert_eq!(counters.check(), [], "kills before the start are not reported");

        // nginx: counted in its cgroup, its slice and the global counter; one more kill
        // in no cgroup (the root cgroup) is the global remainder.
        tree.set("system.slice/nginx.service", 5);
        tree.set("system.slice", 5);
        tree.global(8);
        let kills = counters.check();
        assert_eq!(named(&kills), [("oom:nginx.service".to_owned(), 2), ("kernel:oom".to_owned(), 1)]);
        assert_eq!(kills[0].cgroup.as_deref(), Some("system.slice/nginx.service"));
        assert_eq!(counters.check(), [], "reported once");

        // A unit started after the agent: all its kills are new.
        tree.set("system.slice/worker.service", 1);
        tree.set("system.slice", 6);
        tree.global(9);
        assert_eq!(named(&counters.check()), [("oom:worker.service".to_owned(), 1)]);

        // A unit that was stopped and started again is a new cgroup, its counter at 0.
        std::fs::remove_dir_all(tree.root().join("system.slice/nginx.service")).unwrap();
        tree.set("system.slice/nginx.service", 1);
        tree.set("system.slice", 7);
        tree.global(10);
        assert_eq!(named(&counters.check()), [("oom:nginx.service".to_owned(), 1)]);

        // A cgroup gone before the check (its unit stopped): its slice names the kill.
        std::fs::remove_dir_all(tree.root().join("system.slice/worker.service")).unwrap();
        tree.set("system.slice", 8);
        tree.global(11);
        assert_eq!(named(&counters.check()), [("oom:system.slice".to_owned(), 1)]);
    }

    #[test]
    fn a_check_between_the_kernels_increments_reports_the_kill_once() {
        let tree = Tree::new();
        tree.set("system.slice", 0);
        tree.set("system.slice/nginx.service", 0);
        let mut counters = tree.counters();
        // The kernel has counted the kill in the unit, not yet in its slice nor (as the
        // checks read it) globally.
        tree.set("system.slice/nginx.service", 1);
        assert_eq!(named(&counters.check()), [("oom:nginx.service".to_owned(), 1)]);
        tree.set("system.slice", 1);
        tree.global(1);
        assert_eq!(counters.check(), [], "the slice and the global counter caught up");
        tree.set("system.slice/nginx.service", 2);
        tree.set("system.slice", 2);
        tree.global(3);
        assert_eq!(
            named(&counters.check()),
            [("oom:nginx.service".to_owned(), 1), ("kernel:oom".to_owned(), 1)]
        );
    }

    #[test]
    fn without_cgroups_every_kill_is_global() {
        let tree = Tree::new();
        tree.global(2);
        let mut counters = tree.counters();
        assert!(counters.is_available());
        tree.global(4);
        assert_eq!(named(&counters.check()), [("kernel:oom".to_owned(), 2)]);
    }

    #[test]
    fn the_walk_is_bounded_and_deeper_kills_are_named_by_an_ancestor() {
        let tree = Tree::new();
        tree.set("a.slice", 0);
        tree.set("a.slice/b.service", 0);
        tree.set("a.slice/b.service/c", 0);
        tree.set("z.slice", 0);
        let vmstat = tree.0.path().join("vmstat");
        let mut shallow = OomCounters::with_bounds(vmstat.clone(), tree.root(), 2, 100);
        assert_eq!(shallow.cgroups(), 3, "two levels");
        let mut few = OomCounters::with_bounds(vmstat, tree.root(), 6, 2);
        assert_eq!(few.cgroups(), 2, "at most two cgroups");
        tree.set("a.slice/b.service/c", 1);
        tree.set("a.slice/b.service", 1);
        tree.set("a.slice", 1);
        tree.global(1);
        let kills = shallow.check();
        assert_eq!(named(&kills), [("oom:b.service".to_owned(), 1)]);
        assert_eq!(kills[0].cgroup.as_deref(), Some("a.slice/b.service"));
        // The bounded walk keeps a.slice and z.slice (breadth first, in name order).
        assert_eq!(named(&few.check()), [("oom:a.slice".to_owned(), 1)]);
    }

    #[test]
    fn a_cgroup_is_named_by_its_deepest_unit() {
        let kill = |cgroup: &str| Kill { cgroup: Some(cgroup.to_owned()), killed: 1 };
        assert_eq!(kill("system.slice/nginx.service").source(), "oom:nginx.service");
        assert_eq!(kill("system.slice/docker.service/payload").source(), "oom:docker.service");
        assert_eq!(kill("machine/qemu-1").source(), "oom:qemu-1");
        assert_eq!(Kill { cgroup: None, killed: 1 }.source(), "kernel:oom");
    }

    #[tokio::test]
    async fn a_kill_in_a_unit_becomes_one_event_naming_it() {
        let tree = Tree::new();
        tree.set("system.slice", 4);
        tree.set("system.slice/nginx.service", 4);
        tree.global(4);
        let spool = Arc::new(Spool::open(&tree.0.path().join("spool"), 10).unwrap());
        let sink = Sink {
            agent_id: AgentId::parse("a1b2c3d4e5f6").unwrap(),
            hostname: "h".into(),
            spool: Arc::clone(&spool),
            wake: Arc::new(Notify::new()),
        };
        let stop = CancellationToken::new();
        let every = Duration::from_millis(20);
        let watch = tokio::spawn(watch(sink, tree.0.path().join("vmstat"), tree.root(), every, stop.clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(spool.is_empty(), "kills before the agent started are not reported");
        tree.set("system.slice/nginx.service", 6);
        tree.set("system.slice", 6);
        tree.global(6);
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.cancel();
        watch.await.unwrap();
        let (_, event) = spool.peek().unwrap();
        assert_eq!((event.kind.as_str(), event.source.as_str()), ("oom", "oom:nginx.service"));
        assert_eq!(event.context["killed"], 2);
        assert_eq!(event.context["cgroup"], "system.slice/nginx.service");
        assert!(event.raw_error.ends_with("in nginx.service"), "{}", event.raw_error);
        assert_eq!(spool.len(), 1, "no global event for kills a cgroup explains");
    }
}
