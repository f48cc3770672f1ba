//! Operators' live streams (`GET /api/v1/stream`, Server-Sent Events) fed from the
//! change feed in NATS, so every replica serves them.
//!
//! One ordered consumer per replica (the [`FeedHub`]) reads the feed and broadcasts it
//! to the replica's clients through a bounded ring: a client that falls further behind
//! than the ring holds is sent `lagged` and closed, never buffered for. A client that
//! resumes (`Last-Event-ID`) first replays what it missed from the stream with an
//! ordered consumer of its own, then joins the broadcast, skipping what it has seen by
//! sequence: no loss, no duplicates, within what the stream still holds.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use natsbus::feed::{Change, FeedEntry};
use serde_json::json;
use service_kit::backoff::Backoff;
use service_kit::service::sleep_or_shutdown;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use wire_models::{AgentId, Subjects};

/// How long a client may leave its events unread, once its queue is full, before it is
/// considered gone and its stream is ended.
const STALLED_CLIENT: Duration = Duration::from_secs(30);
/// How long a client that fell behind has to read on before the `lagged` notice is
/// given up and its stream simply ends.
const LAGGED_NOTICE: Duration = Duration::from_secs(5);
/// How long a replay waits for the stream's next message before it counts as done.
const REPLAY_IDLE: Duration = Duration::from_secs(5);
/// Events queued per client between the broadcast and its HTTP response.
const CLIENT_QUEUE: usize = 64;

/// The event types a client may ask for.
pub(crate) const EVENT_TYPES: [&str; 5] =
    ["presence", "incident.created", "incident.updated", "action.finished", "fleet_action"];

/// This replica's reader of the change feed.
pub(crate) struct FeedHub {
    js: async_nats::jetstream::Context,
    /// Told of every presence change, and of whether the feed is being read.
    presence: Arc<crate::presence_cache::PresenceCache>,
    stream: String,
    subjects: Subjects,
    tx: broadcast::Sender<Arc<Rendered>>,
    shutdown: CancellationToken,
    keep_alive: Duration,
}

impl FeedHub {
    pub(crate) fn new(
        client: async_nats::Client,
        presence: Arc<crate::presence_cache::PresenceCache>,
        stream: String,
        subjects: Subjects,
        buffer: usize,
        keep_alive: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let (tx, _) = broadcast::channel(buffer.max(1));
        Arc::new(Self {
            js: async_nats::jetstream::new(client),
            presence,
            stream,
            subjects,
            tx,
            shutdown,
            keep_alive,
        })
    }

    /// Where the feed ends now, so that [`FeedHub::run`] starts right after it: what is
    /// published once the replica is ready reaches its clients, even before the hub's
    /// consumer exists. `None` when the stream is not there yet (the hub then starts
    /// with whatever is new when it is).
    pub(crate) async fn current_end(&self) -> Option<u64> {
        natsbus::feed::bounds(&self.js, &self.stream).await.ok().map(|b| b.last_seq)
    }

    /// Reads the feed from after `end` (or its next new message) until shutdown,
    /// resuming after the last one it broadcast when the connection or the consumer
    /// fails.
    pub(crate) async fn run(self: Arc<Self>, end: Option<u64>) {
        let mut next: Option<u64> = end.map(|seq| seq + 1);
        let mut attempt = 0u32;
        while !self.shutdown.is_cancelled() {
            match natsbus::feed::read_from(&self.js, &self.stream, self.subjects.clone(), next).await {
                Ok(entries) => {
                    tracing::info!(stream = %self.stream, "reading the change feed for live streams");
                    self.presence.following(true);
                    let mut entries = std::pin::pin!(entries);
                    loop {
                        let entry = tokio::select! {
                            _ = self.shutdown.cancelled() => return,
                            entry = entries.next() => entry,
                        };
                        match entry {
                            Some(Ok(entry)) => {
                                attempt = 0;
                                next = Some(entry.seq + 1);
                                metrics::counter!("opspilot_stream_feed_messages_total").increment(1);
                                if let Change::Presence(changed) = &entry.change {
                                    self.presence.changed(&changed.agent_id);
                                }
                                // No client listening is not an error.
                                let _ = self.tx.send(Arc::new(Rendered::new(entry)));
                            }
                            Some(Err(err)) => {
                                tracing::warn!(error = %err, "change feed read failed; resuming");
                                break;
                            }
                            None => break,
                        }
                    }
                    self.presence.following(false);
                }
                Err(err) => {
                    attempt += 1;
                    if service_kit::backoff::worth_logging(attempt) {
                        tracing::warn!(error = %err, attempt, "cannot read the change feed yet; retrying");
                    }
                }
            }
            if sleep_or_shutdown(Backoff::RECONNECT.delay(attempt.max(1)), &self.shutdown).await {
                break;
            }
        }
    }

    pub(crate) fn keep_alive(&self) -> Duration {
        self.keep_alive
    }
}

/// What a client asked to see.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientFilter {
    pub(crate) agents: Vec<AgentId>,
    /// Empty: every type.
    pub(crate) types: Vec<&'static str>,
}

impl ClientFilter {
    fn wants(&self, change: &Change) -> bool {
        (self.types.is_empty() || self.types.contains(&change.kind()))
            // A change about many agents (a fleet action) is not about the ones asked for.
            && (self.agents.is_empty() || change.agent_id().is_some_and(|a| self.agents.contains(a)))
    }
}

/// A feed entry with its event, encoded once for every client of the replica: a
/// thousand clients copy its bytes rather than serialize it a thousand times. Encoded
/// when a client first wants it, so a replica that no client watches (or no client
/// watching this kind of change) encodes nothing.
struct Rendered {
    entry: FeedEntry,
    event: std::sync::OnceLock<Event>,
}

impl Rendered {
    fn new(entry: FeedEntry) -> Self {
        Self { entry, event: std::sync::OnceLock::new() }
    }

    fn event(&self) -> Event {
        self.event.get_or_init(|| event_of(&self.entry)).clone()
    }
}

fn event_of(entry: &FeedEntry) -> Event {
    let body = entry.change.to_json();
    Event::default().id(entry.seq.to_string()).event(entry.change.kind()).data(body.to_string())
}

fn control(name: &str, body: serde_json::Value) -> Event {
    Event::default().event(name).data(body.to_string())
}

/// The client's stream: a replay from `last_seen` (exclusive) when given, then the live
/// feed, filtered, ending with `lagged` or `reload` when it cannot go on.
pub(crate) fn client_stream(
    hub: Arc<FeedHub>,
    filter: ClientFilter,
    last_seen: Option<u64>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let keep_alive = KeepAlive::new().interval(hub.keep_alive());
    let (tx, rx) = mpsc::channel::<Event>(CLIENT_QUEUE);
    // Joined before the response starts, so whatever is published once the client sees
    // the stream open reaches it.
    let live = hub.tx.subscribe();
    metrics::gauge!("opspilot_stream_clients").increment(1.0);
    tokio::spawn(async move {
        feed_client(&hub, live, &filter, last_seen, &tx).await;
        metrics::gauge!("opspilot_stream_clients").decrement(1.0);
    });
    let events = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) });
    Sse::new(events).keep_alive(keep_alive)
}

/// Sends `event`, waiting while the client reads; false when it is gone or stalled.
async fn deliver(tx: &mpsc::Sender<Event>, event: Event) -> bool {
    tx.send_timeout(event, STALLED_CLIENT).await.is_ok()
}

/// `live` was joined before the replay's end is fixed, so nothing falls between the two.
async fn feed_client(
    hub: &FeedHub,
    mut live: broadcast::Receiver<Arc<Rendered>>,
    filter: &ClientFilter,
    last_seen: Option<u64>,
    tx: &mpsc::Sender<Event>,
) {
    let mut seen = 0u64;
    if let Some(last) = last_seen {
        match replay(hub, filter, last, tx).await {
            Ok(Some(upto)) => seen = upto,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(error = %err, "replaying the change feed failed");
                let _ =
                    deliver(tx, control("reload", json!({"reason": "the missed events could not be read"})))
                        .await;
                return;
            }
        }
    }
    loop {
        let entry = tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            _ = tx.closed() => return,
            entry = live.recv() => entry,
        };
        match entry {
            Ok(live) => {
                if live.entry.seq <= seen {
                    continue;
                }
                seen = live.entry.seq;
                if filter.wants(&live.entry.change) && !deliver(tx, live.event()).await {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                metrics::counter!("opspilot_stream_lagged_total").increment(1);
                tracing::info!(missed, last_event_id = seen, "stream client fell behind; closing it");
                let body = json!({
                    "reason": "the client fell behind the feed; reconnect with Last-Event-ID",
                    "last_event_id": seen,
                    "missed": missed,
                });
                // A client that reads again gets this after what was queued for it.
                let _ = tx.send_timeout(control("lagged", body), LAGGED_NOTICE).await;
                return;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Sends what the client missed after `last`, up to the feed's end when it joined.
/// `Some(seq)`: the replay ended at `seq`; `None`: the stream was ended (the client is
/// told to reload, or left).
async fn replay(
    hub: &FeedHub,
    filter: &ClientFilter,
    last: u64,
    tx: &mpsc::Sender<Event>,
) -> Result<Option<u64>, natsbus::NatsError> {
    let bounds = natsbus::feed::bounds(&hub.js, &hub.stream).await?;
    // Sequence numbers only grow: an id past the end is not from this feed.
    let gone = last.saturating_add(1) < bounds.first_seq || last > bounds.last_seq;
    if gone {
        let body = json!({
            "reason": "the events after this id are no longer kept; reload the state and reconnect",
            "first_available": bounds.first_seq,
        });
        let _ = deliver(tx, control("reload", body)).await;
        return Ok(None);
    }
    if last >= bounds.last_seq {
        return Ok(Some(last));
    }
    let entries =
        natsbus::feed::read_from(&hub.js, &hub.stream, hub.subjects.clone(), Some(last + 1)).await?;
    let mut entries = std::pin::pin!(entries);
    let mut upto = last;
    while upto < bounds.last_seq {
        let entry = tokio::select! {
            _ = hub.shutdown.cancelled() => return Ok(None),
            // Only a message the feed cannot decode (skipped) leaves the replay short of
            // its end; it does not wait for new messages to get there.
            _ = tokio::time::sleep(REPLAY_IDLE) => break,
            entry = entries.next() => entry,
        };
        let Some(entry) = entry.transpose()? else { break };
        upto = entry.seq;
        if filter.wants(&entry.change) && !deliver(tx, event_of(&entry)).await {
            return Ok(None);
        }
    }
    Ok(Some(upto))
}
