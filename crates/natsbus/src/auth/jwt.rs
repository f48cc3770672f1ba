//! NATS JWTs (version 2): `base64url(header).base64url(claims).base64url(ed25519 sig)`,
//! signed with NKeys.

use std::collections::BTreeMap;

use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use nkeys::KeyPair;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::Permissions;
use crate::Topology;

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

/// What an account JWT says; rebuilt identically (plus revocations) on every update,
/// so it holds only public keys and limits and can be handed to the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AccountSpec {
    pub name: String,
    pub public_key: String,
    /// Signing keys that sign the backend services' credentials (no scope).
    pub signing_keys: Vec<String>,
    /// The key that signs agents' credentials. It is scoped: whatever a user JWT it
    /// signed asks for, the server grants exactly the agent template (see
    /// [`super::agent_template`]), so holding it cannot mint a service identity.
    #[serde(default)]
    pub agent_signing_key: Option<String>,
    /// JetStream storage for the account; `None` disables JetStream.
    pub jetstream: Option<JetStreamLimits>,
}

/// Account-wide JetStream limits: with every stream bounded (`max_bytes_required`),
/// the account can never hold more than this, whoever publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct JetStreamLimits {
    pub disk_bytes: i64,
    pub memory_bytes: i64,
}

impl JetStreamLimits {
    /// 32 GiB on disk (the default streams reserve about 8.3 GiB a replica, 25 GiB at
    /// three replicas), 1 GiB in memory.
    pub const DEFAULT: JetStreamLimits =
        JetStreamLimits { disk_bytes: 32 * 1024 * 1024 * 1024, memory_bytes: 1024 * 1024 * 1024 };
}

/// An account JWT signed by the operator (or an operator signing key). `revocations`
/// maps user public keys to a unix time: their JWTs issued before it stop working.
/// `topology` fills in the agent template of the scoped signing key.
pub fn account_jwt(
    spec: &AccountSpec,
    topology: &Topology,
    operator_signer: &KeyPair,
    revocations: &BTreeMap<String, i64>,
) -> Result<String, JwtError> {
    account_jwt_at(spec, topology, operator_signer, revocations, now())
}

/// [`account_jwt`] with a fixed issue time. The resolver keeps the newest JWT of an
/// account, so a configuration file regenerated with the setup's original time never
/// displaces an update (revocations) pushed since.
pub fn account_jwt_at(
    spec: &AccountSpec,
    topology: &Topology,
    operator_signer: &KeyPair,
    revocations: &BTreeMap<String, i64>,
    issued_at: i64,
) -> Result<String, JwtError> {
    let (disk, memory, required) = match spec.jetstream {
        Some(js) => (js.disk_bytes, js.memory_bytes, true),
        None => (0, 0, false),
    };
    let mut signing_keys: Vec<Value> = spec.signing_keys.iter().map(|k| json!(k)).collect();
    if let Some(agent_key) = &spec.agent_signing_key {
        signing_keys.push(json!({
            "kind": "user_scope",
            "key": agent_key,
            "role": "agent",
            "description": "signs enrolled agents' credentials; grants only the agent template",
            "template": user_permission_claims(&super::agent_template(topology)),
        }));
    }
    let mut nats = json!({
        "limits": {
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true,
            "conn": -1, "leaf": -1,
            "mem_storage": memory, "disk_storage": disk, "streams": -1, "consumer": -1,
            // Every stream must say how large it may grow; none can take the whole
            // account's storage by being created without a bound.
            "max_bytes_required": required,
        },
        "signing_keys": signing_keys,
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

/// The permission and limit claims of a user (also the template of a scoped key).
fn user_permission_claims(permissions: &Permissions) -> Value {
    let limit = |v: Option<u64>| v.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX));
    let mut claims = json!({
        "pub": Rules { allow: &permissions.publish },
        "sub": Rules { allow: &permissions.subscribe },
        "subs": limit(permissions.max_subscriptions),
        "data": -1,
        "payload": limit(permissions.max_payload),
    });
    if permissions.allow_responses {
        // One reply per request received, within the request's lifetime.
        claims["resp"] = json!({ "max": 1, "ttl": 0 });
    }
    claims
}

/// A user JWT for `user_public_key` in `account`, signed by the account or one of its
/// (unscoped) signing keys, with `permissions` and an optional expiry (unix seconds).
pub fn user_jwt(
    name: &str,
    user_public_key: &str,
    account: &str,
    signer: &KeyPair,
    permissions: &Permissions,
    expires: Option<i64>,
) -> Result<String, JwtError> {
    let mut nats = user_permission_claims(permissions);
    nats["type"] = json!("user");
    nats["version"] = json!(2);
    user_claims(name, user_public_key, account, signer, nats, expires)
}

/// A user JWT signed by a scoped signing key: it carries no permissions of its own
/// (the server refuses one that does) and names the agent in the tag the scope's
/// template reads (`agent:{id}`).
pub fn scoped_user_jwt(
    name: &str,
    user_public_key: &str,
    account: &str,
    signer: &KeyPair,
    tags: &[String],
    expires: Option<i64>,
) -> Result<String, JwtError> {
    let nats = json!({ "tags": tags, "type": "user", "version": 2 });
    user_claims(name, user_public_key, account, signer, nats, expires)
}

fn user_claims(
    name: &str,
    user_public_key: &str,
    account: &str,
    signer: &KeyPair,
    mut nats: Value,
    expires: Option<i64>,
) -> Result<String, JwtError> {
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

/// The JWT and the seed of a credentials file.
pub fn parse_creds(text: &str) -> Result<(String, String), JwtError> {
    fn block(text: &str, begin: &str) -> Option<String> {
        let start = text.find(begin)? + begin.len();
        let rest = &text[start..];
        // The block's first non-empty line, up to the closing dashes line.
        rest.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('-')).map(str::to_owned)
    }
    let jwt = block(text, "-----BEGIN NATS USER JWT-----").ok_or(JwtError::Malformed)?;
    let seed = block(text, "-----BEGIN USER NKEY SEED-----").ok_or(JwtError::Malformed)?;
    Ok((jwt, seed))
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
        let perms = Permissions {
            publish: vec!["a.>".into()],
            subscribe: vec!["b".into()],
            allow_responses: true,
            ..Permissions::default()
        };
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
        assert_eq!(parse_creds(&text).unwrap(), ("eyJ.x.y".to_owned(), "SUABC".to_owned()));
        assert!(parse_creds("not a creds file").is_err());
    }

    #[test]
    fn scoped_user_jwts_carry_no_permissions_of_their_own() {
        let account = KeyPair::new_account();
        let scoped = KeyPair::new_account();
        let user = KeyPair::new_user();
        let jwt = scoped_user_jwt(
            "agent-a",
            &user.public_key(),
            &account.public_key(),
            &scoped,
            &["agent:a1b2c3d4e5f6".into()],
            Some(4_000_000_000),
        )
        .unwrap();
        let claims = decode_claims(&jwt).unwrap();
        let nats = claims["nats"].as_object().unwrap();
        let mut keys: Vec<&str> = nats.keys().map(String::as_str).collect();
        keys.sort_unstable();
        // The server refuses a scoped user with any permission or limit field.
        assert_eq!(keys, vec!["issuer_account", "tags", "type", "version"]);
        assert_eq!(claims["nats"]["tags"][0], "agent:a1b2c3d4e5f6");
    }

    #[test]
    fn the_account_carries_the_agent_scope_and_storage_limits() {
        let operator = KeyPair::new_operator();
        let spec = AccountSpec {
            name: "A".into(),
            public_key: KeyPair::new_account().public_key(),
            signing_keys: vec![KeyPair::new_account().public_key()],
            agent_signing_key: Some(KeyPair::new_account().public_key()),
            jetstream: Some(JetStreamLimits { disk_bytes: 1 << 30, memory_bytes: 1 << 20 }),
        };
        let jwt = account_jwt(&spec, &Topology::default(), &operator, &BTreeMap::new()).unwrap();
        let claims = decode_claims(&jwt).unwrap();
        let limits = &claims["nats"]["limits"];
        assert_eq!(limits["disk_storage"], 1i64 << 30);
        assert_eq!(limits["max_bytes_required"], true);
        let scope = &claims["nats"]["signing_keys"][1];
        assert_eq!(scope["kind"], "user_scope");
        assert_eq!(scope["template"]["pub"]["allow"][0], "ops.{{tag(agent)}}.events.>");
        assert_eq!(scope["template"]["subs"], 8);
    }
}
