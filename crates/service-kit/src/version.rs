//! What a binary was built from: the workspace version and the git revision (captured by
//! `build.rs`; "unknown" when the build had neither git nor `OPSPILOT_GIT_REVISION`).

/// The workspace version, e.g. `0.1.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git revision, e.g. `20664f4`.
pub const REVISION: &str = env!("OPSPILOT_BUILD_REVISION");

/// What `--version` prints after the binary's name, e.g. `0.1.0 (20664f4)`.
pub const FULL: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("OPSPILOT_BUILD_REVISION"), ")");
