//! What every handler can reach, shared through axum's `State`.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use storage::PgPool;
use wire_models::Subjects;

use crate::ratelimit::RateLimiter;
use crate::sessions::JwtKeys;

#[derive(Clone)]
pub(crate) struct AppState(Arc<Inner>);

/// Agent rows by id for the execute path, which reads one per request: a revocation
/// takes effect within a second on every replica (at once on the one that made it),
/// as a disabled user does, and the agent's credentials are revoked on the bus besides.
pub(crate) type AgentCache = crate::ttl_cache::TtlCache<String, Arc<storage::agents::AgentRow>>;

pub(crate) struct Inner {
    pub(crate) pool: PgPool,
    pub(crate) redis: storage::redis::Pool,
    pub(crate) presence: presence::PresenceStore,
    pub(crate) keys: storage::redis::Keys,
    pub(crate) nats: async_nats::Client,
    pub(crate) subjects: Subjects,
    pub(crate) jwt: JwtKeys,
    pub(crate) limiter: RateLimiter,
    pub(crate) users: crate::sessions::UserCache,
    /// Agents an execute targeted in the last second.
    pub(crate) agents: AgentCache,
    /// Their live presence, until the change feed says it changed.
    pub(crate) presence_cache: Arc<crate::presence_cache::PresenceCache>,
    /// Password hashing, bounded.
    pub(crate) hasher: crate::passwords::Hasher,
    /// How long an execute waits for the agent's reply.
    pub(crate) rpc_timeout: Duration,
    /// How long an analyze waits for the analyzer.
    pub(crate) analyze_timeout: Duration,
    /// SHA-256 of the development bootstrap token, when one is configured.
    pub(crate) bootstrap_token_hash: Option<String>,
    /// What enrolled agents are told about connecting.
    pub(crate) enrollment: EnrollmentInfo,
    /// Agent credentials and revocations (bus security).
    pub(crate) bus_auth: Arc<crate::bus_auth::BusAuth>,
    /// Cached reads (agent lists).
    pub(crate) page_cache: crate::cache::PageCache,
    /// Publishes incident updates and fleet actions' progress to the change feed.
    pub(crate) feed: natsbus::feed::FeedPublisher,
    /// Announces finished actions on the change feed, a batch at a time.
    pub(crate) announcer: natsbus::feed::ActionAnnouncer,
    /// Serves the live streams from the change feed.
    pub(crate) feed_hub: Arc<crate::stream::FeedHub>,
    /// Agents silent longer than this are offline when Redis has no fresher word.
    pub(crate) default_offline_threshold: Duration,
    /// Writes actions' audit rows with group commit.
    pub(crate) audit: crate::audit_writer::AuditWriter,
    /// Bounds of fleet-wide actions.
    pub(crate) actions: ActionLimits,
    /// The fleet actions this replica runs, waited for at shutdown.
    pub(crate) runs: tokio_util::task::TaskTracker,
    /// Cancelled when the replica stops: running actions stop sending.
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct ActionLimits {
    /// A mutating action to more agents than this needs `confirm`.
    pub(crate) confirm_over: usize,
    pub(crate) max_targets: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct EnrollmentInfo {
    pub(crate) nats_urls: Vec<String>,
    pub(crate) subject_root: String,
    pub(crate) agents_bucket: String,
    pub(crate) heartbeat_interval_secs: u32,
}

impl AppState {
    pub(crate) fn new(inner: Inner) -> Self {
        Self(Arc::new(inner))
    }
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
