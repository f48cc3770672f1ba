//! The host's inventory, read from the host itself: `/etc/os-release`, the kernel
//! (uname), systemd units and their states (`systemctl list-units`), installed
//! packages (dpkg's status file) and the configured labels; cut to the protocol's size
//! limit when a host has more than fits.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Map, Value, json};
use wire_models::{
    AgentId, Inventory, InventoryReport, OsInfo, PROTOCOL_VERSION, PackageInfo, ServiceInfo, WireMessage as _,
};

use crate::config::Config;
use crate::exec;

/// Collects a snapshot of this host, cut to fit the protocol's size limit (what was
/// left out, if anything, is the second value).
pub async fn collect(
    config: &Config,
    agent_id: &AgentId,
    hostname: &str,
) -> (InventoryReport, Option<Truncation>) {
    let services = units(&config.actions.systemctl).await;
    let (os_release, dpkg_status) = (config.host.os_release.clone(), config.host.dpkg_status.clone());
    // Parsing a dpkg status file of a few thousand packages is file I/O and a few ms of
    // CPU: not on the runtime's thread.
    let (os, packages) = tokio::task::spawn_blocking(move || (os_info(&os_release), packages(&dpkg_status)))
        .await
        .unwrap_or_else(|_| (unknown_os(), Vec::new()));
    let packages = if packages.is_empty() { rpm_packages(&config.host.rpm).await } else { packages };
    let meta: Map<String, Value> =
        config.labels.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    let report = InventoryReport {
        v: PROTOCOL_VERSION,
        agent_id: agent_id.clone(),
        collected_at: Utc::now(),
        snapshot: Inventory {
            hostname: hostname.to_owned(),
            os,
            services,
            packages,
            meta,
            extra: Map::new(),
        },
    };
    // What is sent should cutting ever panic: the host without its lists.
    let mut bare = InventoryReport {
        v: report.v,
        agent_id: report.agent_id.clone(),
        collected_at: report.collected_at,
        snapshot: Inventory {
            hostname: report.snapshot.hostname.clone(),
            os: report.snapshot.os.clone(),
            services: Vec::new(),
            packages: Vec::new(),
            meta: report.snapshot.meta.clone(),
            extra: Map::new(),
        },
    };
    // Encoding a large snapshot (several times when it must be cut) is milliseconds of
    // CPU: not on the runtime's thread.
    tokio::task::spawn_blocking(move || {
        let mut report = report;
        let truncation = fit(&mut report, InventoryReport::MAX_BYTES);
        (report, truncation)
    })
    .await
    .unwrap_or_else(|_| {
        let truncation = fit(&mut bare, InventoryReport::MAX_BYTES);
        (bare, truncation)
    })
}

/// Name of the snapshot key that marks a cut snapshot (docs/PROTOCOL.md, 5.3).
pub const TRUNCATED_KEY: &str = "truncated";

/// What [`fit`] left out: how many packages and units were kept of how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncation {
    pub packages_kept: usize,
    pub packages_total: usize,
    pub services_kept: usize,
    pub services_total: usize,
}

/// Room kept for the `truncated` marker itself.
const MARKER_ROOM: usize = 160;

/// Cuts `report` until it encodes to at most `max` bytes: the package list first, then
/// the units, each keeping the longest prefix that fits (the same host gives the same
/// snapshot, so the same hash), and marks the snapshot with what was kept of how many
/// (`snapshot.truncated`). Returns None when it fitted whole.
pub fn fit(report: &mut InventoryReport, max: usize) -> Option<Truncation> {
    let encoded = |report: &InventoryReport| serde_json::to_vec(report).map_or(usize::MAX, |b| b.len());
    let size = encoded(report);
    if size <= max {
        return None;
    }
    let (packages_total, services_total) = (report.snapshot.packages.len(), report.snapshot.services.len());
    // Each entry costs its own encoding and a comma; the rest of the report is fixed.
    let entry = |json: Result<Vec<u8>, serde_json::Error>| json.map_or(0, |b| b.len()) + 1;
    let package_sizes: Vec<usize> =
        report.snapshot.packages.iter().map(|p| entry(serde_json::to_vec(p))).collect();
    let service_sizes: Vec<usize> =
        report.snapshot.services.iter().map(|s| entry(serde_json::to_vec(s))).collect();
    let fixed =
        size.saturating_sub(package_sizes.iter().sum::<usize>() + service_sizes.iter().sum::<usize>());
    let mut room = max.saturating_sub(fixed + MARKER_ROOM);
    let services_fit: usize = service_sizes.iter().sum();
    let packages_kept =
        if services_fit <= room { prefix_within(&package_sizes, room - services_fit) } else { 0 };
    report.snapshot.packages.truncate(packages_kept);
    room = room.saturating_sub(package_sizes[..packages_kept].iter().sum());
    let services_kept = prefix_within(&service_sizes, room);
    report.snapshot.services.truncate(services_kept);
    let mut truncation = Truncation { packages_kept, packages_total, services_kept, services_total };
    loop {
        report.snapshot.extra.insert(TRUNCATED_KEY.to_owned(), truncation.marker());
        // The estimate is exact but for rounding; make sure, one entry at a time.
        if encoded(report) <= max {
            return Some(truncation);
        }
        if report.snapshot.packages.pop().is_some() {
            truncation.packages_kept -= 1;
        } else if report.snapshot.services.pop().is_some() {
            truncation.services_kept -= 1;
        } else {
            return Some(truncation);
        }
    }
}

/// How many of the first entries fit in `room` bytes.
fn prefix_within(sizes: &[usize], room: usize) -> usize {
    let mut used = 0;
    sizes
        .iter()
        .take_while(|&&size| {
            used += size;
            used <= room
        })
        .count()
}

impl Truncation {
    fn marker(&self) -> Value {
        json!({
            "packages": {"kept": self.packages_kept, "total": self.packages_total},
            "services": {"kept": self.services_kept, "total": self.services_total},
        })
    }
}

fn unknown_os() -> OsInfo {
    OsInfo { name: "Linux".into(), version: String::new(), kernel: None, arch: None }
}

/// The OS from os-release, the kernel and architecture from uname.
pub fn os_info(os_release: &Path) -> OsInfo {
    let fields = std::fs::read_to_string(os_release).map(|t| parse_os_release(&t)).unwrap_or_default();
    let uname = rustix::system::uname();
    let text = |s: &std::ffi::CStr| Some(clean(&s.to_string_lossy(), 128)).filter(|s| !s.is_empty());
    OsInfo {
        name: fields
            .get("NAME")
            .map(|n| clean(n, 128))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "Linux".into()),
        version: fields
            .get("VERSION_ID")
            .or(fields.get("VERSION"))
            .map(|v| clean(v, 128))
            .unwrap_or_default(),
        kernel: text(uname.release()),
        arch: text(uname.machine()).map(|a| clean(&a, 32)),
    }
}

/// `KEY=value` lines, values optionally quoted (os-release(5)).
pub fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.trim().split_once('=')?;
            if key.starts_with('#') {
                return None;
            }
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            Some((key.to_owned(), value.replace("\\\"", "\"")))
        })
        .collect()
}

/// Longest package version the protocol accepts, in bytes.
const MAX_VERSION: usize = 128;

/// Installed packages from dpkg's status file (none where there is no dpkg).
pub fn packages(dpkg_status: &Path) -> Vec<PackageInfo> {
    std::fs::read_to_string(dpkg_status).map(|t| parse_dpkg_status(&t)).unwrap_or_default()
}

/// The packages whose status is `install ok installed`, by name.
pub fn parse_dpkg_status(text: &str) -> Vec<PackageInfo> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let (mut name, mut version, mut installed, mut arch) = (None, None, false, None);
        for line in stanza.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Architecture: ") {
                arch = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Status: ") {
                installed = v.trim().ends_with(" installed");
            }
        }
        if let (Some(name), Some(version), true) = (name, version, installed) {
            // Multi-arch packages appear once per architecture; the name says which.
            let name = match arch {
                Some(arch) if arch != "all" && out.iter().any(|p: &PackageInfo| p.name == name) => {
                    format!("{name}:{arch}")
                }
                _ => name.to_owned(),
            };
            out.push(PackageInfo { name: clean(&name, 256), version: clean(version, MAX_VERSION) });
        }
        if out.len() >= 20_000 {
            break;
        }
    }
    out
}

/// Installed packages from rpm, on hosts that have it and no dpkg.
pub async fn rpm_packages(rpm: &Path) -> Vec<PackageInfo> {
    if !rpm.exists() {
        return Vec::new();
    }
    let args = ["-qa", "--queryformat", "%{NAME}\\t%{VERSION}-%{RELEASE}\\n"];
    match exec::run(rpm, &args, Duration::from_secs(30), 8 << 20).await {
        Ok(out) if out.exit_code == Some(0) => parse_rpm(&out.stdout),
        Ok(out) => {
            tracing::debug!(exit_code = ?out.exit_code, "rpm -qa failed; no packages reported");
            Vec::new()
        }
        Err(err) => {
            tracing::debug!(error = %err, "rpm unavailable; no packages reported");
            Vec::new()
        }
    }
}

/// `name<TAB>version-release` lines, sorted by name.
pub fn parse_rpm(text: &str) -> Vec<PackageInfo> {
    let mut out: Vec<PackageInfo> = text
        .lines()
        .filter_map(|line| {
            let (name, version) = line.split_once('\t')?;
            (!name.trim().is_empty())
                .then(|| PackageInfo { name: clean(name, 256), version: clean(version, MAX_VERSION) })
        })
        .take(20_000)
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Service units and their sub-states (`running`, `exited`, `failed`, ...); none when
/// there is no systemd.
pub async fn units(systemctl: &Path) -> Vec<ServiceInfo> {
    let args = ["list-units", "--type=service", "--all", "--no-legend", "--no-pager", "--plain"];
    match exec::run(systemctl, &args, Duration::from_secs(10), 4 << 20).await {
        Ok(out) if out.exit_code == Some(0) => parse_units(&out.stdout),
        Ok(out) => {
            tracing::debug!(exit_code = ?out.exit_code, "systemctl list-units failed; no services reported");
            Vec::new()
        }
        Err(err) => {
            tracing::debug!(error = %err, "systemctl unavailable; no services reported");
            Vec::new()
        }
    }
}

/// `UNIT LOAD ACTIVE SUB DESCRIPTION` lines; the unit's sub-state, or `failed` when
/// the unit as a whole has failed.
pub fn parse_units(text: &str) -> Vec<ServiceInfo> {
    text.lines()
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let mut unit = cols.next()?;
            // Without --plain (or from an older systemctl) failed units carry a bullet.
            if unit == "●" {
                unit = cols.next()?;
            }
            let (_load, active, sub) = (cols.next()?, cols.next()?, cols.next()?);
            let name = unit.strip_suffix(".service").unwrap_or(unit);
            if name.is_empty() {
                return None;
            }
            let state = if active == "failed" { "failed" } else { sub };
            Some(ServiceInfo { name: clean(name, 256), state: clean(state, 64) })
        })
        .take(4096)
        .collect()
}

/// A host string made safe for the wire: no control characters, at most `max` bytes.
pub fn clean(s: &str, max: usize) -> String {
    let cleaned: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    agent_client::rpc::truncate(cleaned.trim(), max).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_values_are_unquoted() {
        let fields = parse_os_release(
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n\
             NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\n# c\nID=debian\n",
        );
        assert_eq!(fields["NAME"], "Debian GNU/Linux");
        assert_eq!(fields["VERSION_ID"], "12");
        assert_eq!(fields["ID"], "debian");
    }

    #[test]
    fn only_installed_packages_are_listed() {
        let status = "Package: openssl\nStatus: install ok installed\nArchitecture: amd64\n\
                      Version: 3.0.15-1~deb12u1\nDescription: x\n continued\n\n\
                      Package: removed\nStatus: deinstall ok config-files\nVersion: 1.0\n\n\
                      Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36-9\n\n\
                      Package: libc6\nStatus: install ok installed\nArchitecture: i386\nVersion: 2.36-9\n";
        let packages = parse_dpkg_status(status);
        let names: Vec<_> = packages.iter().map(|p| (p.name.as_str(), p.version.as_str())).collect();
        assert_eq!(names, [("openssl", "3.0.15-1~deb12u1"), ("libc6", "2.36-9"), ("libc6:i386", "2.36-9")]);
    }

    #[test]
    fn rpm_packages_are_read_from_its_query_format() {
        let packages = parse_rpm("openssl\t3.0.7-27.el9\nbash\t5.1.8-9.el9\nbroken line\n");
        let got: Vec<_> = packages.iter().map(|p| (p.name.as_str(), p.version.as_str())).collect();
        assert_eq!(got, [("bash", "5.1.8-9.el9"), ("openssl", "3.0.7-27.el9")]);
    }

    #[test]
    fn units_report_their_state() {
        let text = "cron.service loaded active running Regular background program processing daemon\n\
                    ● nginx.service loaded failed failed A high performance web server\n\
                    ssh.service loaded inactive dead OpenBSD Secure Shell server\n";
        let units = parse_units(text);
        let got: Vec<_> = units.iter().map(|u| (u.name.as_str(), u.state.as_str())).collect();
        assert_eq!(got, [("cron", "running"), ("nginx", "failed"), ("ssh", "dead")]);
    }

    fn report(packages: usize, services: usize, name_len: usize) -> InventoryReport {
        let name = |i: usize, what: &str| format!("{what}-{i:05}-{}", "x".repeat(name_len));
        InventoryReport {
            v: PROTOCOL_VERSION,
            agent_id: AgentId::parse("a1b2c3d4e5f6").unwrap(),
            collected_at: Utc::now(),
            snapshot: Inventory {
                hostname: "big-host".into(),
                os: unknown_os(),
                services: (0..services)
                    .map(|i| ServiceInfo { name: name(i, "unit"), state: "running".into() })
                    .collect(),
                packages: (0..packages)
                    .map(|i| PackageInfo { name: name(i, "package"), version: "1.0.0-1".into() })
                    .collect(),
                meta: Map::new(),
                extra: Map::new(),
            },
        }
    }

    #[test]
    fn a_huge_package_list_is_cut_to_the_protocols_limit_the_same_way_every_time() {
        let max = InventoryReport::MAX_BYTES;
        let big = report(20_000, 300, 200);
        assert!(wire_models::encode(&big).unwrap().len() > 4 * max, "well over the limit");
        let (mut first, mut second) = (big.clone(), big.clone());
        let truncation = fit(&mut first, max).expect("cut");
        fit(&mut second, max);
        assert_eq!(first.snapshot_hash(), second.snapshot_hash(), "the same host, the same snapshot");

        let bytes = wire_models::encode(&first).unwrap();
        assert!(bytes.len() <= max && bytes.len() > max - 1024, "{} bytes: filled, not over", bytes.len());
        let decoded: InventoryReport = wire_models::decode(&bytes).expect("the backend accepts it");
        assert_eq!(decoded.snapshot.services, big.snapshot.services, "units kept while packages fit");
        let kept = decoded.snapshot.packages.len();
        assert!(kept > 0 && kept < 20_000);
        assert_eq!(decoded.snapshot.packages[..], big.snapshot.packages[..kept], "a prefix, in order");
        assert_eq!(
            truncation,
            Truncation {
                packages_kept: kept,
                packages_total: 20_000,
                services_kept: 300,
                services_total: 300
            }
        );
        assert_eq!(
            decoded.snapshot.extra[TRUNCATED_KEY],
            json!({"packages": {"kept": kept, "total": 20_000}, "services": {"kept": 300, "total": 300}})
        );
    }

    #[test]
    fn units_are_cut_only_once_no_package_is_left() {
        let max = InventoryReport::MAX_BYTES;
        let mut huge = report(10, 4096, 240);
        let truncation = fit(&mut huge, max).expect("cut");
        assert_eq!((truncation.packages_kept, truncation.packages_total), (0, 10));
        assert!(truncation.services_kept > 0 && truncation.services_kept < 4096);
        let bytes = wire_models::encode(&huge).unwrap();
        assert!(bytes.len() <= max);
        wire_models::decode::<InventoryReport>(&bytes).unwrap();
    }

    #[test]
    fn an_inventory_that_fits_is_sent_whole_and_unmarked() {
        let mut small = report(1000, 100, 10);
        let before = small.clone();
        assert_eq!(fit(&mut small, InventoryReport::MAX_BYTES), None);
        assert_eq!(small, before);
        assert!(!small.snapshot.extra.contains_key(TRUNCATED_KEY));
    }

    #[test]
    fn long_package_versions_are_cut_to_what_the_protocol_accepts() {
        let long = "9".repeat(300);
        let status = format!("Package: odd\nStatus: install ok installed\nVersion: {long}\n");
        assert_eq!(parse_dpkg_status(&status)[0].version.len(), MAX_VERSION);
    }

    #[test]
    fn this_hosts_os_is_read() {
        let os = os_info(Path::new("/etc/os-release"));
        assert!(!os.name.is_empty());
        assert!(os.kernel.is_some() && os.arch.is_some());
    }
}
