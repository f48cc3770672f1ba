//! `opspilot-agent run`: connect with the agent's own credentials, answer actions,
//! heartbeat at the enrolled interval, send inventory at start, on change and
//! periodically, publish spooled events until acknowledged, and renew credentials
//! before they expire (docs/PROTOCOL.md, section 3.3).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agent_client::Bus;
use anyhow::Context as _;
use futures::StreamExt as _;
use service_kit::backoff::Backoff;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use wire_models::{Heartbeat, PROTOCOL_VERSION, SubjectRoot, Subjects};

use crate::actions::Actions;
use crate::conditions::Conditions;
use crate::config::Config;
use crate::events::{self, Sink};
use crate::spool::Spool;
use crate::state::{Enrollment, StateDir};

/// How long a JetStream acknowledgement or a KV put may take before it counts as failed.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Retrying a failed credential renewal: there are days left, no need to hurry.
const RENEW_BACKOFF: Backoff = Backoff::new(Duration::from_secs(30), Duration::from_secs(3600));
/// Actions running at once; more are answered `busy` without running.
const MAX_CONCURRENT_ACTIONS: usize = 4;
/// How often log files are polled.
const LOG_POLL: Duration = Duration::from_millis(500);

/// Runs the agent until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let state = StateDir::new(&config.state_dir);
    let enrollment = state
        .enrollment()?
        .context("not enrolled: run `opspilot-agent enroll --api URL --token-file FILE` first")?;
    let spool = Arc::new(Spool::open(&state.spool_dir(), config.spool_max_events)?);
    if !spool.is_empty() {
        tracing::info!(events = spool.len(), "unacknowledged events from an earlier run will be sent");
    }
    let options = if state.has_creds() {
        // Read again at every reconnect, so renewed credentials are used without a restart.
        natsbus::creds_file_options(&state.creds_path())
    } else {
        tracing::warn!("no nats credentials (a development backend without bus security)");
        async_nats::ConnectOptions::new()
    };
    let subjects = Subjects::new(SubjectRoot::parse(&enrollment.subject_root)?);
    let client = tokio::select! {
        client = agent_client::connect(options, &enrollment.nats_urls, &enrollment.agent_id, ACK_TIMEOUT) =>
            client?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    let bus = Bus::new(client.clone(), subjects.clone(), &enrollment.heartbeat_bucket).await?;

    // 1. Subscribe to actions and flush, so the server knows the subscription before
    //    the backend sees the agent online.
    let mut rpc = client.subscribe(subjects.rpc(&enrollment.agent_id)).await?;
    client.flush().await?;

    let (inventory_tx, inventory_rx) = mpsc::channel(1);
    let wake = Arc::new(Notify::new());
    let sink = Sink {
        agent_id: enrollment.agent_id.clone(),
        hostname: enrollment.hostname.clone(),
        spool: Arc::clone(&spool),
        wake: Arc::clone(&wake),
    };
    let conditions = Arc::new(Conditions::load(&state));
    let actions = Arc::new(Actions { config: config.actions.clone(), inventory: inventory_tx });
    let tasks = tokio_util::task::TaskTracker::new();
    let stop = shutdown.child_token();
    tasks.spawn(heartbeats(bus.clone(), enrollment.clone(), stop.clone()));
    tasks.spawn(inventory(
        bus.clone(),
        config.clone(),
        enrollment.clone(),
        sink.clone(),
        Arc::clone(&conditions),
        inventory_rx,
        stop.clone(),
    ));
    tasks.spawn(publish_spool(bus.clone(), Arc::clone(&spool), wake, stop.clone()));
    tasks.spawn(events::watch_filesystems(
        sink.clone(),
        Arc::clone(&conditions),
        config.filesystems.clone(),
        config.filesystem_threshold_percent,
        config.filesystem_check,
        stop.clone(),
    ));
    if config.oom_kills {
        let (vmstat, cgroups) = (config.host.vmstat.clone(), config.host.cgroup_root.clone());
        tasks.spawn(crate::oom::watch(sink.clone(), vmstat, cgroups, config.filesystem_check, stop.clone()));
    }
    for rule in &config.logs {
        tasks.spawn(events::tail_log(sink.clone(), rule.clone(), LOG_POLL, stop.clone()));
    }
    if let Some(expires_at) = enrollment.creds_expires_at {
        tasks.spawn(renew(config.clone(), enrollment.clone(), expires_at, stop.clone()));
    }
    tasks.close();
    tracing::info!(
        agent_id = %enrollment.agent_id,
        interval_secs = enrollment.heartbeat_interval_secs,
        "opspilot-agent running"
    );

    let running = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_ACTIONS));
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            msg = rpc.next() => match msg {
                Some(msg) => msg,
                None => break,
            },
        };
        // A message without a reply subject gets no answer, and nothing runs.
        let Some(reply_to) = msg.reply.clone() else { continue };
        let (client, actions) = (client.clone(), Arc::clone(&actions));
        let span =
            natsbus::process_span!(&msg.subject, msg.headers.as_ref(), agent_id = %enrollment.agent_id);
        // A bounded number of actions at once: a flood of requests cannot become a
        // flood of processes on the host.
        let permit = Arc::clone(&running).try_acquire_owned().ok();
        tokio::spawn(
            async move {
                let reply = match permit {
                    Some(_permit) => actions.handle(&msg.payload).await,
                    None => busy(&msg.payload),
                };
                if let Err(err) = natsbus::reply(&client, reply_to.to_string(), &reply).await {
                    tracing::warn!(error = %err, "sending the reply failed");
                }
            }
            .instrument(span),
        );
    }
    stop.cancel();
    tasks.wait().await;
    // What was sent is flushed; what is spooled stays for the next run.
    let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
    tracing::info!(spooled = spool.len(), "opspilot-agent stopped");
    Ok(())
}

/// The answer to a request that arrives while [`MAX_CONCURRENT_ACTIONS`] run.
fn busy(payload: &[u8]) -> wire_models::RpcReply {
    match wire_models::decode::<wire_models::RpcRequest>(payload) {
        Ok(request) => agent_client::rpc::error(
            request.request_id,
            "busy",
            "too many actions are running on this host; try again",
            None,
            std::time::Instant::now(),
        ),
        Err(err) => agent_client::rpc::bad_request(payload, &err.to_string()),
    }
}

/// A heartbeat now, then one every interval; a late one is the next put, never a
/// burst of missed ones.
async fn heartbeats(bus: Bus, enrollment: Enrollment, stop: CancellationToken) {
    let interval = Duration::from_secs(u64::from(enrollment.heartbeat_interval_secs));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let seq = AtomicU64::new(0);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let heartbeat = Heartbeat {
            v: PROTOCOL_VERSION,
            agent_id: enrollment.agent_id.clone(),
            seq: seq.fetch_add(1, Ordering::Relaxed),
            sent_at: chrono::Utc::now(),
            interval_secs: enrollment.heartbeat_interval_secs,
            hostname: Some(enrollment.hostname.clone()),
            agent_version: Some(concat!("opspilot-agent/", env!("CARGO_PKG_VERSION")).to_owned()),
        };
        let put = tokio::select! {
            _ = stop.cancelled() => return,
            put = tokio::time::timeout(ACK_TIMEOUT, bus.put_heartbeat(&heartbeat)) => put,
        };
        match put {
            Ok(Ok(())) => tracing::debug!(seq = heartbeat.seq, "heartbeat"),
            Ok(Err(err)) => tracing::warn!(error = %err, "heartbeat failed"),
            Err(_) => tracing::warn!("heartbeat not acknowledged in time"),
        }
    }
}

/// Inventory at start, whenever a check finds it changed, every `interval` anyway, and
/// when an action asks for it. Units that newly failed become events.
async fn inventory(
    bus: Bus,
    config: Config,
    enrollment: Enrollment,
    sink: Sink,
    conditions: Arc<Conditions>,
    mut asked: mpsc::Receiver<()>,
    stop: CancellationToken,
) {
    let mut check = tokio::time::interval(config.inventory_check);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sent: Option<(String, tokio::time::Instant)> = None;
    let mut last_truncation = None;
    let mut pending = false;
    loop {
        let forced = tokio::select! {
            _ = stop.cancelled() => return,
            _ = check.tick() => false,
            Some(()) = asked.recv() => true,
        };
        let (report, truncation) =
            crate::inventory::collect(&config, &enrollment.agent_id, &enrollment.hostname).await;
        // Said when it starts or changes, not at every check while the host stays big.
        if truncation != last_truncation {
            if let Some(t) = &truncation {
                tracing::warn!(
                    packages_kept = t.packages_kept,
                    packages = t.packages_total,
                    services_kept = t.services_kept,
                    services = t.services_total,
                    max_bytes = <wire_models::InventoryReport as wire_models::WireMessage>::MAX_BYTES,
                    "inventory over the protocol's size limit; sending it cut"
                );
            }
            last_truncation = truncation;
        }
        if config.failed_units {
            events::failed_units(&sink, &conditions, &report.snapshot.services);
        }
        let hash = report.snapshot_hash();
        let due = match &last_sent {
            None => true,
            Some((previous, at)) => *previous != hash || at.elapsed() >= config.inventory_interval,
        };
        if !(due || forced || pending) {
            continue;
        }
        let sent = tokio::select! {
            _ = stop.cancelled() => return,
            sent = tokio::time::timeout(ACK_TIMEOUT, bus.publish_inventory(&report)) => sent,
        };
        match sent {
            Ok(Ok(())) => {
                tracing::info!(
                    services = report.snapshot.services.len(),
                    packages = report.snapshot.packages.len(),
                    "inventory sent"
                );
                last_sent = Some((hash, tokio::time::Instant::now()));
                pending = false;
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "inventory not sent; trying again at the next check");
                pending = true;
            }
            Err(_) => {
                tracing::warn!("inventory not acknowledged in time; trying again at the next check");
                pending = true;
            }
        }
    }
}

/// Publishes spooled events oldest first, each until JetStream acknowledges it (a
/// duplicate acknowledgement is a success), with capped backoff while it cannot.
async fn publish_spool(bus: Bus, spool: Arc<Spool>, wake: Arc<Notify>, stop: CancellationToken) {
    let mut failures: u32 = 0;
    loop {
        let Some((name, event)) = spool.peek() else {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = wake.notified() => continue,
            }
        };
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            result = tokio::time::timeout(ACK_TIMEOUT, bus.publish_event(&event)) => result,
        };
        match result {
            Ok(Ok(duplicate)) => {
                tracing::debug!(event_id = %event.event_id, duplicate, "event acknowledged");
                spool.ack(&name);
                failures = 0;
            }
            Ok(Err(err)) => {
                failures = failures.saturating_add(1);
                tracing::warn!(
                    event_id = %event.event_id,
                    error = %err,
                    spooled = spool.len(),
                    "event not published; will retry"
                );
            }
            Err(_) => {
                failures = failures.saturating_add(1);
                tracing::warn!(
                    event_id = %event.event_id,
                    spooled = spool.len(),
                    "event not acknowledged in time; will retry"
                );
            }
        }
        if failures > 0 {
            let backoff = Backoff::RECONNECT.delay(failures - 1);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
        }
    }
}

/// Renews the NATS credentials by enrolling again with a proof, two thirds into their
/// life, retrying with backoff until it works.
async fn renew(
    config: Config,
    enrollment: Enrollment,
    expires_at: chrono::DateTime<chrono::Utc>,
    stop: CancellationToken,
) {
    let mut at = crate::enroll::renew_at(enrollment.enrolled_at, expires_at);
    let mut attempt: u32 = 0;
    loop {
        let wait = (at - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match crate::enroll::enroll(&config, &enrollment.api, None).await {
            Ok(renewed) => {
                tracing::info!(expires_at = ?renewed.creds_expires_at, "credentials renewed");
                match renewed.creds_expires_at {
                    Some(expires) => at = crate::enroll::renew_at(renewed.enrolled_at, expires),
                    None => return,
                }
                attempt = 0;
            }
            Err(err) => {
                attempt = attempt.saturating_add(1);
                let backoff = RENEW_BACKOFF.delay(attempt - 1);
                tracing::warn!(error = %err, retry_in = ?backoff, "renewing credentials failed");
                at = chrono::Utc::now()
                    + chrono::TimeDelta::from_std(backoff).unwrap_or(chrono::TimeDelta::hours(1));
            }
        }
    }
}
