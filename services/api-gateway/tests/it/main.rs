#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(unused_crate_dependencies, unreachable_pub)]

mod account_security;
mod agents;
mod analysis;
mod auth;
mod bus_security;
mod docs;
mod enroll;
mod execute;
mod helpers;
mod hostile;
mod incidents;
mod lifecycle;
mod presence;
mod roles;
mod tracing;
