//! What an agent signs to prove, when it enrolls again, that it holds the NKey the
//! backend has on record for it (docs/PROTOCOL.md, section 3.1).

use crate::sha256_hex;

/// The first line of every signed proof, naming what the signature is for: a
/// signature made for anything else (a NATS connect nonce, say) never verifies here.
pub const ENROLL_PROOF_CONTEXT: &str = "opspilot-enroll-v1";

/// The bytes an agent signs with the seed of its key on record:
///
/// ```text
/// opspilot-enroll-v1\n{nonce}\n{sha256 hex of the trimmed fingerprint}\n{nats_public_key or empty}
/// ```
///
/// The nonce comes from `POST /api/v1/agents/enroll/challenge` and is good once; the
/// fingerprint and the requested key are in the message, so a captured proof cannot
/// be replayed for another machine or to obtain credentials for another key.
pub fn enroll_proof_message(
    nonce: &str,
    machine_fingerprint: &str,
    nats_public_key: Option<&str>,
) -> Vec<u8> {
    format!(
        "{ENROLL_PROOF_CONTEXT}\n{nonce}\n{}\n{}",
        sha256_hex(machine_fingerprint.trim().as_bytes()),
        nats_public_key.unwrap_or("")
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_binds_nonce_machine_and_key() {
        let message = enroll_proof_message("n0nce", " machine-1 ", Some("UABC"));
        let text = String::from_utf8(message).unwrap();
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines[0], ENROLL_PROOF_CONTEXT);
        assert_eq!(lines[1], "n0nce");
        assert_eq!(lines[2], sha256_hex(b"machine-1"));
        assert_eq!(lines[3], "UABC");
        assert_ne!(
            enroll_proof_message("n0nce", "machine-1", None),
            enroll_proof_message("n0nce", "machine-1", Some("UABC"))
        );
    }
}
