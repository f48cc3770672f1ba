//! Posting due notifications. Every replica runs a sender; a target's rows are claimed
//! under its lock with a lease (see `storage::notifications::claim`), so replicas share
//! the work without posting a row twice, and a replica that dies mid-post leaves the
//! row to another once its lease runs out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use service_kit::backoff::Backoff;
use storage::PgPool;
use storage::notifications::{Attempt, ClaimLimits, Claimed, Target, TargetKind};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::format;

/// How often the backlog gauges are read.
const GAUGE_EVERY: Duration = Duration::from_secs(15);
/// How often old deliveries are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Notifications one digest carries at most; more wait for the next digest.
const MAX_DIGEST: u32 = 10_000;

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) timeout: Duration,
    pub(crate) backoff: Backoff,
    pub(crate) retry_for: Duration,
    pub(crate) poll: Duration,
    pub(crate) concurrency: u32,
    pub(crate) retention: Duration,
}

pub(crate) struct Sender {
    pub(crate) pool: PgPool,
    pub(crate) http: reqwest::Client,
    pub(crate) settings: Settings,
    pub(crate) written: Arc<Notify>,
}

/// The HTTP client of every post: no redirects (a signed post goes where it was
/// configured to, and a redirect is reported as a failure), a whole-request timeout.
pub(crate) fn client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("OpsPilot-Notifier/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// What one post came to.
#[derive(Debug)]
struct Failure {
    status: Option<u16>,
    error: String,
    /// Whether trying again later may work (the receiver is down or busy).
    retryable: bool,
    retry_after: Option<Duration>,
}

async fn post(http: &reqwest::Client, target: &Target, delivery: &Claimed) -> Result<u16, Failure> {
    let url = target.url.expose_secret();
    let request = match target.kind {
        TargetKind::Webhook => {
            let Some(secret) = &target.secret else {
                return Err(Failure {
                    status: None,
                    error: "the webhook has no signing secret".into(),
                    retryable: false,
                    retry_after: None,
                });
            };
            let body = format::webhook_body(delivery);
            let timestamp = Utc::now().timestamp();
            let signature = format::signature(secret.expose_secret().as_bytes(), timestamp, &body);
            http.post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(format::HEADER_TIMESTAMP, timestamp.to_string())
                .header(format::HEADER_SIGNATURE, signature)
                .header(format::HEADER_DELIVERY, delivery.id.to_string())
                .header(format::HEADER_EVENT, delivery.event.as_str())
                .body(body)
        }
        TargetKind::Slack => http.post(url).json(&format::slack_body(delivery)),
    };
    let response = request.send().await.map_err(|err| Failure {
        status: None,
        // The URL is a credential: never in a message that is stored or logged.
        error: err.without_url().to_string(),
        retryable: true,
        retry_after: None,
    })?;
    let status = response.status();
    if status.is_success() {
        return Ok(status.as_u16());
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let retryable = status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT;
    Err(Failure {
        status: Some(status.as_u16()),
        error: if status.is_redirection() {
            format!("answered {status}; redirects are not followed")
        } else {
            format!("answered {status}")
        },
        retryable,
        retry_after,
    })
}

impl Sender {
    /// Posts one claimed delivery and records what happened.
    async fn deliver(&self, target: &Target, delivery: Claimed) {
        let started = Instant::now();
        let result = post(&self.http, target, &delivery).await;
        metrics::histogram!("opspilot_notification_post_seconds", "kind" => target.kind.as_str())
            .record(started.elapsed().as_secs_f64());
        let attempt = delivery.attempts;
        let failure_text;
        let outcome = match result {
            Ok(status) => Attempt::Delivered { status },
            Err(failure) => {
                let retry = u32::try_from(attempt.saturating_sub(1)).unwrap_or(0);
                let delay = self.settings.backoff.delay(retry).max(failure.retry_after.unwrap_or_default());
                let delay = delay.min(self.settings.backoff.max.max(Duration::from_secs(1)));
                let age = (Utc::now() - delivery.created_at).to_std().unwrap_or_default();
                if failure.retryable && age + delay < self.settings.retry_for {
                    if service_kit::backoff::worth_logging(u32::try_from(attempt).unwrap_or(u32::MAX)) {
                        tracing::warn!(target = %target.name, delivery = delivery.id, attempt, status = failure.status,
                            error = %failure.error, retry_in = ?delay, "notification post failed; retrying");
                    }
                    failure_text = failure.error;
                    Attempt::Retry { delay, status: failure.status, error: &failure_text }
                } else {
                    tracing::warn!(target = %target.name, delivery = delivery.id, attempt, status = failure.status,
                        error = %failure.error, "notification given up");
                    failure_text = if failure.retryable {
                        format!("gave up after {attempt} attempts: {}", failure.error)
                    } else {
                        failure.error
                    };
                    Attempt::Failed { status: failure.status, error: &failure_text }
                }
            }
        };
        let label = match outcome {
            Attempt::Delivered { .. } => "delivered",
            Attempt::Retry { .. } => "retry",
            Attempt::Failed { .. } => "failed",
        };
        metrics::counter!("opspilot_notification_attempts_total", "kind" => target.kind.as_str(), "outcome" => label)
            .increment(1);
        if delivery.event == "digest" && attempt == 1 {
            let folded = u64::try_from(delivery.digest_count.unwrap_or(0)).unwrap_or(0);
            metrics::counter!("opspilot_notifications_digested_total").increment(folded);
        }
        match storage::notifications::record(&self.pool, delivery.id, attempt, &outcome).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(
                    delivery = delivery.id,
                    "notification was taken over by another replica meanwhile"
                )
            }
            Err(err) => {
                // The lease runs out and the row is tried again: a receiver may see a
                // repeat, with the same delivery id.
                tracing::warn!(delivery = delivery.id, error = %err, "recording a notification's outcome failed");
            }
        }
    }
}

/// Runs until `shutdown`; posts in flight finish first (they are bounded by the
/// post timeout).
pub(crate) async fn run(sender: Sender, shutdown: CancellationToken) -> anyhow::Result<()> {
    let sender = Arc::new(sender);
    let slots = Arc::new(Semaphore::new(usize::try_from(sender.settings.concurrency).unwrap_or(16)));
    let limits = ClaimLimits {
        lease: sender.settings.timeout + Duration::from_secs(30),
        max: sender.settings.concurrency,
        max_digest: MAX_DIGEST,
    };
    // Posts in flight per target: a target still busy here is not claimed again, so a
    // slow receiver holds up only itself.
    let mut busy: HashMap<Uuid, usize> = HashMap::new();
    let mut tasks: JoinSet<Uuid> = JoinSet::new();
    let mut gauges_at: Option<Instant> = None;
    let mut pruned_at: Option<Instant> = None;
    let mut failures: u32 = 0;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        match round(&sender, &slots, limits, &mut busy, &mut tasks).await {
            Ok(()) => failures = 0,
            Err(err) => {
                failures = failures.saturating_add(1);
                if service_kit::backoff::worth_logging(failures) {
                    tracing::warn!(error = %err, failures, "looking for notifications to send failed");
                }
            }
        }
        if gauges_at.is_none_or(|at| at.elapsed() >= GAUGE_EVERY) {
            gauges_at = Some(Instant::now());
            if let Ok(counts) = storage::notifications::counts(&sender.pool).await {
                for status in ["pending", "sending"] {
                    let n = counts.iter().find(|(s, _)| s == status).map_or(0, |(_, n)| *n);
                    metrics::gauge!("opspilot_notifications_backlog", "status" => status).set(n as f64);
                }
            }
        }
        if pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            pruned_at = Some(Instant::now());
            match storage::notifications::prune(&sender.pool, sender.settings.retention, 10_000).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "old notification deliveries deleted"),
                Err(err) => tracing::warn!(error = %err, "deleting old notification deliveries failed"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(sender.settings.poll) => {}
            _ = sender.written.notified() => {}
            Some(done) = tasks.join_next(), if !tasks.is_empty() => finished(&mut busy, done),
        }
        while let Some(done) = tasks.try_join_next() {
            finished(&mut busy, done);
        }
    }
    while let Some(done) = tasks.join_next().await {
        finished(&mut busy, done);
    }
    Ok(())
}

fn finished(busy: &mut HashMap<Uuid, usize>, done: Result<Uuid, tokio::task::JoinError>) {
    let Ok(target) = done else { return };
    if let Some(n) = busy.get_mut(&target) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            busy.remove(&target);
        }
    }
}

/// Claims and starts what is due for every target not busy in this replica.
async fn round(
    sender: &Arc<Sender>,
    slots: &Arc<Semaphore>,
    limits: ClaimLimits,
    busy: &mut HashMap<Uuid, usize>,
    tasks: &mut JoinSet<Uuid>,
) -> Result<(), storage::StorageError> {
    let due = storage::notifications::targets_with_due(&sender.pool).await?;
    if due.is_empty() {
        return Ok(());
    }
    let mut targets = storage::notifications::enabled_targets(&sender.pool).await?;
    targets.retain(|t| due.contains(&t.id) && !busy.contains_key(&t.id));
    for target in targets {
        let claimed = storage::notifications::claim(&sender.pool, &target, limits).await?;
        if claimed.is_empty() {
            continue;
        }
        busy.insert(target.id, claimed.len());
        let target = Arc::new(target);
        for delivery in claimed {
            let (sender, target, slots) = (Arc::clone(sender), Arc::clone(&target), Arc::clone(slots));
            tasks.spawn(async move {
                // The semaphore is never closed.
                let _permit = slots.acquire_owned().await;
                sender.deliver(&target, delivery).await;
                target.id
            });
        }
    }
    Ok(())
}
