//! Pushing an updated account JWT (with its revocations) to the running servers: the
//! servers drop revoked users' connections and refuse them from then on.

use std::collections::BTreeMap;

use nkeys::KeyPair;

use super::jwt::{AccountSpec, account_jwt};
use crate::NatsError;

/// Holds what re-signing the account needs, and a system-account connection.
pub struct RevocationPusher {
    pub spec: AccountSpec,
    /// Fills in the agent template of the account's scoped key.
    pub topology: crate::Topology,
    pub operator_signer: KeyPair,
    pub system: async_nats::Client,
}

impl RevocationPusher {
    /// Re-signs the account with `revocations` (user public key -> unix time) and
    /// pushes it.
    pub async fn push(&self, revocations: &BTreeMap<String, i64>) -> Result<(), NatsError> {
        let jwt = account_jwt(&self.spec, &self.topology, &self.operator_signer, revocations)
            .map_err(|e| NatsError::Config(format!("signing the account: {e}")))?;
        push_account(&self.system, &jwt).await
    }
}

/// Sends an account JWT to `$SYS.REQ.CLAIMS.UPDATE` and checks the server accepted it.
pub async fn push_account(system: &async_nats::Client, jwt: &str) -> Result<(), NatsError> {
    let reply = system
        .request("$SYS.REQ.CLAIMS.UPDATE", jwt.to_owned().into())
        .await
        .map_err(|e| NatsError::Publish(format!("pushing the account update: {e}")))?;
    let body: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
    if let Some(error) = body.get("error") {
        return Err(NatsError::Publish(format!("the server refused the account update: {error}")));
    }
    Ok(())
}
