//! Answers every agent owes the protocol whatever it runs (docs/PROTOCOL.md, 5.5).

use std::time::Instant;

use uuid::Uuid;
use wire_models::{PROTOCOL_VERSION, RpcError, RpcReply, RpcStatus};

/// The reply to a message on the RPC subject that could not be decoded or validated:
/// nothing runs, and the caller learns why. The request id is echoed when it can be
/// read at all, so the caller can match; otherwise it is the nil UUID.
pub fn bad_request(payload: &[u8], reason: &str) -> RpcReply {
    let request_id = serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get("request_id")?.as_str()?.parse().ok())
        .unwrap_or(Uuid::nil());
    let mut reply = error(request_id, "bad_request", reason, None, Instant::now());
    reply.duration_ms = 0;
    reply
}

/// An error reply, its message cut to what the protocol allows.
pub fn error(
    request_id: Uuid,
    code: &str,
    message: &str,
    exit_code: Option<i32>,
    started: Instant,
) -> RpcReply {
    RpcReply {
        v: PROTOCOL_VERSION,
        request_id,
        status: RpcStatus::Error,
        output: None,
        exit_code,
        error: Some(RpcError {
            code: code.to_owned(),
            message: truncate(message, MAX_ERROR_MESSAGE).to_owned(),
        }),
        duration_ms: elapsed_ms(started),
    }
}

/// A successful reply, its output cut to what the protocol allows.
pub fn ok(request_id: Uuid, output: &str, exit_code: Option<i32>, started: Instant) -> RpcReply {
    RpcReply {
        v: PROTOCOL_VERSION,
        request_id,
        status: RpcStatus::Ok,
        output: Some(truncate(output, MAX_OUTPUT).to_owned()),
        exit_code,
        error: None,
        duration_ms: elapsed_ms(started),
    }
}

/// Largest `output` of a reply, in bytes.
pub const MAX_OUTPUT: usize = 65_536;
/// Largest `error.message` of a reply, in bytes.
pub const MAX_ERROR_MESSAGE: usize = 4096;

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_request_echoes_a_readable_request_id() {
        let id = Uuid::now_v7();
        let reply = bad_request(format!(r#"{{"request_id":"{id}","command":"shell"}}"#).as_bytes(), "no");
        assert_eq!(reply.request_id, id);
        assert_eq!(reply.error.as_ref().map(|e| e.code.as_str()), Some("bad_request"));
        assert_eq!(bad_request(b"\xff", "no").request_id, Uuid::nil());
        wire_models::decode::<RpcReply>(&wire_models::encode(&reply).unwrap()).unwrap();
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
        let long = "é".repeat(MAX_OUTPUT);
        let reply = ok(Uuid::nil(), &long, Some(0), Instant::now());
        assert!(reply.output.unwrap().len() <= MAX_OUTPUT);
    }
}
