//! The agent's side of the OpsPilot protocol (docs/PROTOCOL.md), shared by the real
//! agent (`agent/`) and the simulator (`tools/agent-sim`): enrollment over HTTP with
//! proof of possession of the agent's NKey, the agent's own NATS connection,
//! acknowledged publishes of heartbeats, events and inventory, and the protocol's
//! answer to a request it cannot accept. What goes on the wire is still defined by
//! `wire-models`; this crate only says how an agent sends it.

#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod bus;
pub mod enroll;
pub mod files;
pub mod rpc;

pub use bus::{Bus, BusError, connect};
pub use enroll::{EnrollClient, EnrollError, EnrollRequest, EnrollResponse, NatsCredentials, Proof};
