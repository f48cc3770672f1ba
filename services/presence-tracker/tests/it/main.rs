#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(unused_crate_dependencies, unreachable_pub)]

mod bad_input;
mod faults;
mod helpers;
mod hostile;
mod lifecycle;
mod presence;
mod replicas;
mod scale;
