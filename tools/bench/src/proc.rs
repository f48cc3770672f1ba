//! What the operating system says about a process: CPU time and resident memory.

use std::time::{Duration, Instant};

/// Linux reports CPU time in clock ticks of 1/100 s (USER_HZ) on every platform we run.
const TICKS_PER_SEC: f64 = 100.0;

pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces; fields follow it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

pub(crate) fn rss_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmRSS:")
}

/// The kernel's high-water mark of the resident set since the process started: a peak
/// no sampling interval can miss.
pub(crate) fn peak_rss_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmHWM:")
}

fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Samples a process's CPU use (in cores) and peak RSS over a window.
pub(crate) struct Sampler {
    pid: u32,
    started: Instant,
    cpu_at_start: f64,
    pub(crate) peak_rss_mib: f64,
}

impl Sampler {
    pub(crate) fn start(pid: u32) -> Self {
        Self {
            pid,
            started: Instant::now(),
            cpu_at_start: cpu_seconds(pid).unwrap_or(0.0),
            peak_rss_mib: rss_mib(pid).unwrap_or(0.0),
        }
    }

    pub(crate) fn sample(&mut self) {
        if let Some(rss) = rss_mib(self.pid) {
            self.peak_rss_mib = self.peak_rss_mib.max(rss);
        }
    }

    /// Average cores used since `start`.
    pub(crate) fn cores(&self) -> f64 {
        let elapsed = self.started.elapsed().max(Duration::from_millis(1)).as_secs_f64();
        (cpu_seconds(self.pid).unwrap_or(self.cpu_at_start) - self.cpu_at_start) / elapsed
    }
}
