#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(unused_crate_dependencies, unreachable_pub)]

mod analysis;
mod audit;
mod credentials;
mod fleet;
mod labels;
mod ledger;
mod migrations;
mod pool;
mod presence;
mod redis;
mod retention;
