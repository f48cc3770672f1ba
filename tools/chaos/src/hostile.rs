//! Hostile agents on the bus, against the service binaries: one host enrolled through
//! the API turns hostile with its own credentials. It floods oversize events as fast
//! as the server acknowledges them, tries to roll up the heartbeat bucket and sends
//! messages over the bus's per-agent limit, while an attacker with a valid enrollment
//! token tries to take over a good agent's identity. Ten good agents (own keys, own
//! connections), the bulk fleet and the presence probes keep speaking throughout.
//!
//! Afterwards, with exact numbers: every good event is stored, soon; nobody that kept
//! speaking went offline; every good heartbeat key is still in the bucket; the
//! dead-letter stream holds no more of the flood than the flooder's budget; every
//! takeover attempt was refused without credentials; every service is ready and none
//! crashed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agent_sim::{Bus, Fleet, SimAgent};
use anyhow::Context as _;
use async_nats::HeaderMap;
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use natsbus::auth::KeyPair;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use wire_models::{EventKind, Severity, Subjects, WireMessage as _};

use crate::cluster::{
    Cluster, ClusterOptions, DLQ_AGENT_BYTES_PER_HOUR, DLQ_AGENT_MESSAGES_PER_HOUR, PROBE_INTERVAL,
};
use crate::scenarios::Ctx;

/// Good agents besides the flooder.
const GOOD_AGENTS: usize = 10;
/// How often each good agent publishes an event.
const GOOD_EVENT_EVERY: Duration = Duration::from_millis(100);
/// The flooder's events: over the event limit (64 KiB), under the bus's per-agent limit.
const OVERSIZE_EVENT: usize = 100 * 1024;
const _: () = assert!(
    OVERSIZE_EVENT > wire_models::Event::MAX_BYTES
        && (OVERSIZE_EVENT as u64) < natsbus::auth::AGENT_MAX_PAYLOAD
);
/// The flooder's publishes awaiting their ack at once.
const FLOOD_IN_FLIGHT: usize = 64;
/// How often the flooder tries a rollup of the heartbeat bucket and a message over
/// the bus's limit.
const EXTRAS_EVERY: Duration = Duration::from_secs(2);
/// A message over the bus's per-agent limit (and under the server's own, 1 MiB).
const OVER_BUS_LIMIT: usize = natsbus::auth::AGENT_MAX_PAYLOAD as usize + 64 * 1024;
/// How long a good event is retried (same id) before it counts as unacknowledged.
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);
/// The promise: every good event is stored within this long after the flood ends.
const STORED_BOUND: Duration = Duration::from_secs(30);

const PROBLEM_PROOF_REQUIRED: &str = "urn:opspilot:problem:identity-proof-required";
const PROBLEM_INVALID_PROOF: &str = "urn:opspilot:problem:invalid-proof";

/// The hostile-agents step's outcome.
#[derive(Debug, Default)]
pub struct HostileReport {
    pub notes: Vec<String>,
    pub failures: Vec<String>,
    pub elapsed: Duration,
}

impl HostileReport {
    pub fn pass(&self) -> bool {
        self.failures.is_empty()
    }

    fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    fn check(&mut self, ok: bool, failure: impl Into<String>) {
        if !ok {
            self.failures.push(failure.into());
        }
    }
}

/// Starts a cluster of its own, runs the flood and the takeover attempts for `flood`,
/// and checks what they left behind.
pub async fn run(ctx: &Ctx, flood: Duration) -> HostileReport {
    let started = Instant::now();
    let mut report = HostileReport::default();
    let options = ClusterOptions { fleet: ctx.sizes.fleet, probes: 1, ..ClusterOptions::default() };
    match Cluster::start("7-hostile-agents", &ctx.run_dir, &ctx.bins, &ctx.secrets, &options).await {
        Ok(cluster) => {
            if let Err(err) = body(&cluster, flood, &mut report).await {
                report.failures.push(format!("{err:#}"));
            }
            report.failures.extend(cluster.finish().await);
        }
        Err(err) => report.failures.push(format!("starting the cluster: {err:#}")),
    }
    report.elapsed = started.elapsed();
    report
}

/// An agent enrolled through the API, on its own connection, with its key.
struct Agent {
    sim: Arc<SimAgent>,
    bus: Bus,
    key: KeyPair,
    /// The fingerprint it enrolled with.
    fingerprint: String,
}

async fn body(cluster: &Cluster, flood: Duration, report: &mut HostileReport) -> anyhow::Result<()> {
    // The probes' newcomers speak from the start here: no fault silences anyone.
    for probe in &cluster.probes {
        probe.newcomer.set_silent(false);
    }
    let token = cluster.enrollment_token("chaos hostile agents", 100).await?;
    let mut agents = enroll(cluster, &token).await?;
    let flooder = agents.remove(0);
    let good = agents;
    let good_ids: Vec<String> = good.iter().map(|a| a.sim.id.to_string()).collect();

    // Whatever way this ends, the agents' tasks stop with it.
    let background = CancellationToken::new();
    let _stop_background = background.clone().drop_guard();
    let tally = Arc::new(GoodTally::default());
    let failures = Arc::clone(&tally);
    let heartbeats = tokio::spawn(crate::cluster::probe_heartbeats(
        good.iter().map(|a| (Arc::clone(&a.sim), a.bus.clone())).collect(),
        move || {
            failures.heartbeat_failures.fetch_add(1, Ordering::Relaxed);
        },
        background.clone(),
    ));
    let mut everyone: Vec<String> = good_ids.clone();
    for probe in &cluster.probes {
        everyone.push(probe.leaving.id.to_string());
        everyone.push(probe.newcomer.id.to_string());
    }
    everyone.push(cluster.steady.id.to_string());
    wait_online(cluster, &everyone, Duration::from_secs(30)).await?;

    // The flood, the good agents' events and the takeover attempts, all at once.
    let stop = CancellationToken::new();
    let _stop_flood = stop.clone().drop_guard();
    let mut publishers = JoinSet::new();
    for agent in &good {
        publishers.spawn(good_events(
            Arc::clone(&agent.sim),
            agent.bus.clone(),
            Arc::clone(&tally),
            stop.clone(),
        ));
    }
    let flood_task = tokio::spawn(flood_bus(Arc::clone(&flooder.sim), flooder.bus.clone(), stop.clone()));
    let takeover = {
        let victim = &good[0];
        async {
            tokio::time::sleep(flood / 3).await;
            takeovers(cluster, &token, victim).await
        }
    };
    let (takeover, ()) = tokio::join!(takeover, tokio::time::sleep(flood));
    stop.cancel();
    let flood_ended = Instant::now();
    let flooded = flood_task.await.context("the flooder task")?;
    while let Some(done) = publishers.join_next().await {
        done.context("a good agent's task")?;
    }

    // The flooder.
    let connects = flooder.bus.client.statistics().connects.load(Ordering::Relaxed);
    let reconnects = connects.saturating_sub(1);
    let secs = flooded.elapsed.as_secs_f64().max(1e-3);
    report.note(format!(
        "flooder: {} oversize events ({} KiB) acknowledged in {secs:.1} s ({:.0} msg/s, {:.1} MiB/s), \
         {} publishes refused or unanswered; {} messages of {} KiB over the bus limit sent, \
         disconnected {reconnects} times",
        flooded.acked,
        OVERSIZE_EVENT / 1024,
        flooded.acked as f64 / secs,
        flooded.acked as f64 * OVERSIZE_EVENT as f64 / (1024.0 * 1024.0) / secs,
        flooded.failed,
        flooded.over_limit,
        OVER_BUS_LIMIT / 1024,
    ));
    report.check(
        flooded.acked > DLQ_AGENT_MESSAGES_PER_HOUR,
        format!(
            "the flood was no flood: {} oversize events acknowledged, not more than the budget of {}",
            flooded.acked, DLQ_AGENT_MESSAGES_PER_HOUR
        ),
    );
    report.check(
        flooded.over_limit == 0 || reconnects >= 1,
        format!(
            "{} messages over the bus limit ({} bytes) and no disconnect: the limit is not enforced",
            flooded.over_limit,
            natsbus::auth::AGENT_MAX_PAYLOAD
        ),
    );
    report.note(format!(
        "heartbeat bucket rollups by the flooder on its own key: {} tried (Nats-Rollup all and sub), \
         {} refused by the stream, {} accepted, {} unanswered (connection dropped meanwhile)",
        flooded.rollups_tried, flooded.rollups_refused, flooded.rollups_accepted, flooded.rollups_unanswered
    ));
    report.check(
        flooded.rollups_accepted == 0,
        format!("{} rollups of the heartbeat bucket were accepted", flooded.rollups_accepted),
    );
    report.check(flooded.rollups_refused > 0, "no rollup was answered with the stream's refusal");

    // The takeover attempts.
    match takeover {
        Ok(outcome) => {
            report.note(format!(
                "takeover attempts during the flood: {} requests, all refused as they should be \
                 ({}); the victim re-enrolled with its own proof as itself",
                outcome.tried,
                outcome.answers.join(", ")
            ));
            report.failures.extend(outcome.failures);
        }
        Err(err) => report.failures.push(format!("the takeover attempts: {err:#}")),
    }

    // Every good event stored, and how soon.
    let published = tally.published.load(Ordering::Relaxed);
    let (stored, done) = wait_stored(cluster, &good_ids, published, flood_ended + STORED_BOUND).await?;
    let took = done.saturating_duration_since(flood_ended);
    report.note(format!(
        "{published} good events from {} agents ({} retried, {} unacknowledged, {} heartbeat puts failed); \
         {stored} stored {:.2} s after the flood ended (bound {:.0} s)",
        good.len(),
        tally.retried.load(Ordering::Relaxed),
        tally.unacked.load(Ordering::Relaxed),
        tally.heartbeat_failures.load(Ordering::Relaxed),
        took.as_secs_f64(),
        STORED_BOUND.as_secs_f64()
    ));
    report.check(
        stored == published,
        format!(
            "good events: {stored} occurrences stored of {published} published after {:.0} s",
            STORED_BOUND.as_secs_f64()
        ),
    );
    report.check(
        tally.unacked.load(Ordering::Relaxed) == 0,
        format!("{} good events were never acknowledged", tally.unacked.load(Ordering::Relaxed)),
    );
    report.check(published > 0, "the good agents published nothing");

    // Presence: nobody who kept speaking went offline.
    let offline = offline_transitions(cluster, &everyone).await?;
    let fleet_failures = cluster.speakers_never_offline().await?;
    let fleet_offline: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM presence_transitions WHERE state = 'offline' AND agent_id = ANY($1)",
    )
    .bind(cluster.fleet.agents().iter().map(|a| a.id.to_string()).collect::<Vec<_>>())
    .fetch_one(&cluster.stack.db.pool)
    .await?;
    report.note(format!(
        "offline transitions: {} of {} good agents and probes, {fleet_offline} of {} fleet agents",
        offline.values().sum::<i64>(),
        everyone.len(),
        cluster.fleet.agents().len()
    ));
    for (agent, n) in &offline {
        report.failures.push(format!("agent {agent} kept speaking and went offline {n} times"));
    }
    report.failures.extend(fleet_failures);
    let online = online_count(cluster, &good_ids).await?;
    report
        .check(online == good_ids.len() as i64, format!("{online} of {} good agents online", good_ids.len()));

    // Every good heartbeat key survived the rollup attempts.
    let kv = cluster.jetstream().await.get_key_value(&cluster.stack.topology.agents_bucket).await?;
    let mut missing = Vec::new();
    for id in &good_ids {
        if kv.get(id).await?.is_none() {
            missing.push(id.clone());
        }
    }
    report.note(format!(
        "heartbeat keys: {} of {} good agents' still in the bucket",
        good_ids.len() - missing.len(),
        good_ids.len()
    ));
    report.check(missing.is_empty(), format!("heartbeat keys gone: {missing:?}"));

    // The dead-letter stream holds at most the flooder's budget.
    let letters = read_letters(cluster).await?;
    let subjects = &cluster.stack.topology.subjects;
    let (mut mine, mut mine_bytes, mut others) = (0u64, 0u64, 0u64);
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut good_letters = 0u64;
    for letter in &letters {
        let agent = subjects.agent_of(&letter.subject).map(|a| a.to_string());
        if agent.as_deref() == Some(flooder.sim.id.as_str()) {
            mine += 1;
            mine_bytes += letter.payload_bytes;
            *reasons.entry(letter.reason.clone()).or_default() += 1;
        } else {
            others += 1;
            if agent.is_some_and(|a| good_ids.contains(&a)) {
                good_letters += 1;
            }
        }
    }
    let reasons: Vec<String> = reasons.iter().map(|(r, n)| format!("{r} x{n}")).collect();
    report.note(format!(
        "dead-letter stream: {} letters, {mine} of them the flooder's ({}) with {mine_bytes} payload bytes \
         (budget per agent and hour: {DLQ_AGENT_MESSAGES_PER_HOUR} letters, {DLQ_AGENT_BYTES_PER_HOUR} bytes); \
         {others} from others",
        letters.len(),
        if reasons.is_empty() { "none".to_owned() } else { reasons.join(", ") },
    ));
    report.check(
        mine <= DLQ_AGENT_MESSAGES_PER_HOUR,
        format!("{mine} letters parked for the flooder, over its budget of {DLQ_AGENT_MESSAGES_PER_HOUR}"),
    );
    report.check(
        mine_bytes <= DLQ_AGENT_BYTES_PER_HOUR,
        format!(
            "{mine_bytes} payload bytes parked for the flooder, over its budget of {DLQ_AGENT_BYTES_PER_HOUR}"
        ),
    );
    report.check(good_letters == 0, format!("{good_letters} letters of good agents were dead-lettered"));

    // Every service still ready, on its admin port (and the gateway on its API port).
    let mut ready = 0;
    let names = cluster.all_names();
    for name in &names {
        let admin = cluster.is_admin_ready(name).await;
        let public = cluster.is_ready(name).await;
        report.check(admin && public, format!("{name} is not ready after the flood"));
        ready += usize::from(admin && public);
    }
    report.note(format!("{ready} of {} services ready after the flood", names.len()));

    background.cancel();
    let _ = heartbeats.await;
    Ok(())
}

/// Enrolls the flooder and the good agents through the API with keys of their own and
/// connects each with its own credentials (every seed registered as a secret).
async fn enroll(cluster: &Cluster, token: &str) -> anyhow::Result<Vec<Agent>> {
    let seed = format!("{}-{}-hostile", cluster.name, test_support::unique_token());
    let fleet = Fleet::numbered(&seed, 1 + GOOD_AGENTS);
    let fingerprints: Vec<String> = fleet.agents().iter().map(|a| a.machine_fingerprint()).collect();
    let enrolled = agent_sim::enroll::enroll(&cluster.api_base, token, &fleet).await?;
    let mut agents = Vec::new();
    for (agent, fingerprint) in enrolled.into_iter().zip(fingerprints) {
        let creds = agent.creds.as_deref().context("enrollment returned no credentials")?;
        cluster.secrets.add_creds(&format!("{} agent {}", cluster.name, agent.agent.id), creds);
        let seed = crate::secrets::creds_seeds(creds).into_iter().next().context("no seed in the creds")?;
        let key = KeyPair::from_seed(&seed)?;
        let client = agent_sim::enroll::connect_as(&agent, Duration::from_secs(5)).await?;
        let bus =
            Bus::new(client, cluster.stack.topology.subjects.clone(), &cluster.stack.topology.agents_bucket)
                .await?;
        agents.push(Agent { sim: Arc::new(agent.agent), bus, key, fingerprint });
    }
    Ok(agents)
}

#[derive(Default)]
struct GoodTally {
    /// Events acknowledged by JetStream (each counted once, retries included).
    published: AtomicU64,
    /// Publish attempts that failed and were retried with the same id.
    retried: AtomicU64,
    /// Events never acknowledged within [`GIVE_UP_AFTER`].
    unacked: AtomicU64,
    heartbeat_failures: AtomicU64,
}

/// A good agent's events, one every [`GOOD_EVENT_EVERY`] until `stop`; each retried
/// with its id until acknowledged, as a real agent does.
async fn good_events(agent: Arc<SimAgent>, bus: Bus, tally: Arc<GoodTally>, stop: CancellationToken) {
    #[allow(clippy::expect_used)] // a constant kind
    let kind = EventKind::parse("disk_full").expect("a valid kind");
    let mut tick = tokio::time::interval(GOOD_EVENT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let event = agent.event(kind.clone(), Severity::Warning, "df", &format!("/var nearly full ({n})"));
        n += 1;
        let first = Instant::now();
        loop {
            match tokio::time::timeout(Duration::from_secs(5), bus.publish_event(&event)).await {
                Ok(Ok(_)) => {
                    tally.published.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                _ if first.elapsed() >= GIVE_UP_AFTER => {
                    tally.unacked.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                _ => {
                    tally.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// What the flooder managed.
#[derive(Debug, Default)]
struct Flooded {
    acked: u64,
    failed: u64,
    rollups_tried: u64,
    rollups_refused: u64,
    rollups_accepted: u64,
    /// Rollups that got no answer (the connection was dropped meanwhile).
    rollups_unanswered: u64,
    over_limit: u64,
    elapsed: Duration,
}

/// How the stream answered a rollup.
enum Rollup {
    Accepted,
    Refused,
    Unanswered,
}

/// The flooder: oversize events under its own subject as fast as the server
/// acknowledges them ([`FLOOD_IN_FLIGHT`] pipelined); every [`EXTRAS_EVERY`] a put
/// with `Nats-Rollup: all`, then one with `Nats-Rollup: sub`, on its own heartbeat
/// key, then a message over the bus's per-agent limit.
async fn flood_bus(agent: Arc<SimAgent>, bus: Bus, stop: CancellationToken) -> Flooded {
    let started = Instant::now();
    #[allow(clippy::expect_used)] // a constant kind
    let subject = bus.subjects.event(&agent.id, &EventKind::parse("oom").expect("a valid kind"));
    let kv_subject = Subjects::kv_key_subject(&bus.kv.name, &agent.id);
    let payload = Bytes::from(vec![b'x'; OVERSIZE_EVENT]);
    let mut flooded = Flooded::default();
    let mut inflight = FuturesUnordered::new();
    let mut extras = JoinSet::new();
    let mut next_extras = Instant::now() + EXTRAS_EVERY / 2;
    while !stop.is_cancelled() {
        while inflight.len() < FLOOD_IN_FLIGHT {
            let (js, subject, payload) = (bus.js.clone(), subject.clone(), payload.clone());
            inflight.push(async move {
                match js.publish(subject, payload).await {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                }
            });
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(acked) = inflight.next() => {
                if acked { flooded.acked += 1 } else { flooded.failed += 1 }
            }
        }
        if Instant::now() >= next_extras {
            next_extras += EXTRAS_EVERY;
            flooded.rollups_tried += 2;
            flooded.over_limit += 1;
            let heartbeat = wire_models::encode(&agent.heartbeat(PROBE_INTERVAL)).unwrap_or_default();
            let (bus, kv_subject, subject) = (bus.clone(), kv_subject.clone(), subject.clone());
            extras.spawn(async move {
                let mut answers = Vec::new();
                for mode in ["all", "sub"] {
                    answers.push(rollup(&bus, &kv_subject, mode, Bytes::from(heartbeat.clone())).await);
                }
                // The server drops the connection on this one; the client reconnects.
                let _ = bus.client.publish(subject, Bytes::from(vec![b'y'; OVER_BUS_LIMIT])).await;
                answers
            });
        }
    }
    flooded.elapsed = started.elapsed();
    // What is still in flight is counted if it is answered soon.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(acked) = inflight.next().await {
            if acked {
                flooded.acked += 1;
            } else {
                flooded.failed += 1;
            }
        }
    })
    .await;
    while let Some(done) = extras.join_next().await {
        for answer in done.unwrap_or_default() {
            match answer {
                Rollup::Accepted => flooded.rollups_accepted += 1,
                Rollup::Refused => flooded.rollups_refused += 1,
                Rollup::Unanswered => flooded.rollups_unanswered += 1,
            }
        }
    }
    flooded
}

/// A put with `Nats-Rollup: {mode}` on a heartbeat key, and how the stream answered.
async fn rollup(bus: &Bus, kv_subject: &str, mode: &'static str, payload: Bytes) -> Rollup {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Rollup", mode);
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        bus.js.publish_with_headers(kv_subject.to_owned(), headers, payload).await?.await
    })
    .await;
    match answer {
        Ok(Ok(_)) => Rollup::Accepted,
        // The stream's own refusal ("rollup not permitted", err_code 10111).
        Ok(Err(err)) if err.to_string().to_lowercase().contains("rollup") => Rollup::Refused,
        Ok(Err(_)) | Err(_) => Rollup::Unanswered,
    }
}

/// What the takeover attempts got.
struct Takeover {
    tried: usize,
    answers: Vec<String>,
    failures: Vec<String>,
}

impl Takeover {
    /// Records one answer, failing unless it is `want` with problem type `problem`.
    fn expect(&mut self, what: &str, answer: &(StatusCode, Value), want: StatusCode, problem: &str) {
        self.tried += 1;
        let (status, body) = answer;
        self.answers.push(format!("{what}: {}", status.as_u16()));
        if *status != want || body["type"] != problem {
            self.failures.push(format!("{what}: answered {status} {body}, not {want} {problem}"));
        }
        if body.get("nats_credentials").is_some() || body.get("agent_id").is_some() {
            self.failures.push(format!("{what}: the answer carries an identity: {body}"));
        }
    }
}

/// An attacker with a valid enrollment token and the victim's fingerprint (not a
/// secret) tries to take the victim's identity over: without a proof, with a proof
/// forged with its own key claiming the victim's, and by replaying a proof the victim
/// made. The victim's own re-enrollment (with its proof) goes through in between.
async fn takeovers(cluster: &Cluster, token: &str, victim: &Agent) -> anyhow::Result<Takeover> {
    let attacker = KeyPair::new_user();
    cluster.secrets.add(format!("{} attacker key seed", cluster.name), attacker.seed()?);
    let attacker_public = attacker.public_key();
    let victim_public = victim.key.public_key();
    let fingerprint = victim.fingerprint.as_str();
    let mut outcome = Takeover { tried: 0, answers: Vec::new(), failures: Vec::new() };

    // A valid token, the fingerprint, a key of its own: a conflict for an admin.
    let answer = enroll_request(
        cluster,
        &json!({"token": token, "machine_fingerprint": fingerprint, "hostname": "evil-host",
                "nats_public_key": attacker_public}),
    )
    .await?;
    outcome.expect("token, fingerprint and own key", &answer, StatusCode::CONFLICT, PROBLEM_PROOF_REQUIRED);

    // A proof signed with its own key that claims the victim's.
    let nonce = cluster.enroll_challenge().await?;
    let mut forged = proof(&attacker, &nonce, fingerprint, Some(&attacker_public))?;
    forged["public_key"] = json!(victim_public);
    let answer = enroll_request(
        cluster,
        &json!({"token": token, "machine_fingerprint": fingerprint, "hostname": "evil-host",
                "nats_public_key": attacker_public, "proof": forged}),
    )
    .await?;
    outcome.expect(
        "proof forged for the victim's key",
        &answer,
        StatusCode::UNAUTHORIZED,
        PROBLEM_INVALID_PROOF,
    );

    // The victim proves itself (and stays itself); its proof cannot be used again.
    let nonce = cluster.enroll_challenge().await?;
    let victim_proof = proof(&victim.key, &nonce, fingerprint, Some(&victim_public))?;
    let own = json!({"machine_fingerprint": fingerprint, "hostname": victim.sim.hostname,
                     "nats_public_key": victim_public, "proof": victim_proof});
    let (status, body) = enroll_request(cluster, &own).await?;
    if status != StatusCode::OK || body["agent_id"] != victim.sim.id.as_str() {
        outcome.failures.push(format!(
            "the victim re-enrolling with its own proof answered {status} {}, not 200 as {}",
            body["agent_id"], victim.sim.id
        ));
    }
    let answer = enroll_request(cluster, &own).await?;
    outcome.expect(
        "the victim's proof replayed as is",
        &answer,
        StatusCode::UNAUTHORIZED,
        PROBLEM_INVALID_PROOF,
    );
    let mut replayed = own.clone();
    replayed["nats_public_key"] = json!(attacker_public);
    replayed["hostname"] = json!("evil-host");
    replayed["token"] = json!(token);
    let answer = enroll_request(cluster, &replayed).await?;
    outcome.expect(
        "the victim's proof replayed with the attacker's key",
        &answer,
        StatusCode::UNAUTHORIZED,
        PROBLEM_INVALID_PROOF,
    );

    // The attempt waits for an administrator.
    let response = cluster
        .http
        .get(format!("{}/api/v1/identity-conflicts?status=pending", cluster.api_base))
        .bearer_auth(&cluster.admin_token)
        .send()
        .await?;
    let page: Value = response.json().await?;
    let recorded = page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["agent_id"] == victim.sim.id.as_str() && c["public_key"] == attacker_public.as_str());
    if !recorded {
        outcome.failures.push(format!("the takeover attempt is not a pending identity conflict: {page}"));
    }
    let owner: Option<String> = sqlx::query_scalar("SELECT identity_key FROM agents WHERE id = $1")
        .bind(victim.sim.id.as_str())
        .fetch_one(&cluster.stack.db.pool)
        .await?;
    if owner.as_deref() != Some(victim_public.as_str()) {
        outcome.failures.push(format!("the victim's key on record is {owner:?} now, not its own"));
    }
    Ok(outcome)
}

async fn enroll_request(cluster: &Cluster, body: &Value) -> anyhow::Result<(StatusCode, Value)> {
    let response =
        cluster.http.post(format!("{}/api/v1/agents/enroll", cluster.api_base)).json(body).send().await?;
    let status = response.status();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

/// A proof: `signer`'s signature over the nonce, the fingerprint and the key.
fn proof(signer: &KeyPair, nonce: &str, fingerprint: &str, key: Option<&str>) -> anyhow::Result<Value> {
    let message = wire_models::enroll_proof_message(nonce, fingerprint, key);
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signer.sign(&message)?);
    Ok(json!({"public_key": signer.public_key(), "nonce": nonce, "signature": signature}))
}

async fn wait_online(cluster: &Cluster, ids: &[String], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let online = online_count(cluster, ids).await?;
        if online == ids.len() as i64 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "only {online} of {} agents came online", ids.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn online_count(cluster: &Cluster, ids: &[String]) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM agents WHERE id = ANY($1) AND status = 'online'")
        .bind(ids)
        .fetch_one(&cluster.stack.db.pool)
        .await?)
}

/// Waits until the good agents' incidents count `published` occurrences (or the
/// deadline); returns the last count and when it was read.
async fn wait_stored(
    cluster: &Cluster,
    ids: &[String],
    published: u64,
    deadline: Instant,
) -> anyhow::Result<(u64, Instant)> {
    loop {
        let stored: i64 = sqlx::query_scalar(
            "SELECT COALESCE(sum(occurrences), 0)::bigint FROM incidents WHERE agent_id = ANY($1) AND type <> $2",
        )
        .bind(ids)
        .bind(storage::incidents::OFFLINE_INCIDENT_TYPE)
        .fetch_one(&cluster.stack.db.pool)
        .await?;
        let stored = u64::try_from(stored).unwrap_or(0);
        let now = Instant::now();
        if stored >= published || now >= deadline {
            return Ok((stored, now));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Offline transitions per agent, for the agents that have any.
async fn offline_transitions(cluster: &Cluster, ids: &[String]) -> anyhow::Result<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT agent_id, count(*) FROM presence_transitions
         WHERE state = 'offline' AND agent_id = ANY($1) GROUP BY agent_id",
    )
    .bind(ids)
    .fetch_all(&cluster.stack.db.pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// One letter of the dead-letter stream, as far as the budget is concerned.
struct Letter {
    subject: String,
    reason: String,
    payload_bytes: u64,
}

/// Every letter in the dead-letter stream (read without acks).
async fn read_letters(cluster: &Cluster) -> anyhow::Result<Vec<Letter>> {
    let js = cluster.jetstream().await;
    crate::accounting::read_all(&js, &cluster.stack.topology.dlq_stream, |msg| {
        let header = |name: &str| {
            msg.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned()).unwrap_or_default()
        };
        Letter {
            subject: header(wire_models::HEADER_DLQ_SUBJECT),
            reason: header(wire_models::HEADER_DLQ_REASON),
            payload_bytes: msg.payload.len() as u64,
        }
    })
    .await
}
