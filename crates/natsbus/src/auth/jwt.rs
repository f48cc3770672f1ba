//! NATS JWTs (version 2): `base64url(header).base64url(claims).base64url(ed25519 sig)`,
//! signed with NKeys.

use std::collections::BTreeMap;

use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use nkeys::KeyPair;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::Permissions;

const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("signing: {0}")]
    Sign(String),
    #[error("malformed token")]
    Malformed,
}

/// Signs claims (`jti` is filled in: a hash of the claims, as NATS tools do).
fn sign(mut claims: Value, signer: &KeyPair) -> Result<String, JwtError> {
    claims["jti"] = json!("");
    let digest = Sha256::digest(serde_json::to_vec(&claims).map_err(|e| JwtError::Sign(e.to_string()))?);
    claims["jti"] = json!(BASE32_NOPAD.encode(&digest));
    let body = format!(
        "{}.{}",
        BASE64URL_NOPAD.encode(HEADER.as_bytes()),
        BASE64URL_NOPAD.encode(&serde_json::to_vec(&claims).map_err(|e| JwtError::Sign(e.to_string()))?)
    );
    let signature = signer.sign(body.as_bytes()).map_err(|e| JwtError::Sign(e.to_string()))?;
    Ok(format!("{body}.{}", BASE64URL_NOPAD.encode(&signature)))
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The operator JWT (self-signed), naming the system account.
pub fn operator_jwt(
    name: &str,
    operator: &KeyPair,
    system_account: &str,
    signing_keys: &[String],
) -> Result<String, JwtError> {
    operator_jwt_at(name, operator, system_account, signing_keys, now())
}

/// [`operator_jwt`] with a fixed issue time.
pub fn operator_jwt_at(
    name: &str,
    operator: &KeyPair,
    system_account: &str,
    signing_keys: &[String],
    issued_at: i64,
) -> Result<String, JwtError> {
    let claims = json!({
        "iat": issued_at,
        "iss": operator.public_key(),
        "sub": operator.public_key(),
        "name": name,
        "nats": {
            "signing_keys": signing_keys,
            "system_account": system_account,
            "type": "operator",
            "version": 2,
        }
    });
    sign(claims, operator)
}

/// What an account JWT says; rebuilt identically (plus revocations) on every update.
#[derive(Debug, Clone)]
pub struct AccountSpec {
    pub name: String,
    pub public_key: String,
    pub signing_keys: Vec<String>,
    /// JetStream enabled (unlimited) for the account.
    pub jetstream: bool,
}

/// An account JWT signed by the operator (or an operator signing key). `revocations`
/// maps user public keys to a unix time: their JWTs issued before it stop working.
pub fn account_jwt(
    spec: &AccountSpec,
    operator_signer: &KeyPair,
    revocations: &BTreeMap<String, i64>,
) -> Result<String, JwtError> {
    account_jwt_at(spec, operator_signer, revocations, now())
}

/// [`account_jwt`] with a fixed issue time. The resolver keeps the newest JWT of an
/// account, so a configuration file regenerated with the setup's original time never
/// displaces an update (revocations) pushed since.
pub fn account_jwt_at(
    spec: &AccountSpec,
    operator_signer: &KeyPair,
    revocations: &BTreeMap<String, i64>,
    issued_at: i64,
) -> Result<String, JwtError> {
    let storage = if spec.jetstream { -1 } else { 0 };
    let mut nats = json!({
        "limits": {
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true,
            "conn": -1, "leaf": -1,
            "mem_storage": storage, "disk_storage": storage, "streams": -1, "consumer": -1,
        },
        "signing_keys": spec.signing_keys,
        "default_permissions": { "pub": {}, "sub": {} },
        "type": "account",
        "version": 2,
    });
    if !revocations.is_empty() {
        nats["revocations"] = json!(revocations);
    }
    let claims = json!({
        "iat": issued_at,
        "iss": operator_signer.public_key(),
        "sub": spec.public_key,
        "name": spec.name,
        "nats": nats,
    });
    sign(claims, operator_signer)
}

#[derive(Serialize)]
struct Rules<'a> {
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    allow: &'a [String],
}

/// A user JWT for `user_public_key` in `account`, signed by the account or one of its
/// signing keys, with `permissions` and an optional expiry (unix seconds).
pub fn user_jwt(
    name: &str,
    user_public_key: &str,
    account: &str,
    signer: &KeyPair,
    permissions: &Permissions,
    expires: Option<i64>,
) -> Result<String, JwtError> {
    let mut nats = json!({
        "pub": Rules { allow: &permissions.publish },
        "sub": Rules { allow: &permissions.subscribe },
        "subs": -1, "data": -1, "payload": -1,
        "type": "user",
        "version": 2,
    });
    if permissions.allow_responses {
        // One reply per request received, within the request's lifetime.
        nats["resp"] = json!({ "max": 1, "ttl": 0 });
    }
    if signer.public_key() != account {
        nats["issuer_account"] = json!(account);
    }
    let mut claims = json!({
        "iat": now(),
        "iss": signer.public_key(),
        "sub": user_public_key,
        "name": name,
        "nats": nats,
    });
    if let Some(exp) = expires {
        claims["exp"] = json!(exp);
    }
    sign(claims, signer)
}

/// The claims of a JWT, unverified (for inspection and tests).
pub fn decode_claims(jwt: &str) -> Result<Value, JwtError> {
    let payload = jwt.split('.').nth(1).ok_or(JwtError::Malformed)?;
    let bytes = BASE64URL_NOPAD.decode(payload.as_bytes()).map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)
}

/// A credentials file: the user JWT and the NKey seed, in the format NATS clients read.
pub fn creds_file(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_jwts_verify_with_the_signers_key() {
        let account = KeyPair::new_account();
        let signing = KeyPair::new_account();
        let user = KeyPair::new_user();
        let perms =
            Permissions { publish: vec!["a.>".into()], subscribe: vec!["b".into()], allow_responses: true };
        let jwt =
            user_jwt("u", &user.public_key(), &account.public_key(), &signing, &perms, Some(4_000_000_000))
                .unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let signature = BASE64URL_NOPAD.decode(parts[2].as_bytes()).unwrap();
        signing.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature).unwrap();
        let claims = decode_claims(&jwt).unwrap();
        assert_eq!(claims["sub"], user.public_key());
        assert_eq!(claims["nats"]["issuer_account"], account.public_key());
        assert_eq!(claims["nats"]["pub"]["allow"][0], "a.>");
        assert_eq!(claims["nats"]["resp"]["max"], 1);
        assert_eq!(claims["exp"], 4_000_000_000i64);
        assert!(!claims["jti"].as_str().unwrap().is_empty());
    }

    #[test]
    fn creds_files_carry_both_parts() {
        let text = creds_file("eyJ.x.y", "SUABC");
        assert!(text.contains("BEGIN NATS USER JWT-----\neyJ.x.y\n"));
        assert!(text.contains("BEGIN USER NKEY SEED-----\nSUABC\n"));
    }
}
