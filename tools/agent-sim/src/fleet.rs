//! Many simulated agents at once: heartbeats spread over the interval, events at a
//! fleet-wide rate, inventory snapshots that sometimes change, and RPC answers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::Rng;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use wire_models::{AgentId, AgentSubject, Command, RpcRequest};

use crate::{Bus, SimAgent};

/// How simulated agents answer actions.
#[derive(Debug, Clone, Default)]
pub struct RpcBehaviour {
    /// Wait this long before answering.
    pub delay: Duration,
    /// And a random extra wait of up to this (hosts do not all answer alike).
    pub jitter: Duration,
    /// Fraction (0..=1) of requests answered with an error.
    pub failure_rate: f64,
    /// Never answer (the backend sees a timeout).
    pub silent: bool,
}

/// How the fleet listens for actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RpcMode {
    /// One subscription per agent on `{root}.{id}.rpc`, as real agents do.
    #[default]
    PerAgent,
    /// One wildcard subscription for the whole fleet (large fleets, benchmarks).
    Shared,
    /// Do not answer actions at all.
    Off,
}

/// What the fleet does while it runs.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub heartbeat_interval: Duration,
    /// Events per second across the whole fleet (0 = none).
    pub events_per_sec: f64,
    /// How often each agent sends an inventory snapshot (None = only at start).
    pub inventory_interval: Option<Duration>,
    /// Fraction (0..=1) of snapshots that differ from the previous one.
    pub inventory_change_ratio: f64,
    pub rpc: RpcBehaviour,
    pub rpc_mode: RpcMode,
    /// Publishes in flight at once.
    pub concurrency: usize,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(10),
            events_per_sec: 0.0,
            inventory_interval: None,
            inventory_change_ratio: 0.1,
            rpc: RpcBehaviour::default(),
            rpc_mode: RpcMode::PerAgent,
            concurrency: 256,
        }
    }
}

/// Counters of what the fleet did; readable while it runs.
#[derive(Debug, Default)]
pub struct FleetStats {
    pub heartbeats: AtomicU64,
    pub events: AtomicU64,
    pub duplicates: AtomicU64,
    pub inventory: AtomicU64,
    pub rpc_answered: AtomicU64,
    pub errors: AtomicU64,
}

impl FleetStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A set of simulated agents.
pub struct Fleet {
    agents: Vec<Arc<SimAgent>>,
    by_id: HashMap<AgentId, usize>,
    pub stats: Arc<FleetStats>,
}

impl Fleet {
    /// `count` agents with ids derived from `seed` (the same seed gives the same ids).
    pub fn numbered(seed: &str, count: usize) -> Self {
        Self::from_agents((0..count).map(|i| SimAgent::numbered(seed, i)).collect())
    }

    pub fn from_agents(agents: Vec<SimAgent>) -> Self {
        let agents: Vec<Arc<SimAgent>> = agents.into_iter().map(Arc::new).collect();
        let by_id = agents.iter().enumerate().map(|(i, a)| (a.id.clone(), i)).collect();
        Self { agents, by_id, stats: Arc::new(FleetStats::default()) }
    }

    pub fn agents(&self) -> &[Arc<SimAgent>] {
        &self.agents
    }

    pub fn get(&self, id: &AgentId) -> Option<&Arc<SimAgent>> {
        self.by_id.get(id).map(|&i| &self.agents[i])
    }

    /// Runs heartbeats, events, inventory and RPC answers until `shutdown`.
    pub async fn run(
        self: &Arc<Self>,
        bus: Bus,
        config: FleetConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut tasks = JoinSet::new();
        tasks.spawn(Arc::clone(self).serve_rpc(
            bus.clone(),
            config.rpc.clone(),
            config.rpc_mode,
            shutdown.clone(),
        ));
        tasks.spawn(Arc::clone(self).heartbeat_loop(bus.clone(), config.clone(), shutdown.clone()));
        tasks.spawn(Arc::clone(self).inventory_loop(bus.clone(), config.clone(), shutdown.clone()));
        if config.events_per_sec > 0.0 {
            tasks.spawn(Arc::clone(self).event_loop(bus, config, shutdown.clone()));
        }
        while let Some(result) = tasks.join_next().await {
            result??;
        }
        Ok(())
    }

    /// Sends one heartbeat for every (non-silent) agent, `concurrency` at a time.
    pub async fn heartbeat_all(&self, bus: &Bus, interval: Duration, concurrency: usize) -> u64 {
        self.heartbeat_some(bus, interval, concurrency, self.agents.clone()).await
    }

    async fn heartbeat_some(
        &self,
        bus: &Bus,
        interval: Duration,
        concurrency: usize,
        agents: Vec<Arc<SimAgent>>,
    ) -> u64 {
        let speaking: Vec<Arc<SimAgent>> = agents.into_iter().filter(|a| !a.is_silent()).collect();
        let sent = futures::stream::iter(speaking)
            .map(|agent| async move { bus.put_heartbeat(&agent.heartbeat(interval)).await })
            .buffer_unordered(concurrency.max(1))
            .fold(0u64, |sent, result| async move {
                match result {
                    Ok(()) => sent + 1,
                    Err(err) => {
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = %err, "heartbeat put failed");
                        sent
                    }
                }
            })
            .await;
        self.stats.heartbeats.fetch_add(sent, Ordering::Relaxed);
        sent
    }

    /// Publishes `count` random events from random agents, `concurrency` at a time.
    /// Returns how many JetStream acknowledged as new.
    pub async fn publish_events(&self, bus: &Bus, count: u64, concurrency: usize) -> u64 {
        if self.agents.is_empty() {
            return 0;
        }
        let events: Vec<_> = {
            let mut rng = rand::rng();
            (0..count)
                .map(|_| {
                    let agent = &self.agents[rng.random_range(0..self.agents.len())];
                    agent.random_event(&mut rng)
                })
                .collect()
        };
        self.publish_prepared(bus, events, concurrency).await
    }

    /// Publishes the given events, `concurrency` at a time; returns how many were new.
    pub async fn publish_prepared(
        &self,
        bus: &Bus,
        events: Vec<wire_models::Event>,
        concurrency: usize,
    ) -> u64 {
        futures::stream::iter(events)
            .map(|event| async move { bus.publish_event(&event).await })
            .buffer_unordered(concurrency.max(1))
            .fold(0u64, |new, result| async move {
                match result {
                    Ok(false) => {
                        self.stats.events.fetch_add(1, Ordering::Relaxed);
                        new + 1
                    }
                    Ok(true) => {
                        self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                        new
                    }
                    Err(err) => {
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = %err, "event publish failed");
                        new
                    }
                }
            })
            .await
    }

    async fn heartbeat_loop(
        self: Arc<Self>,
        bus: Bus,
        config: FleetConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        const TICK: Duration = Duration::from_millis(100);
        let interval = config.heartbeat_interval;
        // Every agent at once first, so the whole fleet is online within one round trip;
        // then each tick sends the agents whose slot it is, spreading load evenly.
        self.heartbeat_all(&bus, interval, config.concurrency).await;
        self.in_turns(TICK, interval, &shutdown, |due| {
            self.heartbeat_some(&bus, interval, config.concurrency, due)
        })
        .await;
        Ok(())
    }

    async fn event_loop(
        self: Arc<Self>,
        bus: Bus,
        config: FleetConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        const TICK: Duration = Duration::from_millis(50);
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut budget = 0.0f64;
        let mut last = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = ticker.tick() => {}
            }
            let now = Instant::now();
            budget += config.events_per_sec * now.duration_since(last).as_secs_f64();
            last = now;
            let due = budget.floor();
            budget -= due;
            let events: Vec<_> = {
                let mut rng = rand::rng();
                let speaking: Vec<_> = self.agents.iter().filter(|a| !a.is_silent()).collect();
                if speaking.is_empty() {
                    continue;
                }
                (0..due as u64)
                    .map(|_| speaking[rng.random_range(0..speaking.len())].random_event(&mut rng))
                    .collect()
            };
            self.publish_prepared(&bus, events, config.concurrency).await;
        }
    }

    async fn inventory_loop(
        self: Arc<Self>,
        bus: Bus,
        config: FleetConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        self.publish_inventory(&bus, &config, self.agents.clone(), true).await;
        let Some(interval) = config.inventory_interval else {
            shutdown.cancelled().await;
            return Ok(());
        };
        const TICK: Duration = Duration::from_millis(250);
        self.in_turns(TICK, interval, &shutdown, |due| self.publish_inventory(&bus, &config, due, false))
            .await;
        Ok(())
    }

    /// Until `shutdown`, every `tick` runs `each` for the agents whose turn it is, so each
    /// agent comes once per `round` and the load is spread evenly over it.
    async fn in_turns<F, Fut, T>(
        &self,
        tick: Duration,
        round: Duration,
        shutdown: &CancellationToken,
        mut each: F,
    ) where
        F: FnMut(Vec<Arc<SimAgent>>) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let slots = usize::try_from((round.as_millis() / tick.as_millis()).max(1)).unwrap_or(1);
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut turn: usize = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            turn = turn.wrapping_add(1);
            let slot = turn % slots;
            each(self.agents.iter().skip(slot).step_by(slots).cloned().collect()).await;
        }
    }

    async fn publish_inventory(
        &self,
        bus: &Bus,
        config: &FleetConfig,
        agents: Vec<Arc<SimAgent>>,
        first: bool,
    ) {
        let reports: Vec<_> = {
            let mut rng = rand::rng();
            agents
                .into_iter()
                .filter(|a| !a.is_silent())
                .map(|a| {
                    a.inventory(!first && rng.random_bool(config.inventory_change_ratio.clamp(0.0, 1.0)))
                })
                .collect()
        };
        let done = futures::stream::iter(reports)
            .map(|report| async move { bus.publish_inventory(&report).await })
            .buffer_unordered(config.concurrency.max(1))
            .filter(|r| std::future::ready(r.is_ok()))
            .count()
            .await;
        self.stats.inventory.fetch_add(done as u64, Ordering::Relaxed);
    }

    /// Answers actions until `shutdown`.
    pub async fn serve_rpc(
        self: Arc<Self>,
        bus: Bus,
        behaviour: RpcBehaviour,
        mode: RpcMode,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut subscriptions = Vec::new();
        match mode {
            RpcMode::Off => {
                shutdown.cancelled().await;
                return Ok(());
            }
            RpcMode::Shared => subscriptions.push(bus.client.subscribe(bus.subjects.all_rpc()).await?),
            RpcMode::PerAgent => {
                for agent in &self.agents {
                    subscriptions.push(bus.client.subscribe(bus.subjects.rpc(&agent.id)).await?);
                }
            }
        }
        // Make sure the server knows the subscriptions before anyone relies on them.
        bus.client.flush().await?;
        let mut messages = futures::stream::select_all(subscriptions);
        let behaviour = Arc::new(behaviour);
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                msg = messages.next() => match msg {
                    Some(msg) => msg,
                    None => return Ok(()),
                },
            };
            let Ok(AgentSubject::Rpc { agent_id }) = bus.subjects.parse(&msg.subject) else { continue };
            let Some(agent) = self.get(&agent_id).cloned() else { continue };
            if agent.is_silent() || behaviour.silent {
                continue;
            }
            let (bus, behaviour, stats) = (bus.clone(), Arc::clone(&behaviour), Arc::clone(&self.stats));
            tokio::spawn(async move {
                let span = natsbus::process_span!(&msg.subject, msg.headers.as_ref(), agent_id = %agent.id);
                async move {
                    match answer(&bus, &agent, &msg, &behaviour).await {
                        Ok(()) => stats.rpc_answered.fetch_add(1, Ordering::Relaxed),
                        Err(err) => {
                            tracing::debug!(error = %err, "rpc answer failed");
                            stats.errors.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
                .instrument(span)
                .await;
            });
        }
    }
}

async fn answer(
    bus: &Bus,
    agent: &SimAgent,
    msg: &async_nats::Message,
    behaviour: &RpcBehaviour,
) -> anyhow::Result<()> {
    let Some(reply_to) = msg.reply.clone() else { return Ok(()) };
    let started = Instant::now();
    let reply = match wire_models::decode::<RpcRequest>(&msg.payload) {
        Ok(request) => {
            tracing::debug!(command = %request.command.name(), request_id = %request.request_id, "rpc received");
            let extra = if behaviour.jitter.is_zero() {
                Duration::ZERO
            } else {
                behaviour.jitter.mul_f64(rand::rng().random_range(0.0..=1.0))
            };
            if !(behaviour.delay + extra).is_zero() {
                tokio::time::sleep(behaviour.delay + extra).await;
            }
            let fail = behaviour.failure_rate > 0.0
                && rand::rng().random_bool(behaviour.failure_rate.clamp(0.0, 1.0));
            if !fail && request.command == Command::CollectInventory {
                bus.publish_inventory(&agent.inventory(false)).await?;
            }
            agent.answer(&request, fail, started)
        }
        Err(err) => agent_client::rpc::bad_request(&msg.payload, &err.to_string()),
    };
    natsbus::reply(&bus.client, reply_to.to_string(), &reply).await?;
    Ok(())
}
