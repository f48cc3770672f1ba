//! Who a request is: roles, the access token (HS256 JWTs, issuer, expiry and the
//! account's token version checked), and the last second's users.

use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;

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
#[derive(Debug, Serialize, Deserialize)]
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
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
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
            })
    }
}

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
pub(crate) type UserCache = crate::ttl_cache::TtlCache<Uuid, CurrentUser>;
