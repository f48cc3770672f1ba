#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(unused_crate_dependencies, unreachable_pub)]

mod announce;
mod bad_input;
mod dedup;
mod faults;
mod helpers;
mod hostile;
mod inventory;
mod lifecycle;
mod maintenance;
mod scale;
mod tracing;
