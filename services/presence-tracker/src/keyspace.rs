//! The fast offline path: Redis deletes an agent's TTL key at its deadline and says so
//! on `__keyevent@{db}__:expired`; the agent is proposed for offline at once (and
//! re-checked, like every candidate). Events are lost while the subscription is down,
//! so every (re)subscription asks the reconciler for a scan.

use service_kit::backoff::Backoff;
use std::sync::Arc;
use std::time::Duration;

use presence::ExpiredKeys;
use storage::redis::RedisConfig;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wire_models::{AgentId, PresenceState};

use crate::Signals;
use crate::transitions::{Intent, Reason};

/// A subscription that delivered nothing for this long is pinged.
const PING_EVERY: Duration = Duration::from_secs(5);

/// Logs how offline detection will work, once, at start.
pub(crate) async fn report_configuration(
    pool: &storage::redis::Pool,
    enabled: bool,
    reconcile_interval: Duration,
) {
    if !enabled {
        tracing::info!(
            ?reconcile_interval,
            "keyspace events disabled by configuration; offline detection runs on the reconciler alone"
        );
        return;
    }
    match presence::keyspace_expired_events_enabled(pool).await {
        Ok(true) => tracing::info!("redis sends keyspace expired events; they are the fast offline path"),
        Ok(false) => tracing::warn!(
            ?reconcile_interval,
            "redis keyspace expired events are off (notify-keyspace-events lacks Ex); offline detection runs on the reconciler alone"
        ),
        Err(err) => tracing::warn!(
            error = %err,
            "cannot read notify-keyspace-events; if redis sends no expired events, offline detection runs on the reconciler alone"
        ),
    }
}

enum Event {
    Stop,
    Expired(Option<AgentId>),
    Ping,
}

/// Listens until `shutdown`, re-subscribing (with backoff) whenever the connection goes.
pub(crate) async fn run(
    config: RedisConfig,
    intents: mpsc::Sender<Intent>,
    signals: Arc<Signals>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut attempt: u32 = 0;
    let mut subscribed_before = false;
    loop {
        let subscription = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            subscription = ExpiredKeys::subscribe(&config) => subscription,
        };
        let mut subscription = match subscription {
            Ok(subscription) => subscription,
            Err(err) => {
                attempt += 1;
                if service_kit::backoff::worth_logging(attempt) {
                    tracing::warn!(attempt, error = %err, "cannot subscribe to keyspace events; the reconciler covers meanwhile");
                }
                if service_kit::service::sleep_or_shutdown(Backoff::RECONNECT.delay(attempt), &shutdown).await
                {
                    return Ok(());
                }
                continue;
            }
        };
        attempt = 0;
        if subscribed_before {
            tracing::info!(channel = subscription.channel(), "listening for expired presence keys again");
        } else {
            tracing::info!(channel = subscription.channel(), "listening for expired presence keys");
            subscribed_before = true;
        }
        // Whatever expired while not subscribed was not heard: scan now.
        signals.scan_now.notify_one();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            let event = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Event::Stop,
                id = subscription.next() => Event::Expired(id),
                _ = ping.tick() => Event::Ping,
            };
            match event {
                Event::Stop => return Ok(()),
                Event::Expired(Some(agent_id)) => {
                    metrics::counter!("opspilot_presence_keyspace_events_total").increment(1);
                    ping.reset();
                    let intent =
                        Intent { agent_id, state: PresenceState::Offline, reason: Reason::KeyExpired };
                    if intents.send(intent).await.is_err() {
                        return Ok(());
                    }
                }
                Event::Expired(None) => {
                    tracing::warn!("keyspace events connection lost; re-subscribing");
                    break;
                }
                Event::Ping => {
                    if let Err(err) = subscription.ping().await {
                        tracing::warn!(error = %err, "keyspace events connection not answering; re-subscribing");
                        break;
                    }
                }
            }
        }
        if service_kit::service::sleep_or_shutdown(Duration::from_millis(100), &shutdown).await {
            return Ok(());
        }
    }
}
