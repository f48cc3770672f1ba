//! Scenario 7: the live stream under ingest. One api-gateway and one event-ingestor;
//! `clients` operators on `GET /api/v1/stream`, each taking every event type as the
//! console does; agents publish events at `rate` a second for `seconds`. Of those,
//! `new_rate` a second open a new incident (a distinct error text, so each is one
//! `incident.created`); the rest recur on the open incidents of `recurring_agents`
//! agents (one per agent and each of the simulator's seven kinds), which the ingestor
//! coalesces into one `incident.updated` per incident a second.
//!
//! Measured, for each new incident: from its row's `created_at` in Postgres (the start
//! of the transaction that inserted it, so the insert and its commit are part of the
//! figure) to the moment the last of the clients read its `incident.created` (one that
//! some client never read counts as never arriving); for the coalesced updates, from the
//! ingestor's `updated_at` (its publish) to the last client.
//! And the gateway's memory before the clients connect, with them connected, and under
//! the load. The baseline is core NATS fanning the same number of messages a second out
//! to as many subscribers, each on a connection of its own: publish to the last
//! subscriber, measured alone in the same run.
//!
//! The clients run in this process on the same cores as everything else, so they are
//! kept lean: one task each on a plain TCP connection, reading whatever has arrived and
//! looking only at the `id:`, `event:` and `data:` lines (the data only of an entry no
//! client read before).

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_sim::{Bus, Fleet};
use bytes::Bytes;
use futures::StreamExt;
use natsbus::auth::Identity;
use rand::Rng as _;
use test_support::Stack;
use tokio_util::sync::CancellationToken;
use wire_models::{EventKind, Severity};

use crate::ingest::{ingestor_env, prepare, wait_drained};
use crate::proc::{Sampler, rss_mib};
use crate::report::{Row, percentile};
use crate::{gateway, services};

/// What the stream scenario does.
pub(crate) struct Load {
    pub(crate) clients: usize,
    /// Events a second, for `seconds`.
    pub(crate) rate: u32,
    pub(crate) seconds: u64,
    /// Of `rate`, events a second that open a new incident.
    pub(crate) new_rate: u32,
    /// Agents whose events recur: seven open incidents each, so the feed carries about
    /// seven times this many updates a second.
    pub(crate) recurring_agents: usize,
}

/// Enrolled agents; new incidents are spread over all of them.
const AGENTS: usize = 1000;
/// Publishes awaiting their acknowledgement at once.
const IN_FLIGHT: usize = 1024;
/// Streams being opened at once.
const OPENING: usize = 64;
/// Kinds of the new incidents (each also a kind the simulator sends).
const NEW_KINDS: [(&str, Severity, &str); 4] = [
    ("service_down", Severity::Critical, "healthcheck"),
    ("connection_refused", Severity::Error, "app"),
    ("disk_full", Severity::Error, "df"),
    ("cert_expiry", Severity::Warning, "certbot"),
];

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// `k` in letters `g` to `z`: a word the ingestor's normalisation keeps (no digits, no
/// hex), so every `k` is an error text, and an incident, of its own.
fn word(mut k: u64) -> String {
    let mut out = Vec::new();
    loop {
        out.push(b'g' + (k % 20) as u8);
        k /= 20;
        if k == 0 {
            break;
        }
    }
    String::from_utf8(out).unwrap_or_default()
}

/// What the clients heard of each entry, by its place past `base` (a feed sequence
/// number for the stream, a message number for the NATS baseline).
struct Tally {
    /// Entries up to this one are not counted (`u64::MAX`: none is yet).
    base: AtomicU64,
    first: Vec<AtomicI64>,
    last: Vec<AtomicI64>,
    count: Vec<AtomicU32>,
    /// What each entry was, noted by the first client to read it.
    entries: Mutex<Vec<(usize, Heard)>>,
    beyond: AtomicU64,
    lagged: AtomicUsize,
    ended: AtomicUsize,
}

#[derive(Debug, Clone, Copy)]
enum Heard {
    /// An `incident.created` of this incident.
    Created(i64),
    /// An `incident.updated` published at this time (microseconds).
    Updated(i64),
    Other,
}

impl Tally {
    fn new(capacity: usize) -> Self {
        Self {
            base: AtomicU64::new(u64::MAX),
            first: (0..capacity).map(|_| AtomicI64::new(i64::MAX)).collect(),
            last: (0..capacity).map(|_| AtomicI64::new(0)).collect(),
            count: (0..capacity).map(|_| AtomicU32::new(0)).collect(),
            entries: Mutex::new(Vec::new()),
            beyond: AtomicU64::new(0),
            lagged: AtomicUsize::new(0),
            ended: AtomicUsize::new(0),
        }
    }

    /// Counts the entries after `seq` from now on.
    fn start_after(&self, seq: u64) {
        self.base.store(seq, Ordering::Relaxed);
    }

    /// Notes that a client read entry `seq` at `at`: its slot, and whether it is the
    /// first client to read it (`None` for an entry not counted or past the end).
    fn heard(&self, seq: u64, at: i64) -> Option<(usize, bool)> {
        let base = self.base.load(Ordering::Relaxed);
        let slot = usize::try_from(seq.checked_sub(base.checked_add(1)?)?).ok()?;
        if slot >= self.count.len() {
            self.beyond.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.first[slot].fetch_min(at, Ordering::Relaxed);
        self.last[slot].fetch_max(at, Ordering::Relaxed);
        Some((slot, self.count[slot].fetch_add(1, Ordering::Relaxed) == 0))
    }

    fn note(&self, slot: usize, heard: Heard) {
        // Held for a push, never across an await.
        if let Ok(mut entries) = self.entries.lock() {
            entries.push((slot, heard));
        }
    }

    fn entries(&self) -> Vec<(usize, Heard)> {
        self.entries.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

/// One Server-Sent Event block (the lines between two blank lines).
fn heard_block(block: &[u8], at: i64, tally: &Tally) {
    let (mut seq, mut event, mut data): (Option<u64>, &[u8], &[u8]) = (None, b"", b"");
    for line in block.split(|&b| b == b'\n') {
        if let Some(v) = line.strip_prefix(b"id:") {
            seq = std::str::from_utf8(v.trim_ascii()).ok().and_then(|s| s.parse().ok());
        } else if let Some(v) = line.strip_prefix(b"event:") {
            event = v.trim_ascii();
        } else if let Some(v) = line.strip_prefix(b"data:") {
            data = v.trim_ascii();
        }
    }
    if event == b"lagged" {
        tally.lagged.fetch_add(1, Ordering::Relaxed);
    }
    let Some((slot, true)) = seq.and_then(|seq| tally.heard(seq, at)) else { return };
    let body: serde_json::Value = serde_json::from_slice(data).unwrap_or_default();
    let heard = match event {
        b"incident.created" => body["incident_id"].as_i64().map_or(Heard::Other, Heard::Created),
        b"incident.updated" => body["updated_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map_or(Heard::Other, |t| Heard::Updated(t.timestamp_micros())),
        _ => Heard::Other,
    };
    tally.note(slot, heard);
}

/// A chunked response body, decoded as it arrives.
#[derive(Default)]
struct Chunked {
    /// Bytes left of the current chunk's data, or of the CRLF after it.
    left: usize,
    in_data: bool,
}

impl Chunked {
    /// Moves the body bytes of `input` to `body`; returns how many bytes of `input` it
    /// used (a chunk-size line split across reads waits for the rest), or `None` at the
    /// end of the body or on a malformed size.
    fn decode(&mut self, input: &[u8], body: &mut Vec<u8>) -> Option<usize> {
        let mut at = 0;
        loop {
            if self.left > 0 {
                let take = self.left.min(input.len() - at);
                if self.in_data {
                    body.extend_from_slice(&input[at..at + take]);
                }
                self.left -= take;
                at += take;
                if self.left > 0 {
                    return Some(at);
                }
                if self.in_data {
                    self.in_data = false;
                    self.left = 2;
                }
                continue;
            }
            let Some(end) = find(&input[at..], b"\r\n") else { return Some(at) };
            let size = input[at..at + end].split(|&b| b == b';').next()?.trim_ascii();
            let size = usize::from_str_radix(std::str::from_utf8(size).ok()?, 16).ok()?;
            at += end + 2;
            if size == 0 {
                return None;
            }
            self.left = size;
            self.in_data = true;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One operator's stream over a plain TCP connection (HTTP/1.1, the response's chunks
/// decoded here), read until `stop` or until the gateway ends it. Each read takes
/// whatever has arrived, so a client that is behind catches up in few system calls.
async fn client(
    port: u16,
    token: String,
    opening: Arc<tokio::sync::Semaphore>,
    connected: Arc<AtomicUsize>,
    tally: Arc<Tally>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    let mut raw: Vec<u8> = Vec::new();
    let mut stream = {
        let _turn = opening.acquire().await?;
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let request = format!(
            "GET /api/v1/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\
             Accept: text/event-stream\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        loop {
            let n = stream.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "the stream closed before its headers");
            raw.extend_from_slice(&buf[..n]);
            if let Some(end) = find(&raw, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
                anyhow::ensure!(head.starts_with("http/1.1 200"), "the stream answered {head}");
                anyhow::ensure!(
                    head.contains("transfer-encoding: chunked"),
                    "the stream is not chunked: {head}"
                );
                raw.drain(..end + 4);
                break;
            }
        }
        stream
    };
    connected.fetch_add(1, Ordering::Relaxed);
    let mut chunked = Chunked::default();
    let mut body: Vec<u8> = Vec::new();
    loop {
        if !raw.is_empty() {
            let at = now_micros();
            let Some(used) = chunked.decode(&raw, &mut body) else {
                tally.ended.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            };
            raw.drain(..used);
            let mut done = 0;
            while let Some(end) = find(&body[done..], b"\n\n") {
                heard_block(&body[done..done + end], at, &tally);
                done += end + 2;
            }
            body.drain(..done);
        }
        let n = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            n = stream.read(&mut buf) => n?,
        };
        if n == 0 {
            tally.ended.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

/// The event number `j` of the load: every `stride`-th opens a new incident.
fn event(fleet: &Fleet, j: u64, stride: Option<u64>, recurring: usize) -> wire_models::Event {
    let agents = fleet.agents();
    match stride {
        Some(stride) if j.is_multiple_of(stride) => {
            let k = j / stride;
            let agent = &agents[usize::try_from(k).unwrap_or(0) % agents.len()];
            let (kind, severity, source) = NEW_KINDS[usize::try_from(k).unwrap_or(0) % NEW_KINDS.len()];
            let kind = EventKind::parse(kind).expect("constant kinds are valid");
            agent.event(kind, severity, source, &format!("probe {} failed: upstream unreachable", word(k)))
        }
        _ => {
            let mut rng = rand::rng();
            let agent = &agents[rng.random_range(0..recurring.clamp(1, agents.len()))];
            agent.random_event(&mut rng)
        }
    }
}

/// Publishes the load at its pace; returns (acknowledged, seconds from start to the
/// last acknowledgement).
async fn publish_paced(bus: &Bus, fleet: &Fleet, load: &Load) -> (u64, f64) {
    let total = u64::from(load.rate) * load.seconds;
    let stride = (load.new_rate > 0).then(|| u64::from(load.rate / load.new_rate.min(load.rate)).max(1));
    let interval = 1.0 / f64::from(load.rate.max(1));
    let start = tokio::time::Instant::now();
    let acked = futures::stream::iter(0..total)
        .map(|j| {
            let event = event(fleet, j, stride, load.recurring_agents);
            let at = start + Duration::from_secs_f64(j as f64 * interval);
            async move {
                tokio::time::sleep_until(at).await;
                bus.publish_event(&event).await
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .fold(0u64, |acked, result| async move { acked + u64::from(result.is_ok()) })
        .await;
    (acked, start.elapsed().as_secs_f64())
}

/// Baseline: core NATS, `rate` messages a second for `seconds` to `subscribers`
/// subscribers on connections of their own; publish to the last subscriber (p50, p99,
/// in ms) and the deliveries that did not arrive.
async fn nats_fanout(
    stack: &Stack,
    subscribers: usize,
    rate: f64,
    seconds: u64,
) -> anyhow::Result<(f64, f64, u64)> {
    let subject = format!("bench.fanout.{}", uuid::Uuid::new_v4().simple());
    let total = ((rate * seconds as f64) as usize).max(1);
    let tally = Arc::new(Tally::new(total));
    tally.start_after(0);
    let clients: Vec<_> = futures::stream::iter(0..subscribers)
        .map(|_| {
            let (subject, tally) = (subject.clone(), Arc::clone(&tally));
            async move {
                let client = stack.client().await;
                let mut subscription = client.subscribe(subject).await?;
                client.flush().await?;
                let reader = tokio::spawn(async move {
                    while let Some(msg) = subscription.next().await {
                        let at = now_micros();
                        if let Some(seq) = msg.payload.get(..8).and_then(|b| b.try_into().ok()) {
                            tally.heard(u64::from_be_bytes(seq), at);
                        }
                    }
                });
                anyhow::Ok((client, reader))
            }
        })
        .buffer_unordered(OPENING)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let publisher = stack.client().await;
    let mut published = vec![0i64; total];
    let start = tokio::time::Instant::now();
    for (i, at) in published.iter_mut().enumerate() {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        // As big as a stream event's data (an `incident.created`, about 300 bytes).
        let mut payload = vec![b'x'; 300];
        payload[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
        *at = now_micros();
        publisher.publish(subject.clone(), Bytes::from(payload)).await?;
    }
    publisher.flush().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut latencies = Vec::with_capacity(total);
    let mut missed = 0u64;
    for (slot, at) in published.iter().enumerate() {
        let count = tally.count[slot].load(Ordering::Relaxed) as usize;
        missed += (subscribers - count.min(subscribers)) as u64;
        if count == subscribers {
            latencies.push((tally.last[slot].load(Ordering::Relaxed) - at) as f64 / 1000.0);
        }
    }
    for (client, reader) in clients {
        reader.abort();
        drop(client);
    }
    latencies.sort_by(f64::total_cmp);
    Ok((percentile(&latencies, 0.5), percentile(&latencies, 0.99), missed))
}

/// Waits until `done` holds, checking every 50 ms, for at most `timeout`.
async fn until(what: &str, timeout: Duration, done: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "{what} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

pub(crate) async fn run(load: &Load, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let setup = prepare(AGENTS, "bench-stream").await?;
    let stack = &setup.stack;
    let ingestor =
        services::start(stack, &Identity::EventIngestor, "event-ingestor", &ingestor_env()).await?;
    let gw = gateway::start(stack).await?;
    let events_stream = &stack.topology.events_stream;
    let js = stack.jetstream().await;
    let feed_end = || natsbus::feed::bounds(&js, &stack.topology.incidents_stream);

    // The recurring incidents exist before anyone listens: each recurring agent sends
    // about ten events of each of the seven kinds.
    let warm: Vec<_> = {
        let mut rng = rand::rng();
        let recurring = load.recurring_agents.clamp(1, AGENTS);
        (0..recurring * 70).map(|i| setup.fleet.agents()[i % recurring].random_event(&mut rng)).collect()
    };
    setup.fleet.publish_prepared(&setup.bus, warm, 256).await;
    wait_drained(stack, events_stream, "event-ingestor", Duration::from_secs(60)).await?;
    // Past the ingestor's round of coalesced updates: the feed is quiet from here on
    // until the load starts.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rss_before = rss_mib(gw.service.pid()).unwrap_or(0.0);

    let capacity = usize::try_from(u64::from(load.rate) * load.seconds)? + 100_000;
    let tally = Arc::new(Tally::new(capacity));
    let opening = Arc::new(tokio::sync::Semaphore::new(OPENING));
    let connected = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..load.clients {
        readers.spawn(client(
            gw.port,
            gw.token.clone(),
            Arc::clone(&opening),
            Arc::clone(&connected),
            Arc::clone(&tally),
            stop.clone(),
        ));
    }
    until("every stream client connected", Duration::from_secs(120), || {
        connected.load(Ordering::Relaxed) == load.clients
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_connected = rss_mib(gw.service.pid()).unwrap_or(0.0);
    // Every client listens and the feed is quiet: what comes after its end now was sent
    // to all of them.
    let base = feed_end().await?.last_seq;
    tally.start_after(base);

    let mut sampler = Sampler::start(gw.service.pid());
    let sampling = async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            sampler.sample();
        }
    };
    let (acked, publish_secs) = tokio::select! {
        published = publish_paced(&setup.bus, &setup.fleet, load) => published,
        () = sampling => unreachable!("sampling never ends"),
    };
    wait_drained(stack, events_stream, "event-ingestor", Duration::from_secs(300)).await?;
    // The last round of coalesced updates, and its way to the clients.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    sampler.sample();
    let (gw_cores, gw_peak_rss) = (sampler.cores(), sampler.peak_rss_mib);
    let end = feed_end().await?.last_seq;
    stop.cancel();
    let mut failed = 0;
    while let Some(result) = readers.join_next().await {
        if !matches!(result, Ok(Ok(()))) {
            failed += 1;
        }
    }
    gw.service.stop().await;
    ingestor.stop().await;

    // What every client heard, against when it happened.
    let entries = tally.entries();
    let ids: Vec<i64> = entries
        .iter()
        .filter_map(|(_, h)| if let Heard::Created(id) = h { Some(*id) } else { None })
        .collect();
    let created_at: std::collections::HashMap<i64, i64> =
        sqlx::query_as::<_, (i64, chrono::DateTime<chrono::Utc>)>(
            "SELECT id, created_at FROM incidents WHERE id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&stack.db.pool)
        .await?
        .into_iter()
        .map(|(id, at)| (id, at.timestamp_micros()))
        .collect();
    let clients = u32::try_from(load.clients)?;
    let sent = usize::try_from(end.saturating_sub(base))?.min(capacity);
    let mut missed: u64 = (0..sent)
        .map(|slot| u64::from(clients.saturating_sub(tally.count[slot].load(Ordering::Relaxed))))
        .sum();
    missed += tally.beyond.load(Ordering::Relaxed);
    let (mut to_last, mut to_first, mut updated_to_last) = (Vec::new(), Vec::new(), Vec::new());
    for (slot, heard) in &entries {
        let everyone = tally.count[*slot].load(Ordering::Relaxed) == clients;
        let (first, last) =
            (tally.first[*slot].load(Ordering::Relaxed), tally.last[*slot].load(Ordering::Relaxed));
        match heard {
            Heard::Created(id) => {
                if let Some(at) = created_at.get(id) {
                    to_first.push((first - at) as f64 / 1000.0);
                    // One that some client never read counts as never arriving.
                    to_last.push(if everyone { (last - at) as f64 / 1000.0 } else { f64::INFINITY });
                }
            }
            Heard::Updated(at) => {
                updated_to_last.push(if everyone { (last - at) as f64 / 1000.0 } else { f64::INFINITY });
            }
            Heard::Other => {}
        }
    }
    for v in [&mut to_last, &mut to_first, &mut updated_to_last] {
        v.sort_by(f64::total_cmp);
    }
    let feed_rate = sent as f64 / load.seconds as f64;
    let (nats_p50, nats_p99, nats_missed) = nats_fanout(stack, load.clients, feed_rate.max(1.0), 10).await?;

    let n = load.clients;
    let asked = f64::from(load.rate);
    let achieved = acked as f64 / publish_secs;
    let lagged = tally.lagged.load(Ordering::Relaxed) + tally.ended.load(Ordering::Relaxed) + failed;
    rows.push(Row::new("stream", &format!("baseline: NATS fan-out to {n} subscribers p50"), nats_p50, "ms"));
    rows.push(Row::new("stream", &format!("baseline: NATS fan-out to {n} subscribers p99"), nats_p99, "ms"));
    rows.push(Row::new("stream", "baseline: NATS fan-out deliveries missed", nats_missed as f64, "msgs"));
    rows.push(
        Row::new(
            "stream",
            &format!(
                "ingest achieved ({} new incidents/s, rest recur on {})",
                load.new_rate,
                load.recurring_agents.clamp(1, AGENTS) * 7
            ),
            achieved,
            "ev/s",
        )
        .baseline("asked", asked),
    );
    rows.push(Row::new("stream", "feed entries to each client (created + updated)", feed_rate, "msg/s"));
    rows.push(Row::new("stream", "incident.created announced", to_last.len() as f64, "incidents"));
    rows.push(
        Row::new(
            "stream",
            &format!("incident.created: created_at -> last of {n} p50"),
            percentile(&to_last, 0.5),
            "ms",
        )
        .baseline("NATS fan-out p50", nats_p50),
    );
    let p99 = percentile(&to_last, 0.99);
    rows.push(
        Row::new("stream", &format!("incident.created: created_at -> last of {n} p99"), p99, "ms")
            .baseline("NATS fan-out p99", nats_p99)
            .floor("< 250 ms", p99 < 250.0),
    );
    rows.push(Row::new(
        "stream",
        "incident.created: created_at -> first client p99",
        percentile(&to_first, 0.99),
        "ms",
    ));
    rows.push(
        Row::new(
            "stream",
            &format!("incident.updated (coalesced): publish -> last of {n} p99"),
            percentile(&updated_to_last, 0.99),
            "ms",
        )
        .baseline("NATS fan-out p99", nats_p99),
    );
    rows.push(Row::new(
        "stream",
        &format!("deliveries missed ({lagged} clients lagged or ended)"),
        missed as f64,
        "events",
    ));
    rows.push(Row::new("stream", "api-gateway RSS before clients", rss_before, "MiB"));
    rows.push(
        Row::new("stream", &format!("api-gateway RSS with {n} clients"), rss_connected, "MiB")
            .baseline("before clients", rss_before),
    );
    rows.push(Row::new(
        "stream",
        &format!("api-gateway peak RSS, {n} clients under load"),
        gw_peak_rss,
        "MiB",
    ));
    rows.push(Row::new("stream", &format!("api-gateway CPU, {n} clients under load"), gw_cores, "cores"));
    Ok(())
}
