//! Passwords: argon2id, off the async threads and a bounded number at a time.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::error::ApiError;

/// Runs argon2id off the async threads, a bounded number at a time: each hash holds
/// 19 MiB for tens of milliseconds, so a login burst could otherwise take all memory.
/// Past the bound a caller waits up to `wait`, then gets 503 with Retry-After.
pub(crate) struct Hasher {
    permits: tokio::sync::Semaphore,
    wait: Duration,
}

impl Hasher {
    pub(crate) fn new(concurrent: usize, wait: Duration) -> Self {
        Self { permits: tokio::sync::Semaphore::new(concurrent.max(1)), wait }
    }

    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        match tokio::time::timeout(self.wait, self.permits.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                metrics::counter!("opspilot_password_hash_busy_total").increment(1);
                Err(ApiError::Busy { what: "password checking", retry_after: 1 })
            }
        }
    }

    /// Hashes a password with argon2id (default parameters: 19 MiB, 2 passes).
    pub(crate) async fn hash(&self, password: SecretString) -> Result<String, ApiError> {
        let _permit = self.permit().await?;
        tokio::task::spawn_blocking(move || {
            use argon2::password_hash::PasswordHasher;
            argon2::Argon2::default()
                .hash_password(password.expose_secret().as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|e| ApiError::Internal(anyhow::anyhow!("hashing a password: {e}")))
        })
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
    }

    /// Checks a password against a stored hash (or the decoy, so a login for an
    /// unknown email takes as long as one with a wrong password).
    pub(crate) async fn verify(
        &self,
        password: SecretString,
        hash: Option<String>,
    ) -> Result<bool, ApiError> {
        let _permit = self.permit().await?;
        let real = hash.is_some();
        let hash = hash.unwrap_or_else(|| DECOY_HASH.to_owned());
        let ok = tokio::task::spawn_blocking(move || {
            use argon2::password_hash::PasswordVerifier;
            let Ok(parsed) = argon2::password_hash::phc::PasswordHash::new(&hash) else { return false };
            argon2::Argon2::default().verify_password(password.expose_secret().as_bytes(), &parsed).is_ok()
        })
        .await
        .unwrap_or(false);
        Ok(ok && real)
    }
}

/// A valid-looking hash to verify against when the user does not exist.
const DECOY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0UGUxkTFRRnUQ0nBB3Vh1K2Gfi7x+7mdK1iGXAGBFjk";
