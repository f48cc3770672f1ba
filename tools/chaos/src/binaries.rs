//! Where the service binaries under test are: next to the running executable
//! (`target/release/opspilot-chaos` runs `target/release/event-ingestor`; a test in
//! `target/debug/deps/` runs `target/debug/...`), or in a directory given explicitly.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The binaries every scenario starts.
pub const SERVICES: &[&str] = &["api-gateway", "event-ingestor", "presence-tracker", "ai-analyzer"];

/// A directory holding the four service binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    /// `dir`, or the running executable's own target directory when `None`.
    pub fn locate(dir: Option<&Path>) -> anyhow::Result<Self> {
        let dir = match dir {
            Some(dir) => dir.to_path_buf(),
            None => {
                let exe = std::env::current_exe().context("finding the running executable")?;
                let parent = exe.parent().context("the executable has no directory")?;
                // Test executables live one level down, in `deps/`.
                if parent.file_name().is_some_and(|name| name == "deps") {
                    parent.parent().context("deps/ has no parent")?.to_path_buf()
                } else {
                    parent.to_path_buf()
                }
            }
        };
        for name in SERVICES {
            let path = dir.join(name);
            anyhow::ensure!(
                path.is_file(),
                "{} is not built; run `cargo build --workspace --bins` (add --release for a release run) \
                 or pass --bin-dir",
                path.display()
            );
        }
        Ok(Self { dir })
    }

    /// The path of one binary.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
