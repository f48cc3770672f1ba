//! The agent's side of NATS lives in `agent-client`, shared with the real agent; the
//! simulator speaks through the same code.

pub use agent_client::Bus;
