//! The Redis pool: deadpool over multiplexed connections, checked without a round trip.
//!
//! deadpool-redis checks every connection it hands out with a `PING`, which doubles the
//! round trips of a one-command request (an execute reads an agent's presence: two
//! round trips where one does). Here a connection is checked only when it sat idle long
//! enough for Redis or a middlebox to have closed it; a connection that failed is
//! marked as it fails and replaced at its next checkout, so a broken one is never handed
//! out twice.

use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleResult};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Arg, Cmd, Pipeline, RedisError, RedisFuture, Value};
use tracing::Instrument;

/// The pool every service shares.
#[derive(Clone)]
pub struct Pool(managed::Pool<Manager>);

impl Pool {
    pub(super) fn new(pool: managed::Pool<Manager>) -> Self {
        Self(pool)
    }

    /// A connection for one request (or a few); it goes back to the pool when dropped.
    pub async fn get(&self) -> Result<Connection, managed::PoolError<RedisError>> {
        Ok(Connection(self.0.get().await?))
    }

    pub fn status(&self) -> managed::Status {
        self.0.status()
    }
}

/// A connection idle longer than this is pinged before it is handed out again.
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(5);

/// Creates connections as deadpool-redis does; checks them as described above.
pub(super) struct Manager {
    inner: deadpool_redis::Manager,
}

impl Manager {
    /// A manager for `client`'s connection settings (its TLS certificates included:
    /// they travel inside the connection info).
    pub(super) fn new(client: &redis::Client) -> Result<Self, RedisError> {
        Ok(Self { inner: deadpool_redis::Manager::new(client.get_connection_info().clone())? })
    }
}

impl managed::Manager for Manager {
    type Type = Tracked;
    type Error = RedisError;

    async fn create(&self) -> Result<Tracked, RedisError> {
        Ok(Tracked { conn: managed::Manager::create(&self.inner).await?, failed: false })
    }

    async fn recycle(&self, conn: &mut Tracked, metrics: &Metrics) -> RecycleResult<RedisError> {
        if conn.failed {
            return Err(managed::RecycleError::message("the connection failed"));
        }
        if metrics.last_used() < IDLE_CHECK_AFTER {
            return Ok(());
        }
        managed::Manager::recycle(&self.inner, &mut conn.conn, metrics).await
    }
}

/// A multiplexed connection that remembers whether it failed.
pub(super) struct Tracked {
    conn: MultiplexedConnection,
    failed: bool,
}

/// A connection taken from the [`Pool`].
pub struct Connection(managed::Object<Manager>);

impl Tracked {
    fn note<T>(&mut self, result: &Result<T, RedisError>) {
        if let Err(err) = result {
            // A Redis error reply (a wrong type, a script error) leaves the connection
            // sound; only a broken or stalled one is replaced.
            if err.is_io_error()
                || err.is_connection_dropped()
                || err.is_unrecoverable_error()
                || err.is_timeout()
            {
                self.failed = true;
            }
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let span = command_span(|| command_name(cmd), None);
        Box::pin(
            async move {
                let tracked = &mut *self.0;
                let result = tracked.conn.req_packed_command(cmd).await;
                tracked.note(&result);
                result
            }
            .instrument(span),
        )
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let span = command_span(|| "PIPELINE".to_owned(), Some(pipeline.cmd_iter().count()));
        Box::pin(
            async move {
                let tracked = &mut *self.0;
                let result = tracked.conn.req_packed_commands(pipeline, offset, count).await;
                tracked.note(&result);
                result
            }
            .instrument(span),
        )
    }

    fn get_db(&self) -> i64 {
        self.0.conn.get_db()
    }
}

/// A client span for one command (or pipeline), by the OpenTelemetry database
/// conventions: the command's name, never its arguments (keys and values may be
/// tokens). Only inside a trace (see [`service_kit::telemetry::in_trace`]).
fn command_span(operation: impl FnOnce() -> String, batch: Option<usize>) -> tracing::Span {
    if !service_kit::telemetry::in_trace() {
        return tracing::Span::none();
    }
    let operation = operation();
    let span = tracing::info_span!(
        "redis",
        otel.name = operation.as_str(),
        otel.kind = "client",
        db.system.name = "redis",
        db.operation.name = operation.as_str(),
        db.operation.batch.size = tracing::field::Empty,
    );
    if let Some(size) = batch {
        span.record("db.operation.batch.size", size);
    }
    span
}

/// `GET`, `EVALSHA`...: the first argument when it looks like a command name.
fn command_name(cmd: &Cmd) -> String {
    let name = match cmd.args_iter().next() {
        Some(Arg::Simple(bytes)) => std::str::from_utf8(bytes).unwrap_or_default(),
        _ => "",
    };
    if name.is_empty() || name.len() > 32 || !name.bytes().all(|b| b.is_ascii_alphabetic()) {
        return "COMMAND".to_owned();
    }
    name.to_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_named_without_their_arguments() {
        assert_eq!(command_name(redis::cmd("get").arg("session:secret")), "GET");
        assert_eq!(command_name(redis::cmd("EVALSHA").arg("abc").arg(1)), "EVALSHA");
        assert_eq!(command_name(&redis::cmd("not a command")), "COMMAND");
        assert_eq!(command_name(&Cmd::new()), "COMMAND");
    }
}
