//! The shape every service runs in once it is ready: a set of workers that fails
//! fast (the first worker to stop, with an error or not, stops the service, so its
//! orchestrator restarts it) and drains within a grace period on shutdown, background
//! tasks stopped with it, and what must happen last (flushing NATS, the admin server).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

type Closer = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Whether a stopping step's failure makes the service's stop a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Fails,
    Logged,
}

/// The admin HTTP address and the shutdown grace period, flattened into every
/// service's configuration.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Admin")]
pub struct AdminArgs {
    /// Address of the admin HTTP server (`/healthz`, `/readyz`, `/metrics`); each
    /// service has its own default port (gateway 9090, ingestor 9091, tracker 9092,
    /// analyzer 9093).
    #[arg(
        id = "admin-addr",
        long = "admin-addr",
        env = "ADMIN_ADDR",
        value_name = "ADMIN_ADDR",
        global = true
    )]
    pub admin_addr: Option<SocketAddr>,
    /// How long a shutdown may take to finish the work in flight.
    #[arg(id = "shutdown-grace", long = "shutdown-grace", env = "SHUTDOWN_GRACE", value_name = "SHUTDOWN_GRACE", default_value = "20s", value_parser = crate::config::parse_duration, global = true)]
    pub shutdown_grace: Duration,
}

impl AdminArgs {
    /// The admin address, or `0.0.0.0:{default_port}`.
    pub fn admin_addr(&self, default_port: u16) -> SocketAddr {
        self.admin_addr.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], default_port)))
    }
}

/// A ready service being assembled: its workers, its background tasks and what it
/// does last.
pub struct Service {
    name: &'static str,
    workers: JoinSet<anyhow::Result<()>>,
    background: JoinSet<()>,
    closers: Vec<(&'static str, Failure, Closer)>,
}

impl Service {
    pub fn new(name: &'static str) -> Self {
        Self { name, workers: JoinSet::new(), background: JoinSet::new(), closers: Vec::new() }
    }

    /// A task the service is made of: when it stops before shutdown was asked for,
    /// the whole service stops (with its error, or "stopped unexpectedly").
    pub fn worker<F>(&mut self, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.workers.spawn(task);
    }

    /// A task that helps (summaries, lag gauges) and is stopped, not awaited, once the
    /// workers are done.
    pub fn background<F>(&mut self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.background.spawn(task);
    }

    /// Runs after the workers are done and the background is stopped, in the order
    /// added (flush NATS before the admin server goes); a failure is logged, and the
    /// first one is the service's error when nothing else failed.
    pub fn on_stop<F>(&mut self, what: &'static str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.closers.push((what, Failure::Fails, Box::pin(task)));
    }

    /// Like [`Service::on_stop`], but a failure is only logged: what it would have
    /// done cannot be done any more (flushing NATS while NATS is down).
    pub fn on_stop_best_effort<F>(&mut self, what: &'static str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.closers.push((what, Failure::Logged, Box::pin(task)));
    }

    /// Starts supervising: the returned handle ends when the service has stopped.
    pub fn start(self, admin_addr: SocketAddr, shutdown: CancellationToken, grace: Duration) -> Running {
        let Service { name, mut workers, mut background, closers } = self;
        let task = tokio::spawn(async move {
            let outcome = supervise(name, &mut workers, &shutdown, grace).await;
            shutdown.cancel();
            background.shutdown().await;
            let mut closed = Ok(());
            for (what, failure, closer) in closers {
                if let Err(err) = closer.await {
                    tracing::warn!(service = name, what, error = format!("{err:#}"), "stopping step failed");
                    if closed.is_ok() && failure == Failure::Fails {
                        closed = Err(err.context(what));
                    }
                }
            }
            outcome.and(closed)
        });
        Running { admin_addr, task }
    }
}

/// A started service.
pub struct Running {
    /// Where its admin server listens (`/healthz`, `/readyz`, `/metrics`).
    pub admin_addr: SocketAddr,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits until the service stops (after its shutdown token is cancelled, or on a
    /// worker's failure).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await?
    }
}

/// Waits for shutdown (then gives the workers `grace` to finish) or for a worker to
/// stop, which stops the service.
async fn supervise(
    name: &'static str,
    workers: &mut JoinSet<anyhow::Result<()>>,
    shutdown: &CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => {}
        Some(result) = workers.join_next() => {
            if !shutdown.is_cancelled() {
                shutdown.cancel();
                drain(name, workers, grace).await;
                result??;
                anyhow::bail!("a {name} worker stopped unexpectedly");
            }
        }
    }
    drain(name, workers, grace).await;
    Ok(())
}

/// Lets the workers finish what they hold, for at most `grace`; then abandons them.
async fn drain(name: &'static str, workers: &mut JoinSet<anyhow::Result<()>>, grace: Duration) {
    let drained = tokio::time::timeout(grace, async {
        while let Some(result) = workers.join_next().await {
            if let Ok(Err(err)) = result {
                tracing::warn!(
                    service = name,
                    error = format!("{err:#}"),
                    "worker stopped with an error during shutdown"
                );
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(service = name, ?grace, "shutdown grace period over; abandoning the work in flight");
        workers.shutdown().await;
    }
}

/// Sleeps, or returns `true` early when shutdown is requested.
pub async fn sleep_or_shutdown(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(duration) => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    #[tokio::test]
    async fn a_failing_worker_stops_the_service_with_its_error() {
        let shutdown = CancellationToken::new();
        let mut service = Service::new("test");
        let other_stopped = Arc::new(AtomicBool::new(false));
        let (flag, watch) = (Arc::clone(&other_stopped), shutdown.clone());
        service.worker(async move {
            watch.cancelled().await;
            flag.store(true, Ordering::SeqCst);
            Ok(())
        });
        service.worker(async { anyhow::bail!("the consumer broke") });
        let closed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&closed);
        service.on_stop("flush", async move {
            flag.store(true, Ordering::SeqCst);
            Ok(())
        });
        let outcome = service.start(addr(), shutdown.clone(), Duration::from_secs(5)).wait().await;
        assert_eq!(outcome.unwrap_err().to_string(), "the consumer broke");
        assert!(shutdown.is_cancelled(), "the others are told to stop");
        assert!(other_stopped.load(Ordering::SeqCst), "and are given the grace period to do it");
        assert!(closed.load(Ordering::SeqCst), "the stopping steps still run");
    }

    #[tokio::test]
    async fn a_worker_that_ends_on_its_own_is_a_failure_too() {
        let mut service = Service::new("test");
        service.worker(async { Ok(()) });
        let outcome = service.start(addr(), CancellationToken::new(), Duration::from_secs(1)).wait().await;
        assert!(outcome.unwrap_err().to_string().contains("stopped unexpectedly"));
    }

    #[tokio::test]
    async fn shutdown_drains_within_the_grace_period() {
        let shutdown = CancellationToken::new();
        let mut service = Service::new("test");
        let finished = Arc::new(AtomicBool::new(false));
        let (flag, watch) = (Arc::clone(&finished), shutdown.clone());
        // Finishes its work 50 ms after being asked to stop.
        service.worker(async move {
            watch.cancelled().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            flag.store(true, Ordering::SeqCst);
            Ok(())
        });
        // Ignores shutdown entirely: abandoned once the grace period is over.
        service.worker(async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        });
        service.background(std::future::pending());
        let running = service.start(addr(), shutdown.clone(), Duration::from_millis(300));
        shutdown.cancel();
        let started = std::time::Instant::now();
        running.wait().await.unwrap();
        let took = started.elapsed();
        assert!(finished.load(Ordering::SeqCst), "the well-behaved worker finished");
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "{took:?}");
    }

    #[tokio::test]
    async fn a_failing_stopping_step_is_the_outcome() {
        let shutdown = CancellationToken::new();
        let mut service = Service::new("test");
        let watch = shutdown.clone();
        service.worker(async move {
            watch.cancelled().await;
            Ok(())
        });
        service.on_stop_best_effort("flushing nats", async { anyhow::bail!("connection gone") });
        service.on_stop("the admin server", async { anyhow::bail!("address in use") });
        shutdown.cancel();
        let outcome = service.start(addr(), shutdown, Duration::from_secs(1)).wait().await;
        let message = format!("{:#}", outcome.unwrap_err());
        assert!(message.contains("the admin server") && !message.contains("flushing nats"), "{message}");
    }

    #[test]
    fn the_admin_address_defaults_per_service() {
        let args = AdminArgs { admin_addr: None, shutdown_grace: Duration::from_secs(20) };
        assert_eq!(args.admin_addr(9091).port(), 9091);
        let set = AdminArgs { admin_addr: Some(addr()), ..args };
        assert_eq!(set.admin_addr(9091), addr());
    }
}
