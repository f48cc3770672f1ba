//! The agent binary against the real stack: a gateway process to enroll with, the
//! stack's NATS and JetStream, and this machine's real host facts.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(unused_crate_dependencies, unreachable_pub)]

mod agent;
