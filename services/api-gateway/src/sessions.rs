//! Who a request is: roles, the access token (HS256 JWTs, issuer, expiry and the
//! account's token version checked), and the last second's users.

use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;
use crate::ttl_cache::TtlCache;

/// What a user may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything operators read.
    Viewer,
    /// Also executes actions and asks for analyses; acknowledges and resolves incidents.
    Operator,
    /// Everything: users, enrollment tokens, the audit log, revoking agents.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Token claims.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Claims {
    pub(crate) sub: Uuid,
    pub(crate) email: String,
    pub(crate) role: Role,
    pub(crate) iss: String,
    pub(crate) iat: i64,
    pub(crate) exp: i64,
    pub(crate) jti: Uuid,
    /// The user's token version when the token was issued; a password, role or
    /// disabled change moves it on and ends every older token. Tokens from before
    /// versions existed have none and are refused.
    #[serde(default)]
    pub(crate) ver: i32,
}

/// Signing and verification keys with the validation rules pinned.
pub(crate) struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Tokens whose signature and issuer were checked in the last minute, with their
    /// claims: a client sends the same token with every request, and decoding and
    /// checking it each time was a twentieth of a busy gateway's CPU. Only a token that
    /// passed is kept, and its expiry is checked again on every use.
    verified: TtlCache<String, Claims>,
    issuer: String,
    pub(crate) ttl: Duration,
}

impl JwtKeys {
    pub(crate) fn new(secret: &SecretString, issuer: &str, ttl: Duration) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        // Only HS256: a token claiming `none`, RS256 (the key-confusion attack) or any
        // other algorithm is refused before its signature is even looked at.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = 30;
        Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
            verified: TtlCache::new(VERIFIED_FOR),
            issuer: issuer.to_owned(),
            ttl,
        }
    }

    /// A signed token for `user`, and when it expires.
    pub(crate) fn issue(
        &self,
        id: Uuid,
        email: &str,
        role: Role,
        version: i32,
    ) -> Result<(String, DateTime<Utc>), ApiError> {
        let now = Utc::now();
        let expires = now + chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::hours(1));
        let claims = Claims {
            sub: id,
            email: email.to_owned(),
            role,
            iss: self.issuer.clone(),
            iat: now.timestamp(),
            exp: expires.timestamp(),
            jti: Uuid::new_v4(),
            ver: version,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("signing a token: {e}")))?;
        Ok((token, expires))
    }

    pub(crate) fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        if let Some(claims) = self.verified.get(token) {
            // The same test as the full check's, leeway included.
            if claims.exp >= Utc::now().timestamp() - i64::try_from(self.validation.leeway).unwrap_or(0) {
                return Ok(claims);
            }
            self.verified.forget(token);
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let reason = match e.kind() {
                    ErrorKind::ExpiredSignature => "token expired",
                    ErrorKind::InvalidIssuer => "token from another issuer",
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        "token algorithm not accepted"
                    }
                    ErrorKind::InvalidSignature => "token signature invalid",
                    _ => "token invalid",
                };
                ApiError::Unauthenticated(reason.into())
            })?;
        self.verified.put(token.to_owned(), claims.clone());
        Ok(claims)
    }
}

/// How long a checked token is taken as checked (its expiry is checked on every use).
const VERIFIED_FOR: Duration = Duration::from_secs(60);

/// The authenticated caller. The role and token version come from the database (or
/// a one-second cache), so disabling a user, lowering a role or changing a password
/// takes effect at once on the replica that made the change and within a second on
/// the others.
#[derive(Debug, Clone)]
pub(crate) struct CurrentUser {
    pub(crate) id: Uuid,
    pub(crate) email: String,
    pub(crate) role: Role,
    pub(crate) token_version: i32,
}

impl CurrentUser {
    pub(crate) fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role { Ok(()) } else { Err(ApiError::Forbidden(role.as_str())) }
    }
}

/// Users seen in the last second. A role change or a disabled account takes effect
/// within that second on every replica (at once on the replica that made the change);
/// it saves a query on every request.
pub(crate) type UserCache = TtlCache<Uuid, CurrentUser>;

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> JwtKeys {
        JwtKeys::new(&SecretString::from("k".repeat(48)), "opspilot", Duration::from_secs(3600))
    }

    fn signed(keys: &JwtKeys, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &keys.encoding).unwrap()
    }

    #[test]
    fn a_token_checked_once_is_taken_from_the_cache_with_the_same_claims() {
        let keys = keys();
        let user = Uuid::now_v7();
        let (token, _) = keys.issue(user, "a@example.com", Role::Operator, 3).unwrap();
        let first = keys.verify(&token).unwrap();
        assert!(keys.verified.get(token.as_str()).is_some());
        let again = keys.verify(&token).unwrap();
        assert_eq!((again.sub, again.ver, again.jti), (first.sub, first.ver, first.jti));
        assert_eq!(again.sub, user);
    }

    #[test]
    fn a_kept_token_past_its_expiry_is_refused_and_a_refused_one_is_not_kept() {
        let keys = keys();
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: Uuid::now_v7(),
            email: "a@example.com".into(),
            role: Role::Admin,
            iss: "opspilot".into(),
            iat: now - 7200,
            // Past the 30 s leeway.
            exp: now - 120,
            jti: Uuid::now_v7(),
            ver: 1,
        };
        let token = signed(&keys, &claims);
        assert!(keys.verify(&token).is_err());
        assert!(keys.verified.get(token.as_str()).is_none(), "a refused token is not kept");
        // As if it had been checked while still valid: the expiry is checked on every use.
        keys.verified.put(token.clone(), claims);
        assert!(keys.verify(&token).is_err());
        assert!(keys.verified.get(token.as_str()).is_none());
    }
}
