//! Enrolling this host (docs/PROTOCOL.md, section 3.1): the first time with an
//! enrollment token and a key generated here; every later time (credential rotation,
//! a lost enrollment file) with a proof that the agent still holds that key.

use agent_client::{EnrollClient, EnrollError, EnrollRequest};
use chrono::Utc;
use natsbus::auth::KeyPair;
use wire_models::SubjectRoot;

use crate::config::Config;
use crate::state::{Enrollment, StateDir, StateError, machine_fingerprint};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Enroll(#[from] EnrollError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Host(String),
    #[error("the api answered with an unusable enrollment: {0}")]
    Response(String),
}

impl Error {
    /// The API could not answer (unreachable, overloaded, restarting): unlike a
    /// refusal, waiting may help.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Enroll(EnrollError::Http(_)) => true,
            Error::Enroll(EnrollError::Refused { status, .. }) => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// This host's hostname, as configured or as the kernel knows it.
pub fn hostname(config: &Config) -> String {
    config
        .hostname
        .clone()
        .unwrap_or_else(|| rustix::system::uname().nodename().to_string_lossy().into_owned())
}

/// Enrolls (or enrolls again) against `api`. With a key in the state directory the
/// request carries a proof by that key, and `token` is only a fallback for a backend
/// that has no key on record yet; without one a key is generated and saved first.
pub async fn enroll(config: &Config, api: &str, token: Option<&str>) -> Result<Enrollment, Error> {
    let state = StateDir::new(&config.state_dir);
    state.ensure()?;
    let fingerprint =
        machine_fingerprint(&config.host.machine_id, &config.host.product_uuid).map_err(Error::Host)?;
    let hostname = hostname(config);
    crate::config::check_hostname(&hostname).map_err(|e| Error::Host(e.to_string()))?;
    let client = EnrollClient::new(api)?;
    let (key, known) = match state.key()? {
        Some(key) => (key, true),
        None => {
            let key = KeyPair::new_user();
            state.save_key(&key)?;
            (key, false)
        }
    };
    let public = key.public_key();
    let proof = if known { Some(client.prove(&key, &fingerprint, &public).await?) } else { None };
    let request = EnrollRequest {
        token,
        machine_fingerprint: &fingerprint,
        hostname: &hostname,
        nats_public_key: &public,
        proof,
    };
    let response = client.enroll(&request).await?;
    let subject_root = response.subject_root.clone().unwrap_or_else(|| SubjectRoot::default().to_string());
    SubjectRoot::parse(&subject_root).map_err(|e| Error::Response(format!("subject_root: {e}")))?;
    if response.nats_urls.is_empty() {
        return Err(Error::Response("no nats_urls".into()));
    }
    let heartbeat_interval_secs = response.heartbeat_interval_secs.unwrap_or(10);
    if !(1..=3600).contains(&heartbeat_interval_secs) {
        return Err(Error::Response(format!("heartbeat_interval_secs {heartbeat_interval_secs}")));
    }
    let heartbeat_bucket =
        response.subjects.as_ref().map_or_else(|| "AGENTS".to_owned(), |s| s.heartbeat_bucket.clone());
    if heartbeat_bucket.is_empty()
        || !heartbeat_bucket.chars().all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
    {
        return Err(Error::Response(format!("heartbeat bucket {heartbeat_bucket:?}")));
    }
    let seed = key.seed().map_err(|e| Error::Host(e.to_string()))?;
    let creds = response.nats_credentials.as_ref().map(|c| natsbus::auth::creds_file(&c.jwt, &seed));
    state.save_creds(creds.as_deref())?;
    let enrollment = Enrollment {
        agent_id: response.agent_id,
        api: client.base().to_owned(),
        machine_fingerprint: fingerprint,
        hostname,
        nats_urls: response.nats_urls,
        subject_root,
        heartbeat_bucket,
        heartbeat_interval_secs,
        creds_expires_at: response.nats_credentials.and_then(|c| c.expires_at),
        enrolled_at: Utc::now(),
    };
    state.save_enrollment(&enrollment)?;
    tracing::info!(agent_id = %enrollment.agent_id, status = %response.status, "enrolled");
    Ok(enrollment)
}

/// When credentials issued at `enrolled_at` and expiring at `expires_at` should be
/// renewed: once two thirds of their life is over, so a backend that is down for a
/// while still leaves days to try again.
pub fn renew_at(
    enrolled_at: chrono::DateTime<Utc>,
    expires_at: chrono::DateTime<Utc>,
) -> chrono::DateTime<Utc> {
    let life = expires_at - enrolled_at;
    if life <= chrono::TimeDelta::zero() { enrolled_at } else { enrolled_at + life * 2 / 3 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_api_that_cannot_answer_is_worth_waiting_for() {
        let refused =
            |status| Error::Enroll(EnrollError::Refused { status, slug: "x".into(), detail: String::new() });
        assert!(refused(503).is_unavailable());
        assert!(refused(429).is_unavailable());
        assert!(!refused(409).is_unavailable(), "a machine that must prove its key");
        assert!(!refused(401).is_unavailable(), "a bad token");
        assert!(!Error::Host("no machine id".into()).is_unavailable());
    }

    #[test]
    fn credentials_are_renewed_before_they_expire() {
        let start = Utc::now();
        let end = start + chrono::TimeDelta::days(30);
        let at = renew_at(start, end);
        assert!(at > start && at < end);
        assert_eq!(at, start + chrono::TimeDelta::days(20));
        assert_eq!(renew_at(end, start), end, "already expired: renew now");
    }
}
