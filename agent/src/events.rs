//! Events from the host: filesystems over the usage threshold, lines of log files
//! matching configured patterns, and units entering the `failed` state (OOM kills are
//! in `oom`). Each event is put in the spool, which the publisher drains; each has a
//! stable `source` naming what produced it (`filesystem:/var`, `log:/var/log/syslog`,
//! `systemd:nginx`).

use std::collections::BTreeMap;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Map, Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use wire_models::{AgentId, Event, EventKind, PROTOCOL_VERSION, ServiceInfo, Severity};

use crate::conditions::Conditions;
use crate::config::LogRule;
use crate::inventory::clean;
use crate::spool::Spool;

/// Where events go: the spool, then the publisher is woken.
#[derive(Clone)]
pub struct Sink {
    pub agent_id: AgentId,
    pub hostname: String,
    pub spool: Arc<Spool>,
    pub wake: Arc<Notify>,
}

impl Sink {
    /// Creates an event with a fresh id, and keeps it until it is acknowledged.
    pub fn emit(
        &self,
        kind: &EventKind,
        severity: Severity,
        source: &str,
        raw_error: &str,
        mut context: Map<String, Value>,
    ) {
        context.insert("hostname".into(), Value::String(self.hostname.clone()));
        let event = Event {
            v: PROTOCOL_VERSION,
            event_id: uuid::Uuid::now_v7(),
            agent_id: self.agent_id.clone(),
            kind: kind.clone(),
            severity,
            source: clean(source, 256),
            raw_error: agent_client::rpc::truncate(&raw_error.replace('\0', " "), Event::MAX_RAW_ERROR)
                .to_owned(),
            context,
            occurred_at: Utc::now(),
        };
        match self.spool.push(&event) {
            Ok(()) => {
                tracing::info!(
                    event_id = %event.event_id,
                    kind = %event.kind.as_str(),
                    source = %event.source,
                    "event"
                );
                self.wake.notify_one();
            }
            Err(err) => tracing::error!(error = %err, "spooling an event failed; event lost"),
        }
    }
}

#[allow(clippy::expect_used)] // constant names, checked by `the_fixed_kinds_are_valid`
fn kind(name: &str) -> EventKind {
    EventKind::parse(name).expect("fixed event kinds are valid")
}

/// Usage of the filesystem holding `path`, in percent, as `df` computes it (space
/// reserved for root counts as used), with total and used bytes.
pub fn usage(path: &Path) -> std::io::Result<(u8, u64, u64)> {
    let st = rustix::fs::statvfs(path).map_err(std::io::Error::from)?;
    let used = st.f_blocks.saturating_sub(st.f_bfree);
    let avail_to_users = used + st.f_bavail;
    let percent = if avail_to_users == 0 { 0 } else { (used * 100).div_ceil(avail_to_users) };
    let frsize = st.f_frsize;
    Ok((u8::try_from(percent.min(100)).unwrap_or(100), st.f_blocks * frsize, used * frsize))
}

/// Watches filesystem usage until `shutdown`; one event when a filesystem goes over
/// the threshold, another only after it went back under it (across restarts: see
/// [`Conditions`]).
pub async fn watch_filesystems(
    sink: Sink,
    conditions: Arc<Conditions>,
    mounts: Vec<PathBuf>,
    threshold: u8,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let disk_full = kind("disk_full");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let mut over = BTreeMap::new();
        for mount in &mounts {
            let source = format!("filesystem:{}", mount.display());
            match usage(mount) {
                Ok((percent, total, used)) if percent >= threshold => {
                    over.insert(source, (mount, percent, total, used));
                }
                Ok(_) => {}
                // Unknown this time: as it was.
                Err(err) => {
                    tracing::debug!(mount = %mount.display(), error = %err, "statvfs failed");
                    if conditions.is_active(&source) {
                        over.insert(source, (mount, 0, 0, 0));
                    }
                }
            }
        }
        let holding = over.keys().cloned().collect();
        conditions.update("filesystem:", &holding, |source| {
            let Some(&(mount, percent, total, used)) = over.get(source) else { return };
            let raw = format!(
                "filesystem {} is {percent}% full ({used} of {total} bytes used, threshold {threshold}%)",
                mount.display()
            );
            let context = json!({
                "mount": mount.display().to_string(),
                "percent": percent,
                "total_bytes": total,
                "used_bytes": used,
                "threshold_percent": threshold,
            });
            let context = context.as_object().cloned().unwrap_or_default();
            let severity = if percent >= 98 { Severity::Critical } else { Severity::Error };
            sink.emit(&disk_full, severity, source, &raw, context);
        });
    }
}

/// Reports units that entered the `failed` state since the last inventory (across
/// restarts: see [`Conditions`]). An empty unit list is taken for a `systemctl` that
/// could not answer, not for a host whose failed units all recovered at once.
pub fn failed_units(sink: &Sink, conditions: &Conditions, now: &[ServiceInfo]) {
    if now.is_empty() {
        return;
    }
    let failed: BTreeMap<String, &str> = now
        .iter()
        .filter(|s| s.state == "failed")
        .map(|s| (format!("systemd:{}", s.name), s.name.as_str()))
        .collect();
    let service_down = kind("service_down");
    let holding = failed.keys().cloned().collect();
    conditions.update("systemd:", &holding, |source| {
        let Some(&unit) = failed.get(source) else { return };
        let mut context = Map::new();
        context.insert("unit".into(), Value::String(unit.to_owned()));
        sink.emit(
            &service_down,
            Severity::Critical,
            source,
            &format!("{unit}.service entered the failed state"),
            context,
        );
    });
}

/// Tails one log file until `shutdown`: from its end at start, following rotation
/// (the path now names another file, or the file shrank), at most
/// `max_per_minute` events.
pub async fn tail_log(sink: Sink, rule: LogRule, poll: Duration, shutdown: CancellationToken) {
    let mut tail = Tail::new(rule.path.clone());
    let mut limiter = RateLimit::new(rule.max_per_minute);
    let source = format!("log:{}", rule.path.display());
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        for line in tail.poll() {
            if !rule.patterns.is_match(&line) {
                continue;
            }
            if !limiter.allow(Instant::now()) {
                continue;
            }
            let mut context = Map::new();
            context.insert("path".into(), Value::String(rule.path.display().to_string()));
            sink.emit(&rule.kind, rule.severity, &source, &line, context);
        }
        if let Some(dropped) = limiter.take_dropped() {
            tracing::warn!(
                path = %rule.path.display(),
                dropped,
                "log matches over the rate limit were dropped"
            );
        }
    }
}

/// Longest line kept; the rest of a longer line is skipped.
const MAX_LINE: usize = 16 * 1024;
/// Most bytes read from a file per poll, so a burst is spread over several polls.
const MAX_READ: u64 = 1 << 20;

/// Reading a file from where it was left, across rotations.
pub struct Tail {
    path: PathBuf,
    file: Option<(std::fs::File, u64, u64)>, // (handle, device, inode)
    offset: u64,
    partial: Vec<u8>,
    started: bool,
}

impl Tail {
    pub fn new(path: PathBuf) -> Self {
        Self { path, file: None, offset: 0, partial: Vec::new(), started: false }
    }

    /// Complete new lines since the last call.
    pub fn poll(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        // Finish the file being read, then look whether the path names another one.
        self.read_into(&mut lines);
        match std::fs::metadata(&self.path) {
            Ok(meta) => {
                let same =
                    matches!(&self.file, Some((_, dev, ino)) if *dev == meta.dev() && *ino == meta.ino());
                if !same || meta.len() < self.offset {
                    self.reopen(!self.started);
                    self.read_into(&mut lines);
                }
            }
            Err(_) => self.file = None,
        }
        self.started = true;
        lines
    }

    /// Opens the file the path names now: at its end the first time (old lines were
    /// reported before the agent started, or never matter), at its start after a
    /// rotation (everything in the new file is new).
    fn reopen(&mut self, at_end: bool) {
        self.partial.clear();
        let Ok(file) = std::fs::File::open(&self.path) else {
            self.file = None;
            return;
        };
        let Ok(meta) = file.metadata() else { return };
        self.offset = if at_end { meta.len() } else { 0 };
        self.file = Some((file, meta.dev(), meta.ino()));
    }

    fn read_into(&mut self, lines: &mut Vec<String>) {
        let Some((file, ..)) = &mut self.file else { return };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        let Ok(n) = file.take(MAX_READ).read_to_end(&mut buf) else { return };
        self.offset += n as u64;
        for chunk in buf.split_inclusive(|&b| b == b'\n') {
            if chunk.last() == Some(&b'\n') {
                self.partial.extend_from_slice(&chunk[..chunk.len() - 1]);
                let line = String::from_utf8_lossy(&self.partial);
                let line = line.trim_end_matches('\r');
                if !line.is_empty() {
                    lines.push(clean(line, MAX_LINE));
                }
                self.partial.clear();
            } else if self.partial.len() < MAX_LINE {
                let room = MAX_LINE - self.partial.len();
                self.partial.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
        }
    }
}

/// At most `per_minute` events in any minute (a token bucket refilled continuously).
pub struct RateLimit {
    per_minute: f64,
    tokens: f64,
    last: Option<Instant>,
    dropped: u64,
}

impl RateLimit {
    pub fn new(per_minute: u32) -> Self {
        let per_minute = f64::from(per_minute.max(1));
        Self { per_minute, tokens: per_minute, last: None, dropped: 0 }
    }

    pub fn allow(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let refill = now.duration_since(last).as_secs_f64() * self.per_minute / 60.0;
            self.tokens = (self.tokens + refill).min(self.per_minute);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    /// How many were refused since the last call, if any.
    pub fn take_dropped(&mut self) -> Option<u64> {
        (self.dropped > 0).then(|| std::mem::take(&mut self.dropped))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn the_fixed_kinds_are_valid() {
        for name in ["disk_full", "service_down"] {
            EventKind::parse(name).unwrap();
        }
    }

    fn append(path: &Path, text: &str) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    #[test]
    fn a_tail_starts_at_the_end_and_follows_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, "old line before the agent\n");
        let mut tail = Tail::new(path.clone());
        assert!(tail.poll().is_empty(), "old lines are not reported");
        append(&path, "one\ntw");
        assert_eq!(tail.poll(), ["one"]);
        append(&path, "o\n");
        assert_eq!(tail.poll(), ["two"], "a line written in two parts is one line");
        // logrotate's default: rename, then a new file at the path.
        append(&path, "last of the old file\n");
        std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
        append(&path, "first of the new file\n");
        assert_eq!(tail.poll(), ["last of the old file", "first of the new file"]);
        // copytruncate: the same file, shorter.
        std::fs::write(&path, "").unwrap();
        append(&path, "after truncation\n");
        assert_eq!(tail.poll(), ["after truncation"]);
        std::fs::remove_file(&path).unwrap();
        assert!(tail.poll().is_empty());
        append(&path, "recreated\n");
        assert_eq!(tail.poll(), ["recreated"]);
    }

    #[test]
    fn the_rate_limit_bounds_a_burst_and_refills() {
        let mut limit = RateLimit::new(3);
        let t0 = Instant::now();
        let allowed = (0..10).filter(|_| limit.allow(t0)).count();
        assert_eq!(allowed, 3);
        assert_eq!(limit.take_dropped(), Some(7));
        assert_eq!(limit.take_dropped(), None);
        assert!(limit.allow(t0 + Duration::from_secs(20)), "one token back after 20 s at 3/min");
        assert!(!limit.allow(t0 + Duration::from_secs(20)));
    }

    #[test]
    fn usage_is_a_percentage() {
        let (percent, total, used) = usage(Path::new("/")).unwrap();
        assert!(percent <= 100 && used <= total && total > 0);
    }
}
