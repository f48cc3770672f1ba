//! The secrets check: every secret the run hands out (JWT secret, passwords, enrollment
//! and bootstrap tokens, access tokens, NATS operator / account seeds, every service's
//! and agent's credential seed, the OpenRouter key) is registered here, and at the end
//! every file in the run directory (each process's stdout and stderr, the nats-server
//! logs, the tools' output) is searched for each of them. The secrets themselves are
//! never written to the run directory, and a leak is reported by label, not value.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;

/// Shortest value worth searching for (shorter ones would match by chance).
const MIN_LEN: usize = 12;

struct Secret {
    label: String,
    value: String,
}

/// The secrets handed out during a run; cheap to clone and share.
#[derive(Clone, Default)]
pub struct Secrets(Arc<Mutex<Vec<Secret>>>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets").field("count", &self.len()).finish_non_exhaustive()
    }
}

/// One secret found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leak {
    pub file: PathBuf,
    pub line: usize,
    pub label: String,
}

/// What the scan read and found.
#[derive(Debug, Default)]
pub struct ScanReport {
    pub secrets: usize,
    pub files: usize,
    pub lines: u64,
    pub bytes: u64,
    pub leaks: Vec<Leak>,
}

impl Secrets {
    /// Registers a secret (ignored when too short to search for meaningfully).
    pub fn add(&self, label: impl Into<String>, value: impl Into<String>) {
        let value = value.into();
        if value.len() < MIN_LEN {
            return;
        }
        // Held only to push; never across an await.
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !all.iter().any(|s| s.value == value) {
            all.push(Secret { label: label.into(), value });
        }
    }

    /// Registers the NKey seed inside a `.creds` file (the JWT next to it is public).
    pub fn add_creds(&self, label: &str, creds: &str) {
        for seed in creds_seeds(creds) {
            self.add(format!("{label} credentials seed"), seed);
        }
    }

    /// Registers every seed of a generated NATS security setup.
    pub fn add_auth_setup(&self, label: &str, setup: &natsbus::auth::AuthSetup) {
        self.add(format!("{label} operator seed"), &setup.operator_seed);
        self.add(format!("{label} operator signing seed"), &setup.operator_signing_seed);
        self.add(format!("{label} system account seed"), &setup.system_account_seed);
        self.add(format!("{label} account seed"), &setup.account_seed);
        self.add(format!("{label} account signing seed"), &setup.account_signing_seed);
        if let Some(seed) = &setup.agent_signing_seed {
            self.add(format!("{label} agent signing seed"), seed);
        }
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Labels of the registered secrets (for the report).
    pub fn labels(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).iter().map(|s| s.label.clone()).collect()
    }

    /// What kinds of secret were registered, with how many of each ("agent credentials
    /// seed x12"), for the report; labels are `{where} {what}`.
    pub fn kinds(&self) -> Vec<String> {
        let mut counts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
        for label in self.labels() {
            let what = label.split_once(' ').map_or(label.as_str(), |(_, what)| what);
            let kind = if what.starts_with("agent ") {
                "agent credentials seed".to_owned()
            } else if what.ends_with(".creds credentials seed") {
                "service credentials seed".to_owned()
            } else {
                what.to_owned()
            };
            *counts.entry(kind).or_default() += 1;
        }
        counts.into_iter().map(|(kind, n)| format!("{kind} x{n}")).collect()
    }

    /// Searches every file under `dir` for every registered secret.
    pub fn scan(&self, dir: &Path) -> anyhow::Result<ScanReport> {
        let secrets: Vec<(String, String)> = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|s| (s.label.clone(), s.value.clone()))
            .collect();
        let mut report = ScanReport { secrets: secrets.len(), ..ScanReport::default() };
        for file in files_under(dir)? {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            // Binary files (fuzz crash inputs) are searched as bytes too, lossily.
            let text = String::from_utf8_lossy(&bytes);
            report.files += 1;
            report.bytes += bytes.len() as u64;
            report.lines += text.lines().count() as u64;
            for (label, value) in &secrets {
                if !text.contains(value.as_str()) {
                    continue;
                }
                for (n, line) in text.lines().enumerate() {
                    if line.contains(value.as_str()) {
                        report.leaks.push(Leak { file: file.clone(), line: n + 1, label: label.clone() });
                    }
                }
            }
        }
        Ok(report)
    }
}

/// The seed lines (`SU...`, `SA...`, `SO...`) of a `.creds` file.
pub fn creds_seeds(creds: &str) -> Vec<String> {
    creds
        .lines()
        .map(str::trim)
        .filter(|line| {
            line.len() > 50 && line.starts_with('S') && line.chars().all(|c| c.is_ascii_alphanumeric())
        })
        .map(str::to_owned)
        .collect()
}

fn files_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err).with_context(|| format!("listing {}", dir.display())),
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_leak_is_reported_by_label_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.log"), "fine\nthe key is sk-or-v1-0123456789abcdef here\n")
            .unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b.log"), "nothing to see\n").unwrap();
        let secrets = Secrets::default();
        secrets.add("openrouter key", "sk-or-v1-0123456789abcdef");
        secrets.add("too short", "abc");
        let report = secrets.scan(dir.path()).unwrap();
        assert_eq!((report.secrets, report.files, report.lines), (1, 2, 3));
        assert_eq!(report.leaks.len(), 1);
        assert_eq!(report.leaks[0].line, 2);
        assert_eq!(report.leaks[0].label, "openrouter key");
        assert!(!format!("{secrets:?}").contains("sk-or"));
    }

    #[test]
    fn creds_files_yield_their_seed_only() {
        let creds = "-----BEGIN NATS USER JWT-----\neyJhbGciOi.eyJqdGkiOi.sig\n------END NATS USER JWT------\n\n\
                     -----BEGIN USER NKEY SEED-----\nSUAGMJH5XLGZKQQWAWKRZJIGMOU4HPFUYLXJMXOO5NLFEO2OJQEJEPEROQ\n\
                     ------END USER NKEY SEED------\n";
        assert_eq!(creds_seeds(creds), vec!["SUAGMJH5XLGZKQQWAWKRZJIGMOU4HPFUYLXJMXOO5NLFEO2OJQEJEPEROQ"]);
    }
}
