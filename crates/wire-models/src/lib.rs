//! The OpsPilot agent protocol as types.
//!
//! Everything that crosses NATS is defined here and only here: the validated
//! [`AgentId`], the subject builders and parsers ([`Subjects`]), the messages agents
//! send ([`Heartbeat`], [`Event`], [`InventoryReport`]), the RPC envelope
//! ([`RpcRequest`], [`RpcReply`]) with its command allow-list ([`Command`]), and the
//! backend's own messages ([`IncidentCreated`], [`PresenceChanged`],
//! [`AnalyzeRequest`], [`AnalyzeReply`]).
//!
//! Decoding goes through [`decode`], which enforces a size limit, the protocol
//! version and each message's own validation, and never panics on arbitrary bytes.

#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod agent_id;
mod canonical;
mod codec;
mod command;
mod enrollment;
mod labels;
mod messages;
mod subjects;
mod text;

pub use agent_id::{AgentId, AgentIdError};
pub use canonical::{canonical_json, sha256_hex};
pub use codec::{DecodeError, EncodeError, WireMessage, decode, encode};
pub use command::{Command, CommandError, CommandName, LogPath, ServiceName};
pub use enrollment::{ENROLL_PROOF_CONTEXT, enroll_proof_message};
pub use labels::{
    LabelError, LabelSelector, MAX_LABELS, Requirement, check_key as check_label_key,
    check_value as check_label_value, effective_labels,
};
pub use messages::{
    ActionFinished, AnalyzeOutcome, AnalyzeReply, AnalyzeRequest, Event, EventKind, FleetActionProgress,
    Heartbeat, IncidentChange, IncidentCreated, IncidentUpdated, Inventory, InventoryReport, OsInfo,
    PackageInfo, PresenceChanged, PresenceState, RpcError, RpcReply, RpcRequest, RpcStatus, ServiceInfo,
    Severity,
};
pub use subjects::{AgentPatterns, AgentSubject, DlqOrigin, SubjectError, SubjectRoot, Subjects};

/// The protocol version this backend speaks. Every message carries it in `v`.
pub const PROTOCOL_VERSION: u16 = 1;

/// Header carrying the event id, so JetStream de-duplicates re-publishes.
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";
/// W3C trace context, carried on every message so one trace spans services.
pub const HEADER_TRACEPARENT: &str = "traceparent";
/// W3C trace state companion of `traceparent`.
pub const HEADER_TRACESTATE: &str = "tracestate";
/// Why a message was parked in the dead-letter stream (a stable code).
pub const HEADER_DLQ_REASON: &str = "Opspilot-Dlq-Reason";
/// Human-readable detail of the dead-letter reason.
pub const HEADER_DLQ_DETAIL: &str = "Opspilot-Dlq-Detail";
/// The subject the dead-lettered message was originally published on.
pub const HEADER_DLQ_SUBJECT: &str = "Opspilot-Dlq-Subject";
/// The stream sequence of the dead-lettered message in its original stream.
pub const HEADER_DLQ_SEQUENCE: &str = "Opspilot-Dlq-Sequence";
/// Set when the letter does not carry the whole original payload: `truncated` (the
/// first bytes only) or `omitted` (the agent's dead-letter budget was used up).
pub const HEADER_DLQ_PAYLOAD: &str = "Opspilot-Dlq-Payload";
/// The original payload's size in bytes, when the letter does not carry all of it.
pub const HEADER_DLQ_ORIGINAL_SIZE: &str = "Opspilot-Dlq-Original-Size";
