#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(unused_crate_dependencies, unreachable_pub)]

mod analyze;
mod auto;
mod helpers;
mod lifecycle;
mod notify;
mod replicas;
mod trace;
