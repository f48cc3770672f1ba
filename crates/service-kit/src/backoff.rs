//! Retry delays: exponential with a cap and jitter, so replicas that failed together
//! (Postgres went away under all of them) do not retry in lock-step.

use std::time::Duration;

use rand::Rng as _;

/// `base` doubling per attempt up to `max`, each delay drawn between half and all of
/// that ("equal jitter": never shorter than half, so a retry storm still backs off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// 100 ms doubling to 5 s: reconnecting, retrying a batch.
    pub const RECONNECT: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

    /// The ceiling of attempt `attempt` (0 = the first retry), before jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.base.saturating_mul(1u32 << attempt.min(20)).min(self.max)
    }

    /// How long to wait before retry `attempt` (0 = the first).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        half + half.mul_f64(rand::rng().random::<f64>())
    }
}

/// Whether to log the `attempt`-th consecutive failure (the first, then powers of two),
/// so an outage is reported without a line per retry.
pub fn worth_logging(attempt: u32) -> bool {
    attempt <= 1 || attempt.is_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_stay_within_their_jitter() {
        let backoff = Backoff::RECONNECT;
        assert_eq!(backoff.ceiling(0), Duration::from_millis(100));
        assert_eq!(backoff.ceiling(1), Duration::from_millis(200));
        assert_eq!(backoff.ceiling(5), Duration::from_millis(3200));
        assert_eq!(backoff.ceiling(6), Duration::from_secs(5));
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(5));
        for attempt in 0..12 {
            let ceiling = backoff.ceiling(attempt);
            for _ in 0..200 {
                let delay = backoff.delay(attempt);
                assert!(delay >= ceiling / 2 && delay <= ceiling, "{attempt}: {delay:?} of {ceiling:?}");
            }
        }
    }

    #[test]
    fn replicas_do_not_retry_in_lock_step() {
        let backoff = Backoff::RECONNECT;
        let delays: std::collections::BTreeSet<Duration> = (0..50).map(|_| backoff.delay(4)).collect();
        assert!(delays.len() > 40, "jitter must spread the retries: {} distinct of 50", delays.len());
    }

    #[test]
    fn logging_thins_out() {
        let logged: Vec<u32> = (1..=20).filter(|a| worth_logging(*a)).collect();
        assert_eq!(logged, vec![1, 2, 4, 8, 16]);
    }
}
