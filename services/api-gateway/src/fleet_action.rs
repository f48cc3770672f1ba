//! Running a fleet-wide action: one command to every resolved target, over NATS
//! request-reply with bounded concurrency, each agent's outcome recorded in batches and
//! the progress published on the change feed.
//!
//! The replica that accepted the action runs it and beats its heartbeat row; a
//! cancellation (asked on any replica) is seen at the next beat. If the replica stops,
//! the run is marked `unfinished` (at shutdown, or by any replica's sweep once the
//! heartbeat is stale): what was recorded stays, nothing is reported done that was not.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use storage::fleet_actions::{End, Outcome};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wire_models::{AgentId, Command, FleetActionProgress, PROTOCOL_VERSION, RpcReply, RpcRequest, RpcStatus};

use crate::state::AppState;

/// How often the runner records outcomes (or sooner, every [`BATCH`] of them).
const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Outcomes per recording statement at most.
const BATCH: usize = 500;
/// How often the runner beats its heartbeat and looks for a cancellation.
const BEAT_EVERY: Duration = Duration::from_secs(1);
/// How often progress goes on the change feed at most.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// A running action whose heartbeat is older than this has lost its runner.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(10);
/// How often each replica looks for such actions.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// One agent to send to.
#[derive(Debug, Clone)]
pub(crate) struct Recipient {
    pub(crate) agent: AgentId,
    pub(crate) request_id: Uuid,
    /// Offline by the last presence: recorded as skipped, never sent.
    pub(crate) online: bool,
}

/// An action ready to run: stored, with its audit rows.
pub(crate) struct Plan {
    pub(crate) id: Uuid,
    pub(crate) command: Command,
    pub(crate) targets: Vec<Recipient>,
    pub(crate) max_concurrency: usize,
    pub(crate) timeout: Duration,
}

/// Counts of outcomes so far, for the progress messages.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    ok: u32,
    error: u32,
    timeout: u32,
    skipped: u32,
    cancelled: u32,
}

impl Tally {
    fn add(&mut self, outcome: &str) {
        match outcome {
            "ok" => self.ok += 1,
            "error" => self.error += 1,
            "timeout" => self.timeout += 1,
            "skipped" => self.skipped += 1,
            _ => self.cancelled += 1,
        }
    }

    fn done(&self) -> u32 {
        self.ok + self.error + self.timeout + self.skipped + self.cancelled
    }
}

/// Runs `plan` to its end on this replica.
#[tracing::instrument(skip_all, fields(action_id = %plan.id, command = %plan.command.name(), targets = plan.targets.len()))]
pub(crate) async fn run(state: AppState, plan: Plan) {
    let started = Instant::now();
    let total = u32::try_from(plan.targets.len()).unwrap_or(u32::MAX);
    let stop = CancellationToken::new();
    let (tx, rx) = mpsc::channel::<Outcome>(BATCH * 2);
    let recorder =
        tokio::spawn(record(state.clone(), plan.id, plan.command.name().as_str(), total, rx, stop.clone()));

    let (offline, online): (Vec<Recipient>, Vec<Recipient>) =
        plan.targets.into_iter().partition(|t| !t.online);
    for target in offline {
        let outcome = skipped(&target.agent, "the agent is offline");
        if tx.send(outcome).await.is_err() {
            break;
        }
    }
    let (command, timeout) = (Arc::new(plan.command), plan.timeout);
    let sends = futures::stream::iter(online)
        // Checked before each request: a cancelled or stopping run sends nothing more.
        .take_while(|_| {
            let go = !stop.is_cancelled() && !state.shutdown.is_cancelled();
            std::future::ready(go)
        })
        .map(|target| {
            let (state, command) = (state.clone(), Arc::clone(&command));
            async move { send_one(&state, &command, &target, timeout).await }
        })
        .buffer_unordered(plan.max_concurrency.max(1));
    let mut sends = std::pin::pin!(sends);
    while let Some(outcome) = sends.next().await {
        if tx.send(outcome).await.is_err() {
            break;
        }
    }
    drop(tx);
    let how = match recorder.await {
        Ok(Ok(())) if state.shutdown.is_cancelled() && !stop.is_cancelled() => End::Unfinished,
        Ok(Ok(())) if stop.is_cancelled() => End::Cancelled,
        Ok(Ok(())) => End::Finished,
        Ok(Err(err)) => {
            tracing::error!(error = %err, "recording the action's outcomes failed; leaving it unfinished");
            End::Unfinished
        }
        Err(err) => {
            tracing::error!(error = %err, "the action's recorder failed; leaving it unfinished");
            End::Unfinished
        }
    };
    if let Err(err) = storage::fleet_actions::end(&state.pool, plan.id, how).await {
        // The sweep marks it unfinished once its heartbeat is stale.
        tracing::error!(error = %err, "ending the action failed");
    }
    let counts = storage::fleet_actions::counts(&state.pool, plan.id).await.unwrap_or_default();
    let count = |k: &str| u32::try_from(counts.get(k).copied().unwrap_or(0)).unwrap_or(u32::MAX);
    let tally = Tally {
        ok: count("ok"),
        error: count("error"),
        timeout: count("timeout"),
        skipped: count("skipped"),
        cancelled: count("cancelled"),
    };
    let state_name = match how {
        End::Finished => "finished",
        End::Cancelled => "cancelled",
        End::Unfinished => "unfinished",
    };
    publish(&state, plan.id, command.name().as_str(), state_name, total, &tally).await;
    metrics::counter!("opspilot_fleet_actions_total", "state" => state_name).increment(1);
    tracing::info!(
        state = state_name,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "fleet action ended"
    );
}

fn skipped(agent: &AgentId, why: &str) -> Outcome {
    Outcome {
        agent_id: agent.to_string(),
        outcome: "skipped",
        reply: Some(json!({"error": why})),
        duration_ms: 0,
    }
}

/// One agent's request and what became of it.
async fn send_one(state: &AppState, command: &Command, target: &Recipient, timeout: Duration) -> Outcome {
    let started = Instant::now();
    let request = RpcRequest {
        v: PROTOCOL_VERSION,
        request_id: target.request_id,
        command: command.clone(),
        issued_at: chrono::Utc::now(),
        timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
    };
    let answer: Result<RpcReply, natsbus::RequestError> =
        natsbus::request(&state.nats, state.subjects.rpc(&target.agent), &request, timeout).await;
    let duration_ms = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
    let (outcome, reply) = match answer {
        Ok(reply) if reply.request_id != target.request_id => {
            ("error", json!({"error": format!("the agent answered request {}", reply.request_id)}))
        }
        Ok(reply) => (
            if reply.status == RpcStatus::Ok { "ok" } else { "error" },
            json!({"status": reply.status, "output": reply.output, "exit_code": reply.exit_code, "error": reply.error}),
        ),
        Err(natsbus::RequestError::NoResponders { .. }) => {
            return skipped(&target.agent, "no agent is listening");
        }
        Err(natsbus::RequestError::TimedOut { .. }) => {
            ("timeout", json!({"error": "no reply within the timeout"}))
        }
        Err(natsbus::RequestError::InvalidReply { detail, .. }) => {
            ("error", json!({"error": format!("invalid reply: {detail}")}))
        }
        Err(err) => ("error", json!({"error": err.to_string()})),
    };
    metrics::histogram!("opspilot_rpc_seconds", "command" => command.name().as_str(), "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
    Outcome { agent_id: target.agent.to_string(), outcome, reply: Some(reply), duration_ms }
}

/// Records outcomes in batches, beats the heartbeat (stopping the run when a cancel was
/// asked) and publishes progress, until every sender is done.
async fn record(
    state: AppState,
    id: Uuid,
    command: &'static str,
    total: u32,
    mut rx: mpsc::Receiver<Outcome>,
    stop: CancellationToken,
) -> Result<(), storage::StorageError> {
    let mut tally = Tally::default();
    let mut announced = 0;
    let mut batch = Vec::with_capacity(BATCH);
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut flushed, mut beaten, mut progressed) = (Instant::now(), Instant::now(), Instant::now());
    loop {
        let open = tokio::select! {
            outcome = rx.recv() => outcome.map(|outcome| {
                tally.add(outcome.outcome);
                batch.push(outcome);
            }).is_some(),
            _ = tick.tick() => true,
        };
        let progress_due = progressed.elapsed() >= PROGRESS_EVERY && tally.done() != announced;
        // Recorded before it is announced: a reader who looks finds what was said.
        if batch.len() >= BATCH || !open || progress_due || flushed.elapsed() >= FLUSH_EVERY {
            storage::fleet_actions::record(&state.pool, id, &batch).await?;
            batch.clear();
            flushed = Instant::now();
        }
        if !open {
            return Ok(());
        }
        if progress_due {
            progressed = Instant::now();
            announced = tally.done();
            publish(&state, id, command, "running", total, &tally).await;
        }
        if beaten.elapsed() >= BEAT_EVERY {
            beaten = Instant::now();
            if storage::fleet_actions::beat(&state.pool, id).await? && !stop.is_cancelled() {
                tracing::info!("fleet action cancelled; sending nothing more");
                stop.cancel();
            }
        }
    }
}

async fn publish(state: &AppState, id: Uuid, command: &str, run_state: &str, total: u32, tally: &Tally) {
    state
        .feed
        .fleet_action(&FleetActionProgress {
            v: PROTOCOL_VERSION,
            action_id: id,
            command: command.to_owned(),
            state: run_state.to_owned(),
            total,
            done: tally.done(),
            ok: tally.ok,
            error: tally.error,
            timeout: tally.timeout,
            skipped: tally.skipped,
            cancelled: tally.cancelled,
            at: chrono::Utc::now(),
        })
        .await;
}

/// Marks actions whose runner is gone as `unfinished`, on every replica, until shutdown.
pub(crate) async fn sweep_forever(pool: storage::PgPool, shutdown: CancellationToken) {
    loop {
        match storage::fleet_actions::mark_unfinished(&pool, STALE_AFTER).await {
            Ok(ids) => {
                for id in ids {
                    tracing::warn!(action_id = %id, "fleet action lost its runner; marked unfinished");
                    metrics::counter!("opspilot_fleet_actions_total", "state" => "unfinished").increment(1);
                }
            }
            Err(err) => tracing::warn!(error = %err, "looking for abandoned fleet actions failed"),
        }
        if service_kit::service::sleep_or_shutdown(SWEEP_EVERY, &shutdown).await {
            return;
        }
    }
}
