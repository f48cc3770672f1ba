//! Captures the git revision the binaries are built from, for `--version` and
//! `opspilot_build_info`. `OPSPILOT_GIT_REVISION` wins when set: image builds have no
//! `.git` in their context and pass the revision in instead. Without either, "unknown".

use std::path::{Path, PathBuf};
use std::process::Command;

const OVERRIDE: &str = "OPSPILOT_GIT_REVISION";

fn main() {
    println!("cargo:rerun-if-env-changed={OVERRIDE}");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let revision = match std::env::var(OVERRIDE) {
        Ok(given) if !given.trim().is_empty() => checked(given.trim()),
        _ => {
            watch_head(&manifest_dir);
            git(&manifest_dir, &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
        }
    };
    println!("cargo:rustc-env=OPSPILOT_BUILD_REVISION={revision}");
}

/// The revision ends up in a Prometheus label and a `--version` line: refuse what
/// would garble either rather than escape it.
fn checked(revision: &str) -> String {
    let fits =
        revision.len() <= 64 && revision.chars().all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c));
    assert!(fits, "{OVERRIDE}={revision:?}: expected a git revision (letters, digits, . _ - +; at most 64)");
    revision.to_owned()
}

/// Re-runs this script when HEAD moves: a commit, a checkout or a `git pack-refs`.
/// Only paths that exist are named, since cargo re-runs on every build for a missing
/// one; a branch whose ref is packed is watched through its directory, where the next
/// commit writes it.
fn watch_head(dir: &Path) {
    let mut watched: Vec<PathBuf> = ["HEAD", "packed-refs"]
        .into_iter()
        .filter_map(|name| git(dir, &["rev-parse", "--git-path", name]))
        .map(|file| dir.join(file))
        .filter(|path| path.exists())
        .collect();
    let branch = git(dir, &["symbolic-ref", "-q", "HEAD"])
        .and_then(|branch| git(dir, &["rev-parse", "--git-path", &branch]))
        .map(|file| dir.join(file));
    if let Some(branch) = branch {
        match branch.parent() {
            _ if branch.exists() => watched.push(branch),
            Some(parent) if parent.exists() => watched.push(parent.to_path_buf()),
            _ => {}
        }
    }
    for path in watched {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}
