//! `make chaos`: OpsPilot broken on purpose, with the books kept.
//!
//! Eight fault scenarios run the service binaries as processes against a private stack
//! while simulated agents publish under load, and end in an exact accounting
//! (published, acknowledged, stored, dead-lettered, nothing lost, nothing twice). Then
//! hostile agents on the bus (a flooder with its own credentials beside good agents,
//! and identity takeover attempts through enrollment), hostile input where it enters
//! (a hand-written HTTP set and schemathesis against the gateway; the NATS corpus lives
//! in the services' own tests), a stable-toolchain fuzzer over every wire-models
//! parser, and a search of every log line the run produced for every secret it handed
//! out.

#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod accounting;
pub mod binaries;
pub mod cluster;
pub mod fuzz;
pub mod hostile;
pub mod http;
pub mod load;
pub mod mock_ai;
pub mod proc;
pub mod runner;
pub mod scenarios;
pub mod secrets;
