#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(unused_crate_dependencies, unreachable_pub)]

mod auth;
mod bus_limits;
mod connect;
mod deadletter;
mod feed;
mod topology;
