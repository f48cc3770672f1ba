//! Bus security: every agent and every service has its own NATS identity (an NKey
//! with a user JWT signed by the OpsPilot account), allowed exactly the subjects it
//! needs. This module writes the JWTs (operator, accounts, users), the permissions of
//! each identity, the credentials files, and the nats-server configuration; and it
//! pushes account updates (revocations) to a running server.
//!
//! Why decentralised JWT auth rather than auth callout: the server checks credentials
//! by itself, so agents connect (and reconnect after a restart) even while every
//! OpsPilot service is down; there is no extra service in the connection path.

mod jwt;
mod perms;
mod revoke;
mod setup;

pub use jwt::{
    AccountSpec, JetStreamLimits, JwtError, account_jwt, account_jwt_at, creds_file, decode_claims,
    operator_jwt, operator_jwt_at, parse_creds, scoped_user_jwt, user_jwt,
};
pub use nkeys::KeyPair;
pub use perms::{
    AGENT_MAX_PAYLOAD, AGENT_MAX_SUBSCRIPTIONS, AGENT_TAG, Identity, Permissions, agent_template,
    inbox_prefix, permissions,
};
pub use revoke::{RevocationPusher, push_account};
pub use setup::{
    AuthSetup, CredsInfo, DEV_IDENTITIES, GATEWAY_KEYS_FILE, GatewayKeys, IssuedCreds, Issuer, SERVICES,
    SYSTEM_USER, ServiceIdentity, WriteOptions, WriteReport, check_user_key,
};
