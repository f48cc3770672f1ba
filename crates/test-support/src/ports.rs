//! Ports for servers a test starts as processes.
//!
//! Asking the kernel for port 0 and letting it go is a race: the port comes from the
//! ephemeral range, which every outgoing connection on the machine (a test's Postgres
//! pool, another test's client) also draws from, and nothing stops the kernel handing
//! it out again before the server binds it. So ports are taken from just below the
//! ephemeral range, which the kernel never assigns by itself, and each one is reserved
//! across the test processes that run in parallel by an advisory lock on a file named
//! after it, held until this process exits.

use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, RandomState};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Mutex;

/// How many ports below the ephemeral range are shared out.
const SPAN: u16 = 10_000;
/// Nothing is handed out below this (well-known and registered service ports).
const LOWEST: u16 = 10_000;

/// The lock files of the ports this process holds; dropping one would free its port.
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// A free TCP port on loopback (for services started as processes), reserved for this
/// process until it exits.
pub fn free_port() -> u16 {
    let Some((low, high)) = shared_range() else { return kernel_port() };
    let dir = lock_dir();
    std::fs::create_dir_all(&dir).expect("creating the port lock directory");
    let span = u64::from(high - low);
    let start = RandomState::new().hash_one(std::process::id()) % span;
    for step in 0..span {
        let port = low + u16::try_from((start + step) % span).expect("an offset inside the span");
        if let Some(lock) = reserve(&dir, port) {
            HELD.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(lock);
            return port;
        }
    }
    panic!("no free port in {low}..{high}");
}

/// The ports this process may share out: the `SPAN` below the kernel's ephemeral range.
fn shared_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let ephemeral_low: u16 = text.split_whitespace().next()?.parse().ok()?;
    let low = ephemeral_low.checked_sub(SPAN)?.max(LOWEST);
    (ephemeral_low > low + 100).then_some((low, ephemeral_low))
}

fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("opspilot-test-ports")
}

/// Takes `port` if no other process holds its lock and nothing listens on it.
fn reserve(dir: &std::path::Path, port: u16) -> Option<File> {
    let file =
        OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(port.to_string())).ok()?;
    file.try_lock().ok()?;
    // A server of a test that has just ended may still be going down on it.
    TcpListener::bind(("127.0.0.1", port)).ok()?;
    Some(file)
}

/// Where there is no ephemeral range to stay out of, the kernel's choice.
fn kernel_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_outside_the_ephemeral_range_and_never_handed_out_twice() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "a port was handed out twice: {ports:?}");
        if let Some((low, high)) = shared_range() {
            assert!(ports.iter().all(|p| (low..high).contains(p)), "{ports:?} outside {low}..{high}");
        }
        for port in ports {
            TcpListener::bind(("127.0.0.1", port)).expect("a reserved port can be bound");
        }
    }

    #[test]
    fn a_port_locked_by_another_holder_is_not_taken() {
        let (low, high) = shared_range().expect("Linux names its ephemeral range");
        let dir = lock_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        // A second open file description stands in for another process: flock locks
        // belong to the description, so this one is refused as another process's would be.
        assert!(reserve(&dir, port).is_none(), "port {port} was reserved twice");
        assert!((low..high).contains(&port));
    }
}
