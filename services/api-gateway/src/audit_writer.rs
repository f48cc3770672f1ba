//! Group commit for the audit rows of actions: the row written before an action is
//! sent, and its outcome after. Each request still waits until its row is written, but
//! requests that arrive while a statement is under way share the next one: one
//! statement (and, for the rows written before sending, one WAL flush) for all of them,
//! where each used to have its own. A request alone is written at once (nothing waits
//! for company), so a single execute is no slower.

use std::sync::Arc;

use storage::audit::{FinishedAudit, PendingAudit};
use tokio::sync::{mpsc, oneshot};

use crate::error::ApiError;

/// Rows in one statement at most.
const MAX_BATCH: usize = 512;
/// Requests waiting for a statement at most; past this, a request waits to be queued.
const QUEUE: usize = 4096;

type Written = Result<(), Arc<storage::StorageError>>;

/// One queue of rows and the task that writes them, a batch per statement.
struct Batcher<T> {
    tx: mpsc::Sender<(T, oneshot::Sender<Written>)>,
}

impl<T: Send + 'static> Batcher<T> {
    fn start<F, Fut>(pool: storage::PgPool, write: F) -> Self
    where
        F: Fn(storage::PgPool, Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), storage::StorageError>> + Send,
    {
        let (tx, mut rx) = mpsc::channel::<(T, oneshot::Sender<Written>)>(QUEUE);
        tokio::spawn(async move {
            let mut waiting = Vec::with_capacity(MAX_BATCH);
            while let Some((row, done)) = rx.recv().await {
                let mut rows = vec![row];
                waiting.push(done);
                // Whatever queued up during the previous statement joins this one.
                while rows.len() < MAX_BATCH {
                    let Ok((row, done)) = rx.try_recv() else { break };
                    rows.push(row);
                    waiting.push(done);
                }
                metrics::histogram!("opspilot_audit_batch_rows").record(rows.len() as f64);
                let result = write(pool.clone(), rows).await.map_err(Arc::new);
                for done in waiting.drain(..) {
                    // The request may have gone (its client left); its row is written anyway.
                    let _ = done.send(result.clone());
                }
            }
        });
        Self { tx }
    }

    async fn submit(&self, row: T) -> Result<(), ApiError> {
        let (done, written) = oneshot::channel();
        let gone = || ApiError::Unavailable("the audit log writer stopped; retry shortly".into());
        self.tx.send((row, done)).await.map_err(|_| gone())?;
        written.await.map_err(|_| gone())?.map_err(|err| match Arc::try_unwrap(err) {
            Ok(err) => err.into(),
            Err(shared) if shared.is_transient() => {
                ApiError::Unavailable("the database is unavailable; retry shortly".into())
            }
            Err(shared) => ApiError::Internal(anyhow::anyhow!("writing the audit log: {shared}")),
        })
    }
}

/// The audit log's writers; they end when every handle is dropped.
#[derive(Clone)]
pub(crate) struct AuditWriter {
    begin: Arc<Batcher<PendingAudit>>,
    finish: Arc<Batcher<FinishedAudit>>,
}

impl AuditWriter {
    pub(crate) fn start(pool: storage::PgPool) -> Self {
        let begin = Batcher::start(pool.clone(), |pool, rows: Vec<PendingAudit>| async move {
            storage::audit::begin_many(&pool, &rows).await
        });
        let finish = Batcher::start(pool, |pool, rows: Vec<FinishedAudit>| async move {
            storage::audit::finish_many(&pool, &rows).await
        });
        Self { begin: Arc::new(begin), finish: Arc::new(finish) }
    }

    /// Returns once `entry` is committed (durably: the action may then be sent).
    pub(crate) async fn begin(&self, entry: PendingAudit) -> Result<(), ApiError> {
        self.begin.submit(entry).await
    }

    /// Returns once the outcome is written (its commit not waited for, as
    /// `storage::audit::finish`).
    pub(crate) async fn finish(&self, entry: FinishedAudit) -> Result<(), ApiError> {
        self.finish.submit(entry).await
    }
}
