//! `opspilot-agent`, the OpsPilot agent for Linux hosts and the reference
//! implementation of docs/PROTOCOL.md. The protocol's mechanics (enrollment requests,
//! acknowledged publishes) come from `agent-client`, shared with the simulator; this
//! crate adds what a real host needs: configuration, the state directory, host
//! inventory, event sources, the on-disk spool and allow-listed actions.

#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod actions;
pub mod cli;
pub mod conditions;
pub mod config;
pub mod enroll;
pub mod events;
pub mod exec;
pub mod inventory;
pub mod oom;
pub mod run;
pub mod spool;
pub mod state;
