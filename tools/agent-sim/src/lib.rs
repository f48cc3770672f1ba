//! Simulated OpsPilot agents. Tests, the demo (`make run`) and the benchmarks drive
//! the system through this crate: it speaks the wire protocol exactly as a real agent
//! must (see docs/PROTOCOL.md).

#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod agent;
mod bus;
pub mod cli;
pub mod enroll;
mod fleet;

pub use agent::SimAgent;
pub use bus::Bus;
pub use fleet::{Fleet, FleetConfig, FleetStats, RpcBehaviour, RpcMode};
