//! Group commit for the audit rows of actions: the row written before an action is
//! sent, and its outcome after. Requests that arrive while a statement is under way
//! share the next one: one statement (and, for the rows written before sending, one WAL
//! flush) for all of them, where each used to have its own. A request alone is written
//! at once (nothing waits for company), so a single execute is no slower.
//!
//! Each queue writes on a connection of its own, taken out of the pool once
//! ([`storage::audit::writer_connection`]): no pool checkout per statement, and none of
//! the pool's check on its return.
//!
//! A request waits until its "pending" row is committed (the action may then be sent).
//! Its outcome is queued and the request answers without waiting for it: the outcome
//! row was never durable before the answer anyway (its commit is asynchronous), and a
//! reader of the audit log on this replica first waits for what is queued
//! ([`AuditWriter::settled`]), so a client reads its own outcome.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgConnection;
use storage::audit::{FinishedAudit, PendingAudit, Planning};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::error::ApiError;

/// Rows in one statement at most.
const MAX_BATCH: usize = 512;
/// Requests waiting for a statement at most; past this, a request waits to be queued.
const QUEUE: usize = 4096;
/// How long outcomes wait for company before their statement. Nobody waits for an
/// outcome (see the module's documentation), so this costs no request any time, and
/// under a steady trickle it turns an UPDATE per action into one per linger: work the
/// database would otherwise do beside the next action's durable commit.
const FINISH_LINGER: Duration = Duration::from_millis(20);

type Written = Result<(), Arc<storage::StorageError>>;

type WriteFuture<'a> = Pin<Box<dyn Future<Output = Result<(), storage::StorageError>> + Send + 'a>>;

/// Writes one batch of rows on the writer's connection.
type Write<T> = for<'a> fn(&'a mut PgConnection, &'a [T]) -> WriteFuture<'a>;

enum Item<T> {
    /// A row, who to tell once it is written (when its writer waits), and the
    /// writer's span when it is part of a trace.
    Row(T, Option<oneshot::Sender<Written>>, Option<opentelemetry::Context>),
    /// Answered once everything queued before it is written.
    Settled(oneshot::Sender<()>),
}

/// One queue of rows and the task that writes them, a batch per statement.
struct Batcher<T> {
    tx: mpsc::Sender<Item<T>>,
}

impl<T: Send + Sync + 'static> Batcher<T> {
    fn start(
        pool: storage::PgPool,
        name: &'static str,
        write: Write<T>,
        planning: Planning,
        linger: Duration,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<Item<T>>(QUEUE);
        tokio::spawn(async move {
            let mut conn: Option<PgConnection> = None;
            let mut rows = Vec::with_capacity(MAX_BATCH);
            let mut waiting = Vec::with_capacity(MAX_BATCH);
            let mut settled = Vec::new();
            let mut traced = Vec::new();
            while let Some(first) = rx.recv().await {
                let mut next = Some(first);
                let deadline = tokio::time::Instant::now() + linger;
                // Whatever queued up during the previous statement joins this one, and
                // with a linger, whatever comes until it ends (a reader waiting for
                // what is queued ends it at once).
                while let Some(item) = next.take() {
                    match item {
                        Item::Row(row, done, context) => {
                            rows.push(row);
                            waiting.extend(done);
                            traced.extend(context);
                        }
                        Item::Settled(done) => settled.push(done),
                    }
                    if rows.len() >= MAX_BATCH || !settled.is_empty() {
                        break;
                    }
                    next = match rx.try_recv() {
                        Ok(item) => Some(item),
                        Err(_) if linger.is_zero() => None,
                        Err(_) => tokio::time::timeout_at(deadline, rx.recv()).await.ok().flatten(),
                    };
                }
                if !rows.is_empty() {
                    metrics::histogram!("opspilot_audit_batch_rows", "queue" => name)
                        .record(rows.len() as f64);
                    // The statement shows in the traces of the requests it wrote for.
                    let span = if traced.is_empty() {
                        tracing::Span::none()
                    } else {
                        tracing::info_span!("audit.write", queue = name, rows = rows.len())
                    };
                    natsbus::trace::adopt_batch(&span, &traced);
                    traced.clear();
                    let result = write_batch(&pool, &mut conn, planning, write, &rows)
                        .instrument(span)
                        .await
                        .map_err(Arc::new);
                    if let Err(err) = &result {
                        metrics::counter!("opspilot_audit_write_failures_total", "queue" => name)
                            .increment(1);
                        tracing::error!(error = %err, rows = rows.len(), queue = name, "writing audit rows failed");
                    }
                    rows.clear();
                    for done in waiting.drain(..) {
                        // The request may have gone (its client left); its row is written anyway.
                        let _ = done.send(result.clone());
                    }
                }
                for done in settled.drain(..) {
                    let _ = done.send(());
                }
            }
        });
        Self { tx }
    }

    fn gone() -> ApiError {
        ApiError::Unavailable("the audit log writer stopped; retry shortly".into())
    }

    /// Queues `row` and waits until it is written.
    async fn write(&self, row: T) -> Result<(), ApiError> {
        let (done, written) = oneshot::channel();
        self.tx.send(Item::Row(row, Some(done), traced())).await.map_err(|_| Self::gone())?;
        written.await.map_err(|_| Self::gone())?.map_err(|err| match Arc::try_unwrap(err) {
            Ok(err) => err.into(),
            Err(shared) if shared.is_transient() => {
                ApiError::Unavailable("the database is unavailable; retry shortly".into())
            }
            Err(shared) => ApiError::Internal(anyhow::anyhow!("writing the audit log: {shared}")),
        })
    }

    /// Queues `row` without waiting for it to be written.
    async fn queue(&self, row: T) -> Result<(), ApiError> {
        self.tx.send(Item::Row(row, None, traced())).await.map_err(|_| Self::gone())
    }

    async fn settled(&self) {
        let (done, settled) = oneshot::channel();
        if self.tx.send(Item::Settled(done)).await.is_ok() {
            let _ = settled.await;
        }
    }
}

/// The caller's trace context when it is part of a trace, for the batch's span to
/// join (the context, not the span: holding the span would keep it open until the
/// batch is written).
fn traced() -> Option<opentelemetry::Context> {
    service_kit::telemetry::in_trace()
        .then(|| tracing_opentelemetry::OpenTelemetrySpanExt::context(&tracing::Span::current()))
}

/// Writes `rows` on the writer's own connection, taking one from the pool if it has
/// none; a connection that failed is dropped, and the next batch takes a new one.
async fn write_batch<T>(
    pool: &storage::PgPool,
    conn: &mut Option<PgConnection>,
    planning: Planning,
    write: Write<T>,
    rows: &[T],
) -> Result<(), storage::StorageError> {
    let mut live = match conn.take() {
        Some(live) => live,
        None => storage::audit::writer_connection(pool, planning).await?,
    };
    let result = write(&mut live, rows).await;
    if result.is_ok() {
        *conn = Some(live);
    }
    result
}

/// The audit log's writers; they end when every handle is dropped.
#[derive(Clone)]
pub(crate) struct AuditWriter {
    begin: Arc<Batcher<PendingAudit>>,
    finish: Arc<Batcher<FinishedAudit>>,
}

impl AuditWriter {
    pub(crate) fn start(pool: storage::PgPool) -> Self {
        let begin = Batcher::start(
            pool.clone(),
            "begin",
            |conn, rows| Box::pin(storage::audit::begin_many(conn, rows)),
            Planning::Cached,
            Duration::ZERO,
        );
        let finish = Batcher::start(
            pool,
            "finish",
            |conn, rows| Box::pin(storage::audit::finish_many(conn, rows)),
            Planning::PerExecution,
            FINISH_LINGER,
        );
        Self { begin: Arc::new(begin), finish: Arc::new(finish) }
    }

    /// Returns once `entry` is committed (durably: the action may then be sent).
    pub(crate) async fn begin(&self, entry: PendingAudit) -> Result<(), ApiError> {
        self.begin.write(entry).await
    }

    /// Queues the outcome of an action (see the module's documentation).
    pub(crate) async fn finish(&self, entry: FinishedAudit) -> Result<(), ApiError> {
        self.finish.queue(entry).await
    }

    /// Returns once every row queued before the call is written (or failed to be).
    pub(crate) async fn settled(&self) {
        self.begin.settled().await;
        self.finish.settled().await;
    }
}
